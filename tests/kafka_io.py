"""Small helpers to talk to the real broker from tests with confluent-kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, SERVED, Topics
from app.kafka import clients
from app.kafka.reader import TopicReader as Reader
from app.settings import Settings

# Where a helper's client connects: a plaintext bootstrap address, or settings (whose
# kafka_config() adds the security properties).
Target = str | Settings
ASSIGN_TIMEOUT_S = 10.0


def settings_of(target: Target) -> Settings:
    return Settings.of(bootstrap_servers=target) if isinstance(target, str) else target


def produce(bootstrap: Target, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
    """Send ``(topic, key, value)`` records and wait until the broker has them all."""
    producer = Producer(clients.idempotent_producer(settings_of(bootstrap)))
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0, "records were not delivered"


def now_ms() -> int:
    return int(time.time() * 1000)


def event(topic: str, value: dict[str, Any]) -> tuple[str, bytes, bytes]:
    """A contract event keyed by its session, as sites must send them."""
    return topic, value["session_id"].encode(), orjson.dumps(value)


def every_kind_at(s: Settings, site: str, session: str, ts: int) -> list:
    """One record of each input kind at ``ts`` on the session's partition, answering nothing:
    its watermark moves to ``ts`` at once (no topic has to be waited out as quiet)."""
    served = event(s.topic(SERVED), {"event_id": f"{session}-at-{ts}", "site_id": site,
                                     "session_id": session, "ts": ts, "items": ["z"]})
    return [served, *[event(s.topic(topic), {
        "event_id": f"{session}-{topic}-at-{ts}", "site_id": site, "session_id": session,
        "ts": ts, "item_id": "none"}) for topic in (CLICKS, DETAIL_VIEWS, BASKET_ADDS)]]


class TopicReader:
    """Reads topics from the start and keeps what it read (committed records only), for tests
    that wait repeatedly: the app's reader of each topic, assigned once the topic exists
    (the worker creates its own topics when it starts)."""

    def __init__(self, bootstrap: Target, topics: list[str]) -> None:
        config = {**clients.committed_consumer(settings_of(bootstrap), f"test-{uuid.uuid4().hex}"),
                  "auto.offset.reset": "earliest"}
        self.topics = topics
        self.messages: list[Message] = []
        self.parsed = 0  # for callers that decode incrementally
        self.readers = [Reader(config, topic, self.messages.append) for topic in topics]
        self._assign()

    def _assign(self) -> None:
        for reader in self.readers:
            if not reader.assigned:
                try:
                    reader.assign(timeout_s=ASSIGN_TIMEOUT_S)
                except KafkaException:  # the broker is away: tried again when reading
                    pass

    def read_until(self, done: Callable[[list[Message]], bool],
                   timeout_s: float = 90.0) -> list[Message]:
        """Read on until ``done(all messages so far)`` holds or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages) and time.monotonic() < deadline:
            self._assign()
            for reader in self.readers:
                if reader.assigned:
                    reader.poll(0.5 / len(self.readers))
                else:
                    time.sleep(0.5 / len(self.readers))
        return self.messages

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def collect(bootstrap: Target, topics: list[str], done: Callable[[list[Message]], bool],
            timeout_s: float = 90.0) -> list[Message]:
    """Read ``topics`` from the start until ``done(messages)`` holds or the time runs out."""
    reader = TopicReader(bootstrap, topics)
    try:
        return reader.read_until(done, timeout_s)
    finally:
        reader.close()


def values(messages: list[Message], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages if m.topic() == topic]


def wait_until_learned(settings: Settings, engagements: int, timeout_s: float = 90.0) -> None:
    """Wait until the worker has learned ``engagements`` engagements into the shared site
    statistics: that many are committed on the decisions topic, and the worker group's
    committed offsets there are past every one of them."""
    from confluent_kafka import TopicPartition

    decisions = Topics.of(settings).decisions
    reader = TopicReader(settings, [decisions])
    try:
        messages = reader.read_until(lambda ms: sum(
            orjson.loads(m.value()).get("kind") == "engagement" for m in ms) >= engagements,
            timeout_s)
    finally:
        reader.close()
    ends: dict[int, int] = {}
    for message in messages:
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    group = Consumer({**settings.kafka_config(), "group.id": settings.app_id,
                      "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = group.committed([TopicPartition(decisions, p) for p in ends], 10)
            if all(tp.offset >= ends[tp.partition] for tp in committed):
                return
            time.sleep(0.2)
        raise AssertionError(f"the worker did not learn {engagements} engagements in time")
    finally:
        group.close()
