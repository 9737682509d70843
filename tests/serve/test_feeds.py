"""The rank service's feeds: a topic read on a thread of its own, caught up once at every
partition's end, a bad record skipped; never caught up without a broker."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

from app.serve.feeds import TopicFeed
from app.settings import Settings
from tests.kafka_io import produce


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.integration
def test_a_feed_catches_up_and_a_bad_record_does_not_stop_it(bootstrap_servers: str,
                                                             topic_prefix: str) -> None:
    settings = Settings.of(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    topic = f"{topic_prefix}feed"
    admin = AdminClient(settings.kafka_config())
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    produce(settings, [(topic, b"k", b"bad"), (topic, b"k", b"1")])
    read: list[bytes] = []

    def offer(message: Message) -> None:
        value = message.value() or b""
        if value == b"bad":
            raise ValueError("not a number")
        read.append(value)

    feed = TopicFeed(settings, topic, offer).start()
    try:
        assert wait_for(lambda: feed.caught_up)
        assert (read, feed.records, feed.broker_away) == ([b"1"], 2, False)
        produce(settings, [(topic, b"k", b"2")])
        assert wait_for(lambda: read == [b"1", b"2"])
    finally:
        feed.stop()


def test_a_feed_without_a_broker_is_not_caught_up_and_stops_cleanly() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    feed = TopicFeed(Settings.of(bootstrap_servers=f"127.0.0.1:{port}"), "reco.rankings",
                     lambda message: None).start()
    try:
        assert not wait_for(lambda: feed.caught_up, 3)
    finally:
        feed.stop()
