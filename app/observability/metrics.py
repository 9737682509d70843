"""Every Prometheus metric recoloop exports, in one place.

Naming follows Prometheus conventions: prefix ``recoloop_``, base units (``_seconds``),
counters end in ``_total``, build information is ``recoloop_build_info``. Label values are
bounded: never a session or item id, partitions are the worker's partition numbers, arms
and reasons come from code, and site ids beyond :data:`MAX_SITE_LABELS` distinct values
fold into ``other``.

Each worker process has its own registry and serves it on its own port
(``RECOLOOP_METRICS_PORT``); Prometheus tells the workers apart by ``instance``.

Derived in PromQL rather than exported (recording rules in ``deploy/prometheus/alerts.yml``):

- reward per decision: ``recoloop_reward_total`` (reward sum) over
  ``recoloop_decisions_closed_total`` (reward count), by site and arm;
- the bandit's choice share per site and arm: ``recoloop_rankings_published_total{site,arm}``
  over all rankings of the site. That is the share the bandit actually chose across every
  worker, which a per-worker gauge could not give.
"""

from __future__ import annotations

import platform
import threading
from http.server import ThreadingHTTPServer
from importlib import metadata
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from app import __version__

MAX_SITE_LABELS = 100
OTHER_SITE = "other"
# Context segments per site given their own choice-share series; the rest fold into "other".
MAX_SEGMENT_LABELS = 20
# Experiment variants per site with their own KPI series (an experiment has at most 8).
MAX_VARIANT_LABELS = 12
NO_VARIANT = "none"
# Reasons (InvalidInput.reason) a record goes to the dead-letter topic. Their series are
# created at zero so "no dead letters" is a rate of 0, not a missing series.
DEAD_LETTER_REASONS = ("empty_value", "invalid_json", "schema", "key_mismatch",
                       "processing_error", "late", "future_timestamp", "too_large")
# Where a record that does not decode was read: the changelog, the models topic, local state.
UNDECODABLE_SOURCES = ("changelog", "models", "site_stats", "decisions", "local_state",
                       "site_config")
# Why a worker rebuilt its Kafka clients and partition state in-process
# (app.stream.runtime.calls.Rebuild); created at zero like the dead-letter reasons.
RESTART_REASONS = ("fatal", "membership_lost", "timed_out", "stuck_call", "kafka_error")

# The text format would carry a `*_created` series beside every counter and histogram:
# twice the series for a timestamp nobody queries. Off for the whole worker process.
disable_created_metrics()

class MetricsPortInUse(OSError):
    """Another process (often another worker) already serves on the metrics port."""


class SiteLabels:
    """Maps site ids to label values, folding sites past the cap into ``other``.

    >>> site = SiteLabels(cap=2)
    >>> [site(s) for s in ("a", "b", "c", "a", None)]
    ['a', 'b', 'other', 'a', 'other']
    """

    def __init__(self, cap: int = MAX_SITE_LABELS) -> None:
        self.cap = cap
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, site_id: str | None) -> str:
        if site_id is None:
            return OTHER_SITE
        if site_id in self._known:
            return site_id
        with self._lock:
            if len(self._known) < self.cap:
                self._known.add(site_id)
                return site_id
        return OTHER_SITE


