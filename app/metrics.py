"""Every Prometheus metric recoloop exports, in one place.

Naming follows Prometheus conventions: prefix ``recoloop_``, base units (``_seconds``),
counters end in ``_total``. Label values are bounded: never a session or item id, and site
ids beyond :data:`MAX_SITE_LABELS` distinct values fold into ``other``.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from app import __version__

MAX_SITE_LABELS = 100
OTHER_SITE = "other"


class SiteLabels:
    """Maps site ids to label values, folding sites past the cap into ``other``."""

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


class Metrics:
    """The worker's metrics, on a registry of its own so tests can build several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.site = SiteLabels()
        self.events_consumed = Counter(
            "recoloop_events_consumed_total",
            "Input events consumed, by outcome (accepted, invalid, late, duplicate).",
            ["topic", "site", "outcome"], registry=r)
        self.dead_letters = Counter(
            "recoloop_dead_letters_total", "Records sent to the dead-letter topic.",
            ["reason"], registry=r)
        self.displays_served = Counter(
            "recoloop_displays_served_total", "Displays (reco.served) accepted into the join.",
            ["site", "arm"], registry=r)
        self.decisions_closed = Counter(
            "recoloop_decisions_closed_total", "Decisions whose reward window closed.",
            ["site", "arm", "closed_by"], registry=r)
        self.reward = Counter(
            "recoloop_reward_total", "Sum of rewards of closed decisions.",
            ["site", "arm"], registry=r)
        self.reactions_unattributed = Counter(
            "recoloop_reactions_unattributed_total",
            "Reactions that matched no display within the window and grace.",
            ["site"], registry=r)
        self.reward_delay = Histogram(
            "recoloop_reward_delay_seconds", "Delay from a display to an attributed reaction.",
            buckets=(0.5, 1, 2, 5, 10, 15, 20), registry=r)
        self.event_to_ranking = Histogram(
            "recoloop_event_to_ranking_seconds",
            "From an input event's Kafka timestamp to its ranking being sent.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.rankings_published = Counter(
            "recoloop_rankings_published_total", "Rankings sent to reco.rankings.",
            ["site", "arm"], registry=r)
        self.bandit_updates = Counter(
            "recoloop_bandit_updates_total", "Bandit updates from closed decisions.",
            ["site"], registry=r)
        self.bandit_estimate = Gauge(
            "recoloop_bandit_arm_estimate",
            "The bandit's current reward estimate per arm in the empty context.",
            ["site", "arm"], registry=r)
        self.build = Info("recoloop_build", "recoloop build information.", registry=r)
        self.build.info({"version": __version__})

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` over HTTP from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
