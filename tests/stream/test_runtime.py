"""The runtime's own paths, in milliseconds, on an in-memory Kafka (tests/stream/memory_kafka.py):
a batch commits whole; an aborted transaction is redone; a poisoned or oversized input is set
aside and the batch redone without it; a state value too large is found by a redo; revoked
partitions close their state and a new owner restores it from the changelog; a fatal error
rebuilds. The exactly-once guarantees themselves are tested against a broker
(test_fault.py, test_hostile_input.py, test_state_recovery.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from app.observability.metrics import Metrics
from app.settings import Settings
from app.stream.runtime.calls import Rebuild
from app.stream.runtime.protocol import Application, Poison, Record, Staged
from app.stream.runtime.runtime import Runtime
from app.stream.runtime.store import ChangelogStore
from tests.stream.memory_kafka import MemoryBroker, MemoryConsumer, MemoryProducer, memory_clients

LIMIT = 1_000  # bytes of a record


class Json:
    def encode(self, value: Any) -> bytes:
        return json.dumps(value).encode()

    def decode(self, key: str, raw: bytes) -> Any:
        return json.loads(raw)


class Counter:
    """Counts each key's records in its partition's store and sends the count; keeps a total
    shared by every worker. ``boom`` raises, ``huge`` sends a record over the bound, ``bloat``
    grows its key's state over it."""

    def __init__(self) -> None:
        self.total = 0  # committed
        self.pending = 0
        self.failed_records: list[tuple[bytes | None, str]] = []
        self.notices: list[str] = []

    def process(self, record: Record, state: ChangelogStore | None, out: Staged) -> None:
        assert state is not None and record.key is not None
        if record.value == b"boom":
            raise RuntimeError("boom")
        key = record.key.decode()
        count = (state.get(key) or 0) + 1
        state.set(key, count)
        if record.value == b"bloat":
            state.set(f"{key}:blob", "x" * LIMIT)
        out.send("out", record.key, b"x" * LIMIT if record.value == b"huge" else b"%d" % count)
        self.pending += 1

    def failed(self, record: Record, poison: Poison, out: Staged) -> None:
        self.failed_records.append((record.key, poison.reason))
        out.send("dead", record.key, poison.reason.encode())

    def unread(self, state: ChangelogStore, topics: frozenset[str]) -> None:
        pass

    def tick(self, partition: int, wall_ms: int, state: ChangelogStore, out: Staged) -> None:
        pass

    def tick_due(self) -> None:
        pass

    def changes(self) -> list[tuple[str, bytes, bytes]]:
        return [("shared", b"total", b"%d" % (self.total + self.pending))] if self.pending else []

    def committed(self) -> None:
        self.total, self.pending = self.total + self.pending, 0
        self.notices.append("committed")

    def aborted(self) -> None:
        self.pending = 0
        self.notices.append("aborted")

    def revoked(self) -> None:
        self.notices.append("revoked")

    def close(self) -> None:
        self.notices.append("closed")


class Shared:
    """The replica of the shared total."""

    topic = "shared"
    caught_up_on_assign = True

    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def apply(self, record: Record) -> None:
        self.values.append(record.value)


class World:
    """A broker, and runtimes built on it with their own processor and data directory."""

    def __init__(self, tmp_path: Path, partitions: int = 2) -> None:
        self.tmp_path = tmp_path
        self.broker = MemoryBroker()
        for topic in ("in", "changelog"):
            self.broker.create(topic, partitions)
        self.broker.create("shared")

    def runtime(self, data_dir: str = "a") -> tuple[Runtime, Counter, MemoryProducer,
                                                    MemoryConsumer]:
        processor = Counter()
        app = Application(sources=("in",), stateful=("in",), changelog="changelog",
                          processor=processor, replicas=(Shared(),), codec=Json(),
                          max_record_bytes=LIMIT)
        clients, producer, consumer = memory_clients(self.broker)
        runtime = Runtime(Settings.of(data_dir=self.tmp_path / data_dir), app, Metrics(),
                          clients=lambda settings: clients)
        return runtime, processor, producer, consumer

    def outputs(self, topic: str = "out") -> list[tuple[bytes | None, bytes | None]]:
        return sorted((key, value) for _, key, value in self.broker.committed(topic))


