"""The runtime's Kafka clients, all from :mod:`app.kafka.clients`, and how a message becomes a
:class:`Record`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Message,
    Producer,
)

from app.kafka import clients
from app.observability.tracing import Tracing
from app.settings import Settings
from app.stream.runtime.protocol import Record

MAX_BATCH = 2_000  # records per transaction at most
POLL_S = 0.05
# librdkafka prefetches up to 64 MB per consumer by default, and a worker has one per replica
# besides the group's and the restorer: the inputs get a few transactions' worth, the readers
# of the internal topics less (they read small records, or catch up once).
INPUT_PREFETCH_KB = 16_384
READER_PREFETCH_KB = 4_096


@dataclass
class Clients:
    """A runtime's clients: the transactional producer, the group's consumer, the changelog's
    restorer, and the configuration of the replicas' readers and how their consumers are
    built."""

    producer: Producer
    consumer: Consumer
    restorer: Consumer
    reader_config: dict[str, Any]
    new_consumer: Callable[[dict[str, Any]], Consumer] = Consumer


def kafka_clients(settings: Settings) -> Clients:
    """The clients of worker ``settings.instance_id``: its transactional id fences its
    previous self, its static group membership takes its partitions back."""
    worker_id = settings.instance_id
    reader_config = {
        **clients.committed_consumer(settings, f"{settings.app_id}-reader-{worker_id}"),
        "auto.offset.reset": "earliest", "queued.max.messages.kbytes": READER_PREFETCH_KB}
    producer = Producer(clients.transactional_producer(
        settings, f"{settings.app_id}-{worker_id}"))
    session_timeout_ms = int(settings.kafka.group_session_timeout_s * 1000)
    consumer = Consumer({
        **clients.committed_consumer(settings, settings.app_id),
        "group.instance.id": worker_id,
        "auto.offset.reset": "earliest", "partition.assignment.strategy": "range",
        "queued.max.messages.kbytes": INPUT_PREFETCH_KB,
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": min(2_000, session_timeout_ms // 3),
        # Restores run inside the assignment callback: a full rebuild may take a while.
        "max.poll.interval.ms": 1_800_000})
    return Clients(producer, consumer, Consumer({**reader_config}), reader_config)


def received(message: Message, tracing: Tracing | None = None) -> Record:
    """A consumed message as a :class:`Record`, stamped with the broker's time
    (``LogAppendTime``, how ``topics apply`` makes the inputs), else the producer's but never
    later than this worker's clock, and now when it has none. With ``tracing`` on, it carries
    the message's ``traceparent`` header."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    kind, timestamp_ms = message.timestamp()
    if kind != TIMESTAMP_LOG_APPEND_TIME:
        now_ms = int(time.time() * 1000)
        timestamp_ms = now_ms if kind == TIMESTAMP_NOT_AVAILABLE else min(timestamp_ms, now_ms)
    trace = None if tracing is None else tracing.incoming(message.headers())
    return Record(topic, partition, offset, message.key(), message.value(), timestamp_ms, trace)


def next_batch(consumer: Consumer) -> list[Message]:
    """What has arrived, up to MAX_BATCH; when nothing has, wait up to POLL_S for the first
    record only (``consume`` would wait out its timeout for a full batch)."""
    messages = consumer.consume(MAX_BATCH, 0)
    if messages:
        return messages
    first = consumer.poll(POLL_S)
    if first is None:
        return []
    return [first, *consumer.consume(MAX_BATCH - 1, 0)]
