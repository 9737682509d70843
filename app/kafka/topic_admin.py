"""Create the contract's topics from ``app/contract/topic_specs/*.json`` and the worker's own
topics (:func:`internal_topics`), and check the layout the worker needs.

``apply`` only ever creates missing topics. Existing topics are never altered (partitions
cannot shrink, and adding some moves sessions to other partitions), so differences from the
spec are reported as drift for a human to resolve.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from app.contract.specs import TopicSpec, load_specs
from app.contract.topics import JOIN_INPUT_TOPICS, Topics
from app.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
MAX_REPLICATION = 3
METADATA_WAIT_S = 3.0
# Errors retrying cannot fix: the broker refused our credentials or our TLS.
REFUSED = (KafkaError._AUTHENTICATION, KafkaError._SSL)
REFUSAL_CHECK_S = 1.0
_FIX = ("run `recoloop topics apply` to create missing topics; a topic with the wrong "
        "partition count must be deleted and recreated (Kafka cannot shrink partitions, and "
        "adding some would move existing sessions to other partitions)")
DAY_MS = 86_400_000
# Compaction keeps a deleted key's tombstone this long; local state older than
# LOCAL_STATE_MAX_AGE_MS may have missed one, so it is rebuilt rather than caught up.
CHANGELOG_TOMBSTONE_RETENTION_MS = 7 * DAY_MS
LOCAL_STATE_MAX_AGE_MS = 6 * DAY_MS


class TopicLayoutError(RuntimeError):
    """The topics on the broker cannot be used as they are; the message says how to fix it."""


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)  # real (prefixed) topic names
    unchanged: list[str] = field(default_factory=list)  # existed already, left as they were
    drift: list[str] = field(default_factory=list)  # "<topic>: <difference from the spec>"
    problems: list[str] = field(default_factory=list)  # failures; any makes ok False
    lines: list[str] = field(default_factory=list)  # what describe() prints, in order

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        lines = list(self.lines)
        if not self.created and not self.problems:
            lines.append("nothing created: every topic exists")
        lines.append("ok" if self.ok else f"NOT OK ({len(self.problems)} problem(s))")
        return "\n".join(lines)

    def _add(self, kind: list[str], item: str, line: str) -> None:
        kind.append(item)
        self.lines.append(line)


class _Admin(AdminClient):
    """An admin client that keeps librdkafka's recent errors, so that a request that failed
    can say why (librdkafka reports a refused login as an error event, not to the request)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.errors: deque[KafkaError] = deque(maxlen=16)
        with_errors: dict[str, Any] = {**config, "error_cb": self.errors.append}
        super().__init__(with_errors)


def admin_client(settings: Settings) -> AdminClient:
    # The logger routes librdkafka's own messages (e.g. connection refused) to Python logging.
    return _Admin({**settings.kafka_config(), "client.id": f"{settings.app_id}-topic-admin",
                   "logger": log})


def cluster_metadata(admin: AdminClient, timeout_s: float | None = None) -> ClusterMetadata:
    """``admin.list_topics()`` within ``timeout_s`` (default TIMEOUT_S); a broker refusing
    our credentials or TLS fails it at once with librdkafka's reason, where librdkafka alone
    would retry the login until the timeout and then only report a transport failure."""
    deadline = time.monotonic() + (TIMEOUT_S if timeout_s is None else timeout_s)
    while True:
        left = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.1, min(REFUSAL_CHECK_S, left)))
        except KafkaException:
            admin.poll(0)  # serves the error events into admin.errors
            refused = [e for e in getattr(admin, "errors", ()) if e.code() in REFUSED]
            if refused:
                raise KafkaException(refused[-1]) from None
            if time.monotonic() >= deadline:
                raise


def apply(settings: Settings, admin: AdminClient | None = None) -> ApplyReport:
    """Create missing contract topics; report drift of existing ones without changing them."""
    report = ApplyReport()
    try:
        _apply(settings, admin or admin_client(settings), report)
    except KafkaException as exc:
        problem = f"talking to Kafka at {settings.kafka.bootstrap_servers} failed: {exc.args[0]}"
        report._add(report.problems, problem, f"problem: {problem}")
    return report