def run_until(runtime: Runtime, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run ``runtime`` in a thread until ``done()``; its exception, if it raised one."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not (finished := done()) and not failure and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()
    thread.join(timeout_s)
    if failure:
        raise failure[0]
    assert finished, "not done in time"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_batch_commits_its_outputs_state_shared_changes_and_offsets(world: World) -> None:
    for key in (b"a", b"b", b"a"):
        world.broker.produce("in", key, b"v", partition=0)
    runtime, counter, producer, _ = world.runtime()
    run_until(runtime, lambda: counter.total == 3)
    assert world.outputs() == [(b"a", b"1"), (b"a", b"2"), (b"b", b"1")]
    assert sorted(key for _, key, _ in world.broker.committed("changelog")) == [b"a", b"b"]
    assert world.broker.committed("shared") == [(0, b"total", b"3")]
    assert world.broker.group_offsets[("app", "in", 0)] == 3
    assert "abort_transaction" not in producer.calls
    assert counter.notices[-2:] == ["revoked", "closed"]  # closing revokes, then closes


def test_an_aborted_transaction_is_redone_and_counted_once(world: World) -> None:
    for key in (b"a", b"b"):
        world.broker.produce("in", key, b"v", partition=0)
    runtime, counter, producer, _ = world.runtime()
    producer.fail("commit_transaction", KafkaError(KafkaError._STATE, "injected",
                                                   txn_requires_abort=True))
    run_until(runtime, lambda: counter.total == 2)
    assert producer.calls.count("abort_transaction") == 1
    assert world.outputs() == [(b"a", b"1"), (b"b", b"1")]  # the aborted ones never show
    assert world.broker.committed("shared") == [(0, b"total", b"2")]
    assert "aborted" in counter.notices


@pytest.mark.parametrize(("value", "reason"), [(b"boom", "processing_error"),
                                               (b"huge", "too_large"),
                                               (b"bloat", "too_large")])
def test_a_poisoned_input_is_set_aside_and_the_batch_redone_without_it(
        world: World, value: bytes, reason: str) -> None:
    for key, v in ((b"a", b"v"), (b"bad", value), (b"b", b"v")):
        world.broker.produce("in", key, v, partition=0)
    runtime, counter, producer, _ = world.runtime()
    run_until(runtime, lambda: counter.total == 2)
    assert counter.failed_records == [(b"bad", reason)]
    assert world.outputs("dead") == [(b"bad", reason.encode())]
    assert world.outputs() == [(b"a", b"1"), (b"b", b"1")]
    changelog = {key: value for _, key, value in world.broker.committed("changelog")}
    assert changelog == {b"a": b"1", b"b": b"1"}  # nothing of the poisoned input
    assert world.broker.group_offsets[("app", "in", 0)] == 3
    # Every redo goes back to the batch's start: one abort to find it, two for state, whose
    # size is known only at the commit.
    assert producer.calls.count("abort_transaction") == (2 if value == b"bloat" else 1)


def test_revoked_partitions_close_and_a_new_owner_restores_them_from_the_changelog(
        world: World) -> None:
    world.broker.produce("in", b"a", b"v", partition=1)
    first, counter, _, consumer = world.runtime("a")
    consumer_partitions = [("in", 0)]

    def moved_on() -> bool:
        if counter.total == 1 and consumer_partitions:
            consumer.rebalance([consumer_partitions.pop()])  # partition 1 leaves this worker
        return not consumer_partitions and first.assigned_partitions() == [0]

    run_until(first, moved_on)
    assert "revoked" in counter.notices
    world.broker.produce("in", b"a", b"v", partition=1)
    second, other, _, _ = world.runtime("b")  # another data directory: all from the changelog
    run_until(second, lambda: other.total == 1)
    assert world.outputs() == [(b"a", b"1"), (b"a", b"2")]
    assert world.broker.committed("shared")[-1] == (0, b"total", b"1")


def test_a_fatal_error_rebuilds_and_closes_everything(world: World) -> None:
    world.broker.produce("in", b"a", b"v", partition=0)
    runtime, counter, producer, consumer = world.runtime()
    producer.fail("send_offsets_to_transaction", KafkaError(KafkaError._FENCED, "fenced",
                                                            fatal=True))
    with pytest.raises(Rebuild) as raised:
        run_until(runtime, lambda: False)
    assert raised.value.reason == "fatal"
    assert consumer.closed and counter.notices[-1] == "closed"
    assert world.outputs() == []  # its transaction never committed
