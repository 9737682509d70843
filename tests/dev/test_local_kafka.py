"""The local single-node broker (``app.dev.local_kafka``) is a real, usable Kafka."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.dev import local_kafka


def _local_port(bootstrap_servers: str) -> int:
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        pytest.skip(f"the broker under test is not local ({bootstrap_servers})")
    return int(port)


def _free_port_pair() -> int:
    """A port p such that p and p + 1 (the controller port) are both free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _create_topic(bootstrap_servers: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)


def _consume(
    bootstrap_servers: str, topic: str, done: Callable[[list[bytes]], bool], **config: str
) -> list[bytes]:
    """Values read from ``topic`` from the start, until ``done(values)`` (60 s at most)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"{topic}-reader",
        "auto.offset.reset": "earliest",
        **config,
    })
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not done(values) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
    finally:
        consumer.close()
    assert done(values), f"did not read enough from {topic} in time; got {values}"
    return values


def test_status_is_false_fast_when_nothing_listens() -> None:
    started = time.monotonic()
    assert local_kafka.status(_free_port_pair()) is False
    assert time.monotonic() - started < 3


@pytest.mark.integration
def test_session_broker_answers(bootstrap_servers: str) -> None:
    assert local_kafka.status(_local_port(bootstrap_servers))


@pytest.mark.integration
def test_up_again_is_a_fast_no_op(bootstrap_servers: str, tmp_path: Path) -> None:
    port = _local_port(bootstrap_servers)
    started = time.monotonic()
    assert local_kafka.up(port=port, data_dir=tmp_path) == f"127.0.0.1:{port}"
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []  # nothing was configured or started


@pytest.mark.integration
def test_produce_consume_round_trip(bootstrap_servers: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}round-trip"
    _create_topic(bootstrap_servers, topic, partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    sent = [f"{key}:{n}".encode() for n in range(10) for key in ("a", "b", "c")]
    for value in sent:
        producer.produce(topic, key=value.split(b":")[0], value=value)
    assert producer.flush(30) == 0

    received = _consume(bootstrap_servers, topic, lambda got: len(got) >= len(sent))
    assert sorted(received) == sorted(sent)
    for key in (b"a", b"b", b"c"):  # one key, one partition: its order is kept
        ours = [v for v in received if v.startswith(key + b":")]
        assert ours == [v for v in sent if v.startswith(key + b":")]


@pytest.mark.integration
def test_transactions_commit_and_abort(bootstrap_servers: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}tx"
    _create_topic(bootstrap_servers, topic, partitions=1)
    producer = Producer({
        "bootstrap.servers": bootstrap_servers,
        "transactional.id": f"{topic_prefix}producer",
    })
    producer.init_transactions(60)
    for values, commit in (([b"c1", b"c2"], True), ([b"x1", b"x2"], False), ([b"end"], True)):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    # Reading up to "end" means reading past the aborted transaction, which must not show.
    received = _consume(bootstrap_servers, topic, lambda got: b"end" in got,
                        **{"isolation.level": "read_committed"})
    assert received == [b"c1", b"c2", b"end"]


@pytest.mark.integration
def test_up_down_restart_own_broker(tmp_path: Path) -> None:
    """A second broker on its own ports: start, stop, start again on formatted storage."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("starting a local broker needs java and mvn")
    port = _free_port_pair()
    try:
        assert local_kafka.up(port=port, data_dir=tmp_path) == f"127.0.0.1:{port}"
        assert local_kafka.status(port)
        assert (tmp_path / "kafka.pid").exists()
        cluster = (tmp_path / "data" / "meta.properties").read_text()

        local_kafka.down(port=port, data_dir=tmp_path)
        assert not local_kafka.status(port)
        assert not (tmp_path / "kafka.pid").exists()
        local_kafka.down(port=port, data_dir=tmp_path)  # a second down is a no-op

        # A restart reuses the formatted storage (same cluster id) instead of formatting again.
        local_kafka.up(port=port, data_dir=tmp_path)
        assert local_kafka.status(port)
        assert (tmp_path / "data" / "meta.properties").read_text() == cluster
    finally:
        local_kafka.down(port=port, data_dir=tmp_path)
    assert not local_kafka.status(port)