class SegmentLabels:
    """Maps (site label, segment) to a segment label: :class:`SiteLabels` per site.

    >>> segment = SegmentLabels(cap=2)
    >>> [segment("shop", s) for s in ("", "device=mobile", "device=tablet", "")]
    ['', 'device=mobile', 'other', '']
    """

    def __init__(self, cap: int = MAX_SEGMENT_LABELS) -> None:
        self.cap = cap
        self._per_site: dict[str, SiteLabels] = {}
        self._lock = threading.Lock()

    def __call__(self, site_label: str, segment: str) -> str:
        with self._lock:
            labels = self._per_site.setdefault(site_label, SiteLabels(self.cap))
        return labels(segment)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _process_series(registry: CollectorRegistry) -> Info:
    """The standard process_* and python_* series (CPU, memory, open fds, GC) of this
    process, and ``recoloop_build_info``, on ``registry``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = Info("recoloop_build", "recoloop build information.", registry=registry)
    build.info({"version": __version__, "python_version": platform.python_version(),
                "confluent_kafka_version": _version("confluent-kafka")})
    return build


class Metrics:
    """The worker's metrics, on a registry of its own so tests can build several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.site = SiteLabels()
        self.segment = SegmentLabels()
        self.build = _process_series(r)
        self._input(r)
        self._reward_join(r)
        self._kpis(r)
        self._rankings(r)
        self._worker(r)

    def _input(self, r: CollectorRegistry) -> None:
        """Input events consumed, and records sent to the dead-letter topic."""
        self.events_consumed = Counter(
            "recoloop_events_consumed_total",
            "Input events consumed, once each, by outcome: accepted, invalid or duplicate.",
            ["topic", "site", "outcome"], registry=r)
        self.dead_letters = Counter(
            "recoloop_dead_letters_total", "Records sent to the dead-letter topic.",
            ["reason"], registry=r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)

    def _reward_join(self, r: CollectorRegistry) -> None:
        """The reward join: displays, closed decisions, rewards, unattributed and late
        reactions."""
        self.displays_served = Counter(
            "recoloop_displays_served_total", "Displays (reco.served) accepted into the join.",
            ["site", "arm"], registry=r)
        self.decisions_closed = Counter(
            "recoloop_decisions_closed_total",
            "Decisions whose reward window closed (the reward count), by what closed them.",
            ["site", "arm", "closed_by"], registry=r)
        self.reward = Counter(
            "recoloop_reward_total", "Sum of rewards of closed decisions.",
            ["site", "arm"], registry=r)
        self.reactions_unattributed = Counter(
            "recoloop_reactions_unattributed_total",
            "Reactions that matched no display within the window and grace.",
            ["site"], registry=r)
        self.join_pending_displays = Gauge(
            "recoloop_join_pending_displays",
            "Displays waiting in the reward join (window not closed yet), per partition this "
            "worker owns.",
            ["partition"], registry=r)
        self.reactions_late = Counter(
            "recoloop_reactions_late_total",
            "Accepted reactions found to answer a display that had already closed: never "
            "applied, kept on the dead-letter topic with reason late.",
            ["site"], registry=r)
        self.reward_delay = Histogram(
            "recoloop_reward_delay_seconds", "Delay from a display to an attributed reaction.",
            buckets=(0.5, 1, 2, 5, 10, 15, 20), registry=r)

    def _kpis(self, r: CollectorRegistry) -> None:
        """KPIs per site and experiment variant ("none": the site runs no experiment), and
        the candidate policies' shadow scores."""
        self.variant = SegmentLabels(cap=MAX_VARIANT_LABELS)
        self.variant_decisions = Counter(
            "recoloop_variant_decisions_total",
            "Closed decisions (displays whose reward window closed), per experiment variant.",
            ["site", "variant"], registry=r)
        self.variant_reward = Counter(
            "recoloop_variant_reward_total", "Sum of rewards of closed decisions, per variant.",
            ["site", "variant"], registry=r)
        self.variant_displays_reacted = Counter(
            "recoloop_variant_displays_reacted_total",
            "Closed displays with at least one attributed reaction of the type (click: the "
            "click-through rate over recoloop_variant_decisions_total; basket_add: "
            "conversion), per variant.",
            ["site", "variant", "type"], registry=r)
        self.variant_revenue = Counter(
            "recoloop_variant_revenue_total",
            "Sum of the prices sent with basket adds attributed to closed displays, per "
            "variant (in the site's currency).",
            ["site", "variant"], registry=r)
        self.shadow_value = Gauge(
            "recoloop_shadow_value",
            "A candidate policy's estimated reward per decision (self-normalised IPS) on the "
            "site engine's closed decisions since this worker took the site's learning; the "
            "site's settings name the candidates (policy \"current\" is the live bandit).",
            ["site", "policy"], registry=r)
        self.shadow_effective_decisions = Gauge(
            "recoloop_shadow_effective_decisions",
            "How many decisions recoloop_shadow_value is worth (Kish's effective sample size).",
            ["site", "policy"], registry=r)

    def _rankings(self, r: CollectorRegistry) -> None:
        """Rankings published, and the bandit's updates, estimates and choice shares."""
        self.event_to_ranking = Histogram(
            "recoloop_event_to_ranking_seconds",
            "From an input event's Kafka timestamp to its ranking being sent.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.rankings_published = Counter(
            "recoloop_rankings_published_total",
            "Rankings sent to reco.rankings, by the arm the bandit chose.",
            ["site", "arm"], registry=r)
        self.bandit_updates = Counter(
            "recoloop_bandit_updates_total", "Bandit updates from closed decisions.",
            ["site"], registry=r)
        self.bandit_estimate = Gauge(
            "recoloop_bandit_arm_estimate",
            "The bandit's current reward estimate per arm in the empty context (set by the "
            "worker that learns the site).",
            ["site", "arm"], registry=r)
        self.bandit_models_in_memory = Gauge(
            "recoloop_bandit_models_in_memory",
            "Sites whose bandit this worker holds in memory; sites idle for "
            "RECOLOOP_SITE_IDLE_S wait on local disk until they return.", registry=r)
        self.bandit_choice_share = Gauge(
            "recoloop_bandit_arm_choice_share",
            "The share of decisions the bandit currently gives each arm (its choice "
            "probability) per context segment the site sends (segment \"\" is the empty "
            "context; at most 20 segments per site, the rest \"other\"); set by the worker "
            "that learns the site. The share it actually chose across contexts is the "
            "recording rule site_arm:recoloop_rankings_published:share_rate5m.",
            ["site", "segment", "arm"], registry=r)

    def _worker(self, r: CollectorRegistry) -> None:
        """The worker's readiness, state restores, undecodable records and restarts."""
        self.worker_ready = Gauge(
            "recoloop_worker_ready",
            "1 when the worker has recovered the tables of its assigned partitions (/ready).",
            registry=r)
        self.state_restored_records = Counter(
            "recoloop_state_restored_records_total",
            "Engine-state changelog records read back into local RocksDB when partitions are "
            "assigned: none after a clean restart, the last batches after a crash, all of "
            "them for a new data directory.", registry=r)
        self.records_undecodable = Counter(
            "recoloop_records_undecodable_total",
            "Records of the worker's own topics or local state that did not decode (written by "
            "someone else, or damaged), and site configs refused: skipped, never run.",
            ["source"], registry=r)
        for source in UNDECODABLE_SOURCES:
            self.records_undecodable.labels(source)
        self.worker_restarts = Counter(
            "recoloop_worker_restarts_total",
            "Times the worker closed its Kafka clients and partition state and built them "
            "anew in-process, by reason: fatal (a fatal client error, e.g. its static group "
            "member or its producer fenced), membership_lost (its group session timed out "
            "during a batch), timed_out (a step kept failing past its time budget, e.g. the "
            "broker is unreachable), stuck_call (a transactional call did not return "
            "within 30 s, whatever its timeout: left behind with its producer), kafka_error "
            "(another Kafka error).",
            ["reason"], registry=r)
        for reason in RESTART_REASONS:
            self.worker_restarts.labels(reason)

    def count_kpis(self, site_id: str, variant_name: str | None, reward: float,
                   reacted: set[str], revenue: float) -> None:
        """Count one closed decision into its site and variant's KPI series: its reward, the
        reaction types it had, and the prices of its basket adds."""
        site = self.site(site_id)
        variant = self.variant(site, variant_name or NO_VARIANT)
        self.variant_decisions.labels(site, variant).inc()
        self.variant_reward.labels(site, variant).inc(reward)
        for kind in reacted:
            self.variant_displays_reacted.labels(site, variant, kind).inc()
        if revenue:
            self.variant_revenue.labels(site, variant).inc(revenue)

    def forget_assignment(self) -> None:
        """Drop series that describe partitions this worker may no longer own.

        Called when partitions are revoked; the new owner (maybe this worker again) sets them
        afresh on its next event or tick, so a sum over workers never counts a partition twice.
        """
        self.join_pending_displays.clear()
        self.bandit_estimate.clear()
        self.bandit_choice_share.clear()
        self.shadow_value.clear()
        self.shadow_effective_decisions.clear()

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` (and nothing else: other paths are 404) from a daemon thread."""
        try:
            server = ThreadingHTTPServer((host, port), _MetricsOnly.factory(self.registry))
        except OSError as exc:
            raise MetricsPortInUse(
                exc.errno, f"cannot serve metrics on {host}:{port} ({exc.strerror}); every "
                "worker on a host needs its own RECOLOOP_METRICS_PORT") from exc
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class _MetricsOnly(MetricsHandler):
    """prometheus_client's handler answers every path; a scrape target should not."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        super().do_GET()


# Answers of the rank service, by where the ranking came from (app.serve.book.Answer).
ANSWER_SOURCES = ("session", "segment", "site", "catalog", "none")


class ServeMetrics:
    """The rank service's metrics (``recoloop serve``), on a registry of its own. Routes are
    the templates (``/v1/sites/{site_id}/...``), never the ids in a request's path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build = _process_series(r)
        self.requests = Counter(
            "recoloop_serve_requests_total", "HTTP requests answered, by route and status.",
            ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "recoloop_serve_request_duration_seconds",
            "Time from a request's arrival to its answer, by route (waits included).",
            ["route"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.answers = Counter(
            "recoloop_serve_answers_total", "Rankings answered, by source: the session's own, "
            "its segment's default, the site's default, the site's catalog, or none.",
            ["source"], registry=r)
        for source in ANSWER_SOURCES:
            self.answers.labels(source)
        self.events_ingested = Counter(
            "recoloop_serve_events_total", "Events posted to /v1/events, by outcome: accepted "
            "(the broker has it), rejected (invalid) or failed (the broker did not take it).",
            ["outcome"], registry=r)
        for outcome in ("accepted", "rejected", "failed"):
            self.events_ingested.labels(outcome)
        self.sessions_in_memory = Gauge(
            "recoloop_serve_sessions_in_memory", "Sessions whose latest ranking this replica "
            "holds (bounded by RECOLOOP_SERVE_MAX_SESSIONS).", registry=r)
