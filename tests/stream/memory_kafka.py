"""An in-memory Kafka for the runtime's own tests: the calls of confluent-kafka's ``Producer``
and ``Consumer`` that :mod:`app.stream.runtime` makes, over one process's logs.

Transactions as Kafka keeps them: a record gets its offset when produced, and
``read_committed`` consumers see it once its transaction committed, never if it aborted;
they stop at the first record of a transaction still open (the last stable offset). A
transaction's consumer offsets go to the group when it commits. Rebalances happen inside
``consume``, as librdkafka runs its callbacks inside its polls. Faults are injected per call
(:meth:`MemoryProducer.fail`). Not a model of the broker's guarantees: the broker tests
(tests/stream/test_fault.py and others) check those; this exercises the runtime's own paths.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from app.stream.runtime.kafka import Clients

Callback = Callable[..., None]


@dataclass
class Entry:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Any = None
    open: bool = False  # its transaction has not ended yet
    aborted: bool = False


class Message:
    """What a consumer hands over, with confluent-kafka's accessors."""

    def __init__(self, topic: str, partition: int, offset: int, entry: Entry) -> None:
        self._where = topic, partition, offset
        self._entry = entry

    def error(self) -> KafkaError | None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes | None:
        return self._entry.key

    def value(self) -> bytes | None:
        return self._entry.value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._entry.timestamp_ms

    def headers(self) -> Any:
        return self._entry.headers


@dataclass
class MemoryBroker:
    topics: dict[str, list[list[Entry]]] = field(default_factory=dict)
    group_offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def create(self, topic: str, partitions: int = 1) -> None:
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def log(self, topic: str, partition: int) -> list[Entry]:
        self.create(topic)
        return self.topics[topic][partition]

    def stable_end(self, topic: str, partition: int) -> int:
        """The last stable offset: the first record of an open transaction, or the end."""
        log = self.log(topic, partition)
        return next((offset for offset, entry in enumerate(log) if entry.open), len(log))

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                partition: int | None = None) -> None:
        """A committed record, as a producer outside the runtime writes it."""
        self.create(topic)
        if partition is None:
            partition = self.partition_of(topic, key)
        self.log(topic, partition).append(Entry(key, value, 0))

    def partition_of(self, topic: str, key: bytes | None) -> int:
        return zlib.crc32(key or b"") % len(self.topics[topic])

    def committed(self, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
        """Every committed record of ``topic``: (partition, key, value), partition by
        partition, as a read_committed reader reads them."""
        self.create(topic)
        return [(p, entry.key, entry.value) for p, log in enumerate(self.topics[topic])
                for entry in log if not entry.open and not entry.aborted]


class MemoryProducer:
    """A transactional producer."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._open: list[Entry] | None = None
        self._offsets: list[TopicPartition] = []
        self._group = ""
        self._deliveries: list[tuple[Callback, Message]] = []
        self._faults: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []

    def fail(self, call: str, error: KafkaError) -> None:
        """The next ``call`` (a method's name) raises ``KafkaException(error)``."""
        self._faults.setdefault(call, []).append(KafkaException(error))

    def _call(self, name: str) -> None:
        self.calls.append(name)
        faults = self._faults.get(name)
        if faults:
            raise faults.pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        assert self._open is None, "a transaction is open already"
        self._open, self._offsets = [], []

    def produce(self, topic: str, value: bytes | None, key: bytes | None,
                partition: int | None = None, on_delivery: Callback | None = None,
                headers: Any = None) -> None:
        assert self._open is not None, "produce outside a transaction"
        self.broker.create(topic)
        if partition is None:
            partition = self.broker.partition_of(topic, key)
        log = self.broker.log(topic, partition)
        entry = Entry(key, value, 0, headers, open=True)
        log.append(entry)
        self._open.append(entry)
        if on_delivery is not None:
            self._deliveries.append((on_delivery, Message(topic, partition, len(log) - 1, entry)))

    def poll(self, timeout: float = 0.0) -> int:
        delivered, self._deliveries = self._deliveries, []
        for callback, message in delivered:
            callback(None, message)
        return len(delivered)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], group: str,
                                    timeout: float) -> None:
        self._call("send_offsets_to_transaction")
        self._offsets, self._group = offsets, group

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")
        self._end(aborted=False)
        for tp in self._offsets:
            self.broker.group_offsets[(self._group, tp.topic, tp.partition)] = tp.offset

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")
        self._end(aborted=True)

    def _end(self, aborted: bool) -> None:
        for entry in self._open or ():
            entry.open, entry.aborted = False, aborted
        self._open = None

    def purge(self) -> None:
        self._end(aborted=True)  # what a successor's init_transactions would do