def _apply(settings: Settings, admin: AdminClient, report: ApplyReport) -> None:
    metadata = cluster_metadata(admin)
    existing = _partition_counts(metadata)
    specs = {settings.topic(name): spec for name, spec in load_specs().items()}
    missing = [name for name in specs if name not in existing]
    present = [name for name in specs if name in existing]
    counts = {name: existing[name] for name in present}  # partition counts after this run

    if missing:
        # min(3, brokers): 1 on a development broker, 3 in production.
        replication = min(MAX_REPLICATION, len(metadata.brokers))
        raced = _create(admin, settings, {n: specs[n] for n in missing}, replication, report)
        counts.update({name: specs[name].partition_count(settings.kafka.partitions)
                       for name in report.created})
        # Created is committed by the controller; a broker's metadata shows it a moment
        # later. Whoever comes after `topics apply` (a worker, a listing) finds them all.
        shown = _wait_for_topics(admin, report.created)
        for name in report.created:
            if name not in shown:
                problem = f"{name} was created but its metadata did not show up in time"
                report._add(report.problems, problem, f"problem: {problem}")
        if raced:
            existing.update(_wait_for_topics(admin, raced))
            for name in raced:
                if name in existing:
                    present.append(name)
                    counts[name] = existing[name]
                else:
                    problem = f"{name} exists but its metadata did not show up in time"
                    report._add(report.problems, problem, f"problem: {problem}")

    actual_configs = _read_configs(admin, present)
    for name in present:
        configs = actual_configs[name]
        summary = _summary(existing[name], specs[name], configs)
        report._add(report.unchanged, name, f"unchanged {name} ({summary})")
        for difference in _differences(specs[name], settings, existing[name], configs):
            report._add(report.drift, f"{name}: {difference}", f"drift {name}: {difference}")

    # Drift elsewhere is survivable; join inputs with different counts break the reward join.
    join = {settings.topic(t): counts.get(settings.topic(t)) for t in JOIN_INPUT_TOPICS}
    if None not in join.values() and len(set(join.values())) > 1:
        problem = _copartition_message(join)
        report._add(report.problems, problem, f"problem: {problem}")


def _create(admin: AdminClient, settings: Settings, specs: Mapping[str, TopicSpec],
            replication: int, report: ApplyReport) -> list[str]:
    """Create ``specs``' topics, recording each in ``report``; returns those that turned out
    to exist already (broker metadata lags topic creation, and applies may run concurrently),
    which are then treated like topics that existed all along."""
    futures = admin.create_topics(
        [NewTopic(name, spec.partition_count(settings.kafka.partitions), replication,
                  config=_configs(spec)) for name, spec in specs.items()],
        operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
    raced = []
    for name, spec in specs.items():
        try:
            futures[name].result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raced.append(name)
            else:
                problem = f"could not create {name}: {exc.args[0]}"
                report._add(report.problems, problem, f"problem: {problem}")
            continue
        summary = _summary(spec.partition_count(settings.kafka.partitions), spec)
        report._add(report.created, name, f"created {name} ({summary})")
    return raced


def check_copartitioned(settings: Settings, admin: AdminClient | None = None) -> dict[str, int]:
    """Partition count of each join input topic; raises TopicLayoutError unless all are equal."""
    admin = admin or admin_client(settings)
    names = [settings.topic(t) for t in JOIN_INPUT_TOPICS]
    try:
        # Waits a little for missing ones: `topics apply` may have created them a moment ago.
        existing = _wait_for_topics(admin, names, METADATA_WAIT_S)
    except KafkaException as exc:
        raise TopicLayoutError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} to check "
                               f"the topic layout: {exc.args[0]}") from exc
    counts = {name: existing.get(name) for name in names}
    found = {name: count for name, count in counts.items() if count is not None}
    if len(found) != len(counts) or len(set(found.values())) != 1:
        raise TopicLayoutError(_copartition_message(counts))
    return found


def _copartition_message(counts: Mapping[str, int | None]) -> str:
    listing = ", ".join(f"{name} is missing" if count is None else f"{name} has {count}"
                        for name, count in counts.items())
    return (f"the reward join needs its input topics to exist with the same partition "
            f"count: {listing} — {_FIX}")


