"""The topic reader on the real broker: every partition from its start or from a point in
time, committed records only, caught up at each partition's end, and read to the end again
after that."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.kafka import clients
from app.kafka.reader import TopicReader
from app.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 3
HOUR_MS = 3_600_000


@pytest.fixture
def settings(bootstrap_servers: str, topic_prefix: str) -> Settings:
    return Settings.of(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)


@pytest.fixture
def topic(settings: Settings) -> str:
    name = f"{settings.kafka.topic_prefix}reader"
    admin = AdminClient(settings.kafka_config())
    for future in admin.create_topics([NewTopic(name, PARTITIONS, 1)]).values():
        future.result(timeout=30)
    return name


def reader_of(settings: Settings, topic: str, into: list[Message]) -> TopicReader:
    return TopicReader(clients.committed_consumer(settings, f"{settings.app_id}-test"), topic,
                       into.append)


def produce(settings: Settings, topic: str, values: list[tuple[int, bytes]],
            timestamp_ms: int = 0, transactional: str | None = None, commit: bool = True) -> None:
    """``(partition, value)`` records, in one transaction if ``transactional`` names one."""
    producer = Producer(clients.idempotent_producer(settings) if transactional is None else
                        clients.transactional_producer(settings, transactional))
    if transactional is not None:
        producer.init_transactions(30)
        producer.begin_transaction()
    for partition, value in values:
        producer.produce(topic, value, partition=partition, timestamp=timestamp_ms)
    if transactional is None:
        assert producer.flush(30) == 0
    elif commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
        producer.abort_transaction(30)


def poll_until_caught_up(reader: TopicReader, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not reader.caught_up:
        assert time.monotonic() < deadline, "not caught up in time"
        reader.poll(0.2)


def test_it_reads_every_partition_from_its_start_committed_records_only(
        settings: Settings, topic: str) -> None:
    read: list[Message] = []
    produce(settings, topic, [(0, b"a"), (1, b"b")])
    produce(settings, topic, [(1, b"aborted")], transactional=f"{topic}-tx", commit=False)
    produce(settings, topic, [(1, b"c")], transactional=f"{topic}-tx")
    reader = reader_of(settings, topic, read)
    try:
        assert not reader.caught_up
        assert reader.assign()
        poll_until_caught_up(reader)  # partition 2 is empty: its end counts too
        assert sorted(m.value() for m in read) == [b"a", b"b", b"c"]
    finally:
        reader.close()


def test_catch_up_reads_to_the_end_as_of_now_again_and_again(
        settings: Settings, topic: str) -> None:
    read: list[Message] = []
    reader = reader_of(settings, topic, read)
    try:
        assert reader.assign()
        reader.catch_up()  # every partition empty: nothing to wait for
        for round_ in range(2):
            produce(settings, topic, [(p, b"%d-%d" % (round_, p)) for p in range(PARTITIONS)],
                    transactional=f"{topic}-tx")
            reader.catch_up()
            assert len(read) == PARTITIONS * (round_ + 1)
    finally:
        reader.close()


def test_a_lookback_starts_at_the_first_record_of_its_window(
        settings: Settings, topic: str) -> None:
    read: list[Message] = []
    now_ms = int(time.time() * 1000)
    produce(settings, topic, [(0, b"old"), (1, b"old")], timestamp_ms=now_ms - 2 * HOUR_MS)
    produce(settings, topic, [(0, b"new")], timestamp_ms=now_ms)
    reader = reader_of(settings, topic, read)
    try:
        assert reader.assign(lookback_ms=HOUR_MS)
        poll_until_caught_up(reader)  # partition 1, all older, starts at its end
        assert [m.value() for m in read] == [b"new"]
    finally:
        reader.close()


def test_a_topic_that_does_not_exist_is_not_assigned(settings: Settings) -> None:
    read: list[Message] = []
    reader = reader_of(settings, f"{settings.kafka.topic_prefix}missing", read)
    try:
        assert not reader.assign(timeout_s=10)
        assert not reader.assigned and not reader.caught_up
    finally:
        reader.close()
