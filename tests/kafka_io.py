"""Small helpers to talk to the real broker from tests with confluent-kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer


def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
    """Send ``(topic, key, value)`` records and wait until the broker has them all."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0, "records were not delivered"


def event(topic: str, value: dict[str, Any]) -> tuple[str, bytes, bytes]:
    """A contract event keyed by its session, as sites must send them."""
    return topic, value["session_id"].encode(), orjson.dumps(value)


def collect(bootstrap: str, topics: list[str], done: Callable[[list[Message]], bool],
            timeout_s: float = 90.0) -> list[Message]:
    """Read ``topics`` from the start until ``done(messages)`` holds or the time runs out."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.subscribe(topics)
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(messages) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def values(messages: list[Message], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages if m.topic() == topic]
