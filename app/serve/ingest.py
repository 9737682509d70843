"""``POST /v1/events``: events from sites without a Kafka client, onto the input topics.

Each event names its ``type`` (``served``, ``click``, ``detail_view``, ``basket_add``); the
rest of it is the topic's record and is checked by the same decoding the worker applies
(:func:`app.contract.decode.decode`: the JSON Schemas in ``app/contract/topic_specs/``,
integer times, a time not too far ahead). Valid events are produced keyed by ``session_id`` by
an idempotent producer (``acks=all``); an event counts as accepted only once the broker
acknowledged it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from app.contract.decode import InvalidInput, decode
from app.contract.topics import REACTION_TOPIC_BY_TYPE, SERVED
from app.core.events import Origin
from app.kafka import clients
from app.observability.tracing import Headers
from app.settings import Settings

TOPIC_BY_TYPE = {"served": SERVED, **REACTION_TOPIC_BY_TYPE}
MAX_EVENTS_PER_REQUEST = 1_000
MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256  # the contract's ids (app/contract/topic_specs/*.json)


@dataclass(frozen=True)
class Rejected:
    index: int
    event_id: str | None
    reason: str


def checked(event: Any, index: int, site_id: str, latest_ts: int
            ) -> tuple[str, bytes, bytes] | Rejected:
    """``(logical topic, key, value)`` of one posted event, or why it cannot be taken."""
    if not isinstance(event, dict):
        return Rejected(index, None, "schema: an event is a JSON object")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or len(event_id) > MAX_ID_CHARS:
        event_id = None  # an error answer never echoes more than an id
    record = dict(event)
    kind = record.pop("type", None)
    topic = TOPIC_BY_TYPE.get(kind) if isinstance(kind, str) else None
    if topic is None:
        return Rejected(index, event_id, f"type: must be one of {sorted(TOPIC_BY_TYPE)}")
    if record.get("site_id") != site_id:
        return Rejected(index, event_id, "site_id: must be the key's site")
    try:
        value = orjson.dumps(record)
    except orjson.JSONEncodeError as exc:  # loads_checked took only what re-encodes
        return Rejected(index, event_id, f"unencodable: {exc}")
    if len(value) > MAX_EVENT_BYTES:
        return Rejected(index, event_id, f"too_large: events are at most {MAX_EVENT_BYTES} "
                        "bytes")
    session = record.get("session_id")
    key = session.encode() if isinstance(session, str) else b""
    try:
        decode(topic, Origin(topic, -1, -1, key, value), latest_ts)
    except InvalidInput as exc:
        return Rejected(index, event_id, f"{exc.reason}: {exc.detail}")
    return topic, key, value


class EventIngest:
    """The service's producer, polled by a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = Producer({
            **clients.idempotent_producer(settings), "acks": "all",
            "linger.ms": 2, "delivery.timeout.ms": 30_000})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="ingest", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._producer.flush(10)

    def latest_ts(self) -> int:
        return int(time.time() * 1000) + int(self.settings.join.max_clock_skew_s * 1000)

    async def send(self, records: Sequence[tuple[str, bytes, bytes]],
                   headers: Headers | None = None) -> list[str | None]:
        """Produce ``records`` (each with ``headers``: the request's traceparent when traced);
        per record None once the broker has it, else the error."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in records]

        def settle(future: asyncio.Future[str | None], outcome: str | None) -> None:
            if not future.done():
                future.set_result(outcome)

        def delivered(future: asyncio.Future[str | None]
                      ) -> Callable[[KafkaError | None, Message], None]:
            def report(error: KafkaError | None, _message: Message) -> None:
                loop.call_soon_threadsafe(settle, future, None if error is None else str(error))
            return report

        for (topic, key, value), future in zip(records, futures, strict=True):
            try:
                self._producer.produce(self.settings.topic(topic), value, key,
                                       on_delivery=delivered(future), headers=headers)
            except (BufferError, KafkaException) as exc:
                future.set_result(f"not queued: {exc}")
        return list(await asyncio.gather(*futures))
