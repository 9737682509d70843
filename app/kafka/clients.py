"""Every Kafka client's configuration, built on :meth:`Settings.kafka_config` (the bootstrap
servers and the security properties): the properties exactly-once depends on are set here
only. Each function returns a new dict; a caller adds its own tuning on top."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

Config = dict[str, Any]

# The transactional producer's tuning (bench/bare_loop.py's transactional ceiling uses it too,
# so that the ratio between them measures the worker's own work, not different batching).
TRANSACTIONAL_TUNING: Config = {"linger.ms": 5, "transaction.timeout.ms": 20_000,
                                "partitioner": "murmur2_random"}  # Java clients' partitioning


def committed_consumer(settings: Settings, group_id: str) -> Config:
    """A consumer that reads committed records only and commits no offsets automatically: a
    reader that assigns itself partitions (``group_id`` only names it to the broker), or a
    group member that commits its offsets in its transactions (the worker) or explicitly."""
    return {**settings.kafka_config(), "group.id": group_id, "enable.auto.commit": False,
            "isolation.level": "read_committed"}


def transactional_producer(settings: Settings, transactional_id: str) -> Config:
    """A producer whose records are part of transactions; ``transactional_id`` fences any
    earlier producer with the same id."""
    return {**settings.kafka_config(), "transactional.id": transactional_id,
            **TRANSACTIONAL_TUNING}


def idempotent_producer(settings: Settings) -> Config:
    """A producer whose retries never duplicate or reorder a record (no transactions)."""
    return {**settings.kafka_config(), "enable.idempotence": True}
