"""Decoding input messages into engine events; anything unusable gets a reason instead."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from typing import Any

import orjson

from app.contract.specs import validation_error
from app.contract.topics import CATALOG, REACTION_TYPE_BY_TOPIC, SERVED
from app.core.events import Origin, Reaction, Served
from app.core.keys import escape, unescape

# A dead letter is bounded by construction, whatever its input (see dead_letter_value).
DEAD_LETTER_KEY_BYTES = 1024
DEAD_LETTER_VALUE_BYTES = 128 * 1024  # of the value, base64
DEAD_LETTER_TEXT_BYTES = 64 * 1024  # the value as text, JSON-escaped, when it fits
REASON_KEPT_CHARS = 4096
# What comes in over HTTP is taken only when the encoder writes it back exactly (orjson):
# integers from -2**63 to 2**64 - 1, finite numbers, text without lone surrogates, and
# containers nested at most MAX_JSON_DEPTH deep (a body counts as one level).
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1
MAX_JSON_DEPTH = 32
# orjson reads integers past 64 bits as floats: such a literal takes the exact parser.
_LONG_DIGITS = re.compile(rb"\d{19}")
PATH_SHOWN_CHARS = 200
# A reaction waiting in the join keeps at most this much of its input, for the dead letter
# it becomes if it turns out late (value_bytes there says how large the input was).
WAITING_ORIGIN_BYTES = 4096


class InvalidInput(ValueError):
    """An input message that cannot be used; ``reason`` is short and machine-groupable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(logical_topic: str, origin: Origin, latest_ts: int | None = None,
           trace: str | None = None) -> Served | Reaction:
    """Parse and validate one input message of ``reco.served`` or a reaction topic
    (``trace``: the traceparent of the worker's span for it, carried by the event).

    ``latest_ts`` bounds event times: one from a wrong clock far in the future would push
    the partition's stream time ahead and close every open display at once.
    """
    key, raw = origin.key, origin.value
    if raw is None:
        raise InvalidInput("empty_value", "the message has no value")
    value = validated(logical_topic, raw)
    if latest_ts is not None and value["ts"] > latest_ts:
        raise InvalidInput("future_timestamp", f"ts {value['ts']} is later than {latest_ts}, "
                           "the broker's (or the worker's) time of the message plus "
                           "RECOLOOP_MAX_CLOCK_SKEW_S")
    if key != value["session_id"].encode("utf-8"):  # byte for byte: b"\xff" is no id
        raise InvalidInput("key_mismatch", "the message key must be the event's session_id "
                           "(inputs are co-partitioned by session)")
    if logical_topic == SERVED:
        return Served.from_value(value, trace)
    return Reaction.from_value(REACTION_TYPE_BY_TOPIC[logical_topic], value,
                               origin.cut(WAITING_ORIGIN_BYTES), trace)


def catalog_key(site_id: str, item_id: str) -> str:
    """A ``reco.catalog`` key: ``site_id:item_id``, with ``%``, ``:`` and ``|`` in the site id
    percent-escaped, so the first ``:`` always ends it and no two items share a key.

    >>> catalog_key("shop", "eu:sku-9"), catalog_key("shop:eu", "sku-9")
    ('shop:eu:sku-9', 'shop%3Aeu:sku-9')
    """
    return f"{escape(site_id)}:{item_id}"


def decode_catalog(key: bytes | None, raw: bytes | None
                   ) -> tuple[str, str, dict[str, Any] | None]:
    """``(site_id, item_id, value)`` of a ``reco.catalog`` record; value None is a tombstone."""
    escaped_site, sep, item_id = (key or b"").decode("utf-8", "replace").partition(":")
    site_id = unescape(escaped_site)
    if not sep or not site_id or not item_id or catalog_key(site_id, item_id).encode() != key:
        # Only the one spelling catalog_key makes: two spellings of one item would be two
        # compacted keys, and a tombstone on one would leave the other alive.
        raise InvalidInput("key_mismatch", "catalog keys are site_id:item_id, UTF-8, with %, "
                           ": and | in site_id escaped as %25, %3A and %7C")
    if raw is None:
        return site_id, item_id, None
    value = validated(CATALOG, raw)
    if (value["site_id"], value["item_id"]) != (site_id, item_id):
        raise InvalidInput("key_mismatch", "the key must be the record's site_id:item_id, "
                           "with %, : and | in site_id escaped as %25, %3A and %7C")
    return site_id, item_id, value