def _wait_for_topics(admin: AdminClient, names: list[str],
                     wait_s: float | None = None) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist, polling until all show up or
    ``wait_s`` (default TIMEOUT_S) passes: new topics reach broker metadata with a delay."""
    deadline = time.monotonic() + (TIMEOUT_S if wait_s is None else wait_s)
    while True:
        existing = _partition_counts(cluster_metadata(admin))
        found = {name: existing[name] for name in names if name in existing}
        if len(found) == len(names) or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _partition_counts(metadata: ClusterMetadata) -> dict[str, int]:
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()
            if topic.error is None}


SPEC_CONFIGS = ("cleanup.policy", "retention.ms", "message.timestamp.type")


def _configs(spec: TopicSpec) -> dict[str, str]:
    return {"cleanup.policy": spec.cleanup_policy, "retention.ms": str(spec.retention_ms),
            "message.timestamp.type": spec.timestamp_type}


def _read_configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str] | str]:
    """The topics' spec'd configs as the broker has them, or why they could not be read."""
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    found: dict[str, dict[str, str] | str] = {}
    for resource, future in admin.describe_configs(resources,
                                                   request_timeout=TIMEOUT_S).items():
        try:
            entries = future.result()
        except KafkaException as exc:
            found[resource.name] = f"could not read its configs: {exc.args[0]}"
            continue
        found[resource.name] = {key: entries[key].value for key in SPEC_CONFIGS
                                if key in entries}
    return found


def _differences(spec: TopicSpec, settings: Settings, partitions: int,
                 configs: dict[str, str] | str) -> list[str]:
    wanted = spec.partition_count(settings.kafka.partitions)
    source = "RECOLOOP_PARTITIONS" if spec.partitions is None else f"topic_specs/{spec.name}.json"
    found = [] if partitions == wanted else [
        f"{partitions} partitions, {source} wants {wanted}"]
    if isinstance(configs, str):
        return [*found, configs]
    for key, want in _configs(spec).items():
        if configs.get(key) != want:
            found.append(f"{key}={configs.get(key)}, spec wants {want}")
    return found


def _summary(partitions: int, spec: TopicSpec, configs: dict[str, str] | str | None = None) -> str:
    if not isinstance(configs, dict):  # just created, or unreadable: describe the spec
        configs = _configs(spec)
    retention = configs.get("retention.ms")
    retention_text = "?" if retention is None else _duration(int(retention))
    return (f"{partitions} partitions, {configs.get('cleanup.policy', '?')}, "
            f"retention {retention_text}")


def _duration(ms: int) -> str:
    if ms < 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class InternalTopic:
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def internal_topics(topics: Topics, partitions: int) -> dict[str, InternalTopic]:
    """The worker's own topics; ``partitions`` is the join inputs' partition count."""
    compacted = {"cleanup.policy": "compact"}
    return {
        topics.decisions: InternalTopic(partitions, {"retention.ms": str(DAY_MS)}),
        topics.changelog: InternalTopic(partitions, {
            **compacted, "delete.retention.ms": str(CHANGELOG_TOMBSTONE_RETENTION_MS)}),
        topics.models: InternalTopic(1, compacted),
        topics.site_stats: InternalTopic(1, compacted),
        topics.api_keys: InternalTopic(1, compacted),
    }


def ensure_internal_topics(settings: Settings, topics: Mapping[str, InternalTopic],
                           admin: AdminClient | None = None) -> None:
    """Create the worker's own topics (not part of the contract) when missing, and refuse
    ones whose partition count differs (a partition's state lives beside its input)."""
    admin = admin or admin_client(settings)
    metadata = cluster_metadata(admin)
    existing = _partition_counts(metadata)
    replication = min(MAX_REPLICATION, len(metadata.brokers))  # as the contract's topics
    wrong = {name: existing[name] for name, spec in topics.items()
             if name in existing and existing[name] != spec.partitions}
    if wrong:
        expected = {name: topics[name].partitions for name in wrong}
        raise TopicLayoutError(
            f"internal topics have partitions {wrong}, expected {expected} (the join inputs' "
            "count); stop every worker, delete them (the worker recreates them) and start again")
    missing = [name for name in topics if name not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(name, topics[name].partitions, replication, config=topics[name].config)
         for name in missing], operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicLayoutError(f"could not create {name}: {exc.args[0]}") from exc
    _wait_for_topics(admin, missing, METADATA_WAIT_S)