@dataclass
class _Topic:
    partitions: dict[int, None]


@dataclass
class _Metadata:
    topics: dict[str, _Topic]


class MemoryConsumer:
    """A read_committed consumer: a group member (``subscribe``) or one that assigns itself
    partitions."""

    def __init__(self, broker: MemoryBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.group = str(config.get("group.id", ""))
        self.positions: dict[tuple[str, int], int] = {}
        self._assigned: list[tuple[str, int]] = []
        self._callbacks: dict[str, Callback] = {}
        self._rebalance_to: list[tuple[str, int]] | None = None
        self.closed = False

    # -- a group member ---------------------------------------------------------------------

    def subscribe(self, topics: list[str], on_assign: Callback, on_revoke: Callback,
                  on_lost: Callback) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke}
        self.rebalance([(topic, p) for topic in topics
                        for p in range(len(self.broker.topics.get(topic, [[]])))])

    def rebalance(self, partitions: list[tuple[str, int]]) -> None:
        """The group's next assignment, given at the next ``consume`` or ``poll``."""
        self._rebalance_to = partitions

    def _rebalanced(self) -> None:
        if self._rebalance_to is None:
            return
        new, self._rebalance_to = self._rebalance_to, None
        if self._assigned:
            self._callbacks["revoke"](self, [TopicPartition(t, p) for t, p in self._assigned])
        self._assigned = new
        self.positions = {(t, p): max(self.broker.group_offsets.get((self.group, t, p), 0), 0)
                          for t, p in new}
        self._callbacks["assign"](self, [TopicPartition(t, p) for t, p in new])

    def memberid(self) -> str:
        return "memory-member"

    def consumer_group_metadata(self) -> str:
        return self.group

    def committed(self, partitions: list[TopicPartition],
                  timeout: float | None = None) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.broker.group_offsets.get(
            (self.group, tp.topic, tp.partition), OFFSET_INVALID)) for tp in partitions]

    # -- assigned partitions ----------------------------------------------------------------

    def list_topics(self, topic: str, timeout: float | None = None) -> _Metadata:
        logs = self.broker.topics.get(topic)
        return _Metadata({} if logs is None else {topic: _Topic(dict.fromkeys(range(len(logs))))})

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned = [(tp.topic, tp.partition) for tp in partitions]
        self.positions = {(tp.topic, tp.partition): 0 if tp.offset in (
            OFFSET_BEGINNING, OFFSET_INVALID) else tp.offset for tp in partitions}

    def unassign(self) -> None:
        self._assigned, self.positions = [], {}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self._assigned]

    def seek(self, tp: TopicPartition) -> None:
        self.positions[(tp.topic, tp.partition)] = tp.offset

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(
            (tp.topic, tp.partition), OFFSET_INVALID)) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        return 0, self.broker.stable_end(tp.topic, tp.partition)

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[Message]:
        self._rebalanced()
        messages: list[Message] = []
        for topic, p in self._assigned:
            log, end = self.broker.log(topic, p), self.broker.stable_end(topic, p)
            offset = self.positions.get((topic, p), 0)
            while offset < end and len(messages) < num_messages:
                if not log[offset].aborted:
                    messages.append(Message(topic, p, offset, log[offset]))
                offset += 1
            self.positions[(topic, p)] = offset
        return messages

    def poll(self, timeout: float = 0.0) -> Message | None:
        messages = self.consume(1)
        return messages[0] if messages else None

    def close(self) -> None:
        if self._callbacks and self._assigned:
            self._callbacks["revoke"](self, [TopicPartition(t, p) for t, p in self._assigned])
        self._assigned, self.closed = [], True


def memory_clients(broker: MemoryBroker) -> tuple[Clients, MemoryProducer, MemoryConsumer]:
    """A runtime's clients over ``broker``, and its producer and group consumer to steer."""
    producer = MemoryProducer(broker)
    consumer = MemoryConsumer(broker, {"group.id": "app"})
    clients = Clients(producer, consumer,  # type: ignore[arg-type]
                      MemoryConsumer(broker, {}),  # type: ignore[arg-type]
                      {}, lambda config: MemoryConsumer(broker, config))  # type: ignore[arg-type,return-value]
    return clients, producer, consumer