def validated(logical_topic: str, raw: bytes) -> dict[str, Any]:
    """The JSON value of ``raw`` if it meets the topic's schema."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", str(exc)) from None
    problem = validation_error(logical_topic, value)
    if problem is not None:
        raise InvalidInput("schema", problem)
    if "ts" in value and type(value["ts"]) is not int:
        # JSON Schema's integer takes 1796160000.0 too; times are exact integers here, or
        # 1 and 1.0 would be one set entry but two keys in the join's wake-up index.
        raise InvalidInput("schema", f"ts must be a JSON integer, not {value['ts']!r}")
    result: dict[str, Any] = value
    return result


def loads_checked(raw: bytes) -> Any:
    """The JSON value of ``raw`` if it re-encodes exactly (see :data:`MAX_JSON_DEPTH`);
    else InvalidInput whose detail names the field, e.g. ``events[3].extra.n: ...``.
    The detail never holds the input's values, and stays short.

    >>> loads_checked(b'{"a": [1, {"b": 2}]}')
    {'a': [1, {'b': 2}]}
    >>> loads_checked(b'{"a": [1, {"b": 18446744073709551616}]}')
    Traceback (most recent call last):
    ...
    app.contract.decode.InvalidInput: integer_range: a[1].b: an integer outside 64 bits
    >>> loads_checked(b'{"a": NaN}')
    Traceback (most recent call last):
    ...
    app.contract.decode.InvalidInput: not_finite: a: NaN and Infinity are not JSON numbers
    """
    problem: orjson.JSONDecodeError | None = None
    if not _LONG_DIGITS.search(raw):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problem = exc  # the exact parser below names the field, when there is one
        else:
            check_json(value)
            return value
    value = _loads_exact(raw)
    check_json(value)
    if problem is not None:
        raise InvalidInput("invalid_json", str(problem)[:PATH_SHOWN_CHARS])
    return value


def _loads_exact(raw: bytes) -> Any:
    """``raw`` parsed with exact integers, and NaN, Infinity and surrogates kept for
    :func:`check_json` to name where they are."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("invalid_json", f"not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=float)
    except RecursionError:
        raise InvalidInput("too_deep", f"value: nested deeper than {MAX_JSON_DEPTH} "
                           "levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", f"{exc.msg}: line {exc.lineno} column "
                           f"{exc.colno} (char {exc.pos})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise InvalidInput("invalid_json", str(exc)[:PATH_SHOWN_CHARS]) from None


def check_json(value: Any, path: str = "", max_depth: int = MAX_JSON_DEPTH) -> None:
    """InvalidInput naming the first field of ``value`` (a parsed JSON value, at ``path``)
    that would not re-encode exactly; iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                _refuse("too_deep", where, f"nested deeper than {max_depth} levels")
            for key, child in item.items():
                name = f"{where}.{_label(key)}" if where else _label(key)
                _check_text(key, name)
                stack.append((child, name, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                _refuse("too_deep", where, f"nested deeper than {max_depth} levels")
            stack.extend((child, f"{where}[{n}]", depth + 1) for n, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not JSON_INT_MIN <= item <= JSON_INT_MAX:
                _refuse("integer_range", where, "an integer outside 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                _refuse("not_finite", where, "NaN and Infinity are not JSON numbers")
        else:
            _refuse("schema", where, f"{type(item).__name__} is not a JSON value")


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _refuse("invalid_text", where, "text with a lone surrogate (not UTF-8)")


def _label(key: str) -> str:
    """A key as a field name in a message: short, printable, ASCII (never the raw key)."""
    if len(key) <= 64 and key.isascii() and key.isprintable() and "." not in key:
        return key
    return ascii(key[:64])


def _refuse(reason: str, where: str, what: str) -> None:
    name = where or "value"
    if len(name) > PATH_SHOWN_CHARS:
        name = "..." + name[-PATH_SHOWN_CHARS:]
    raise InvalidInput(reason, f"{name}: {what}")


def dead_letter_key(origin: Origin) -> bytes | None:
    """The dead letter's Kafka key: the input's key, cut to its first 1 KiB."""
    return origin.key[:DEAD_LETTER_KEY_BYTES] if origin.key else origin.key


def dead_letter_value(origin: Origin, error: InvalidInput, now_ms: int | None = None) -> bytes:
    """The ``reco.dead-letter`` record: where the input was, its bytes, and why.

    Bounded by construction, however large or strange the input: the first 1 KiB of the key,
    the first 128 KiB of the value in base64, the value as text only when it is UTF-8 and
    JSON-escapes to at most 64 KiB (control bytes escape six-fold), and the reason cut to 4096
    characters: under 300 KiB in all, so a dead letter always fits a Kafka record, and the
    whole input stays at its topic, partition and offset.
    """
    value = origin.value or b""
    text = _text(value) if len(value) <= DEAD_LETTER_TEXT_BYTES else None
    if text is not None and len(orjson.dumps(text)) > DEAD_LETTER_TEXT_BYTES:
        text = None
    record: dict[str, Any] = {
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "key": _text(dead_letter_key(origin)),
        "key_bytes": origin.key_bytes,
        "value": text,
        "value_base64": base64.b64encode(value[:DEAD_LETTER_VALUE_BYTES]).decode("ascii"),
        "value_bytes": origin.value_bytes,
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
