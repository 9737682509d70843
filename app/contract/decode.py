"""Decoding input messages into engine events; anything unusable gets a reason instead."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from app.contract.specs import validation_error
from app.contract.topics import CATALOG, REACTION_TYPE_BY_TOPIC, SERVED
from app.core.events import Origin, Reaction, Served

# Of an input's value (and key), a dead letter keeps this many bytes.
DEAD_LETTER_KEPT_BYTES = 256 * 1024
REASON_KEPT_CHARS = 4096


class InvalidInput(ValueError):
    """An input message that cannot be used; ``reason`` is short and machine-groupable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(logical_topic: str, origin: Origin, latest_ts: int | None = None
           ) -> Served | Reaction:
    """Parse and validate one input message of ``reco.served`` or a reaction topic.

    ``latest_ts`` bounds event times: one from a wrong clock far in the future would push
    the partition's stream time ahead and close every open display at once.
    """
    key, raw = origin.key, origin.value
    if raw is None:
        raise InvalidInput("empty_value", "the message has no value")
    value = _validated(logical_topic, raw)
    if latest_ts is not None and value["ts"] > latest_ts:
        raise InvalidInput("future_timestamp", f"ts {value['ts']} is later than {latest_ts}, "
                           "the message's Kafka timestamp plus RECOLOOP_MAX_CLOCK_SKEW_S")
    if key is None or key.decode("utf-8", "replace") != value["session_id"]:
        raise InvalidInput("key_mismatch", "the message key must be the event's session_id "
                           "(inputs are co-partitioned by session)")
    if logical_topic == SERVED:
        return Served.from_value(value)
    return Reaction.from_value(REACTION_TYPE_BY_TOPIC[logical_topic], value, origin)


def decode_catalog(key: bytes | None, raw: bytes | None
                   ) -> tuple[str, str, dict[str, Any] | None]:
    """``(site_id, item_id, value)`` of a ``reco.catalog`` record; value None is a tombstone."""
    site_id, sep, item_id = (key or b"").decode("utf-8", "replace").partition(":")
    if not sep or not site_id or not item_id:
        raise InvalidInput("key_mismatch", "catalog keys are site_id:item_id")
    if raw is None:
        return site_id, item_id, None
    value = _validated(CATALOG, raw)
    if (value["site_id"], value["item_id"]) != (site_id, item_id):
        raise InvalidInput("key_mismatch", "the key must be the record's site_id:item_id")
    return site_id, item_id, value


def _validated(logical_topic: str, raw: bytes) -> dict[str, Any]:
    """The JSON value of ``raw`` if it meets the topic's schema."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", str(exc)) from None
    problem = validation_error(logical_topic, value)
    if problem is not None:
        raise InvalidInput("schema", problem)
    result: dict[str, Any] = value
    return result


def dead_letter_value(origin: Origin, error: InvalidInput, now_ms: int | None = None) -> bytes:
    """The ``reco.dead-letter`` record: where the input was, its exact bytes, and why.

    Bytes past :data:`DEAD_LETTER_KEPT_BYTES` are cut, so that a dead letter always fits a
    Kafka record (1 MB by default): one that did not would stop the partition it came from.
    """
    value = origin.value or b""
    record: dict[str, Any] = {
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "key": _text(origin.key[:DEAD_LETTER_KEPT_BYTES] if origin.key else origin.key),
        "value": _text(origin.value) if len(value) <= DEAD_LETTER_KEPT_BYTES else None,
        "value_base64": base64.b64encode(value[:DEAD_LETTER_KEPT_BYTES]).decode("ascii"),
        "value_bytes": len(value),
        "reason": f"{error.reason}: {error.detail}"[:REASON_KEPT_CHARS],
        "ts": int(time.time() * 1000) if now_ms is None else now_ms,
    }
    return orjson.dumps(record)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
