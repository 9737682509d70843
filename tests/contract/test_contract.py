"""Dead letters: every input kept with its reason, and always small enough for Kafka; event
times that are JSON integers only."""

from __future__ import annotations

import base64

import orjson
import pytest

from app.contract.codec import MAX_RECORD_BYTES
from app.contract.decode import (
    DEAD_LETTER_KEY_BYTES,
    DEAD_LETTER_VALUE_BYTES,
    InvalidInput,
    dead_letter_key,
    dead_letter_value,
    decode,
)
from app.contract.specs import validation_error
from app.contract.topics import CLICKS
from app.core.events import Origin


def test_a_dead_letter_keeps_the_exact_bytes_and_the_reason():
    origin = Origin("reco.clicks", 2, 17, b"s1", b"\xff not json")
    record = orjson.loads(dead_letter_value(origin, InvalidInput("invalid_json", "bad"), 5))
    assert base64.b64decode(record["value_base64"]) == b"\xff not json"
    assert record["value"] is None  # not UTF-8
    assert (record["topic"], record["partition"], record["offset"], record["key"]) == \
        ("reco.clicks", 2, 17, "s1")
    assert record["reason"] == "invalid_json: bad" and record["value_bytes"] == 10
    assert record["key_bytes"] == 2
    assert validation_error("reco.dead-letter", record) is None


@pytest.mark.parametrize("key, value", [
    (b"k" * 2_000_000, b'{"x": "' + b"a" * 3_000_000 + b'"}'),  # huge key and value
    (b"s1", b"\x01" * 200_000),  # control bytes: JSON escapes each one six-fold
    (b"\x00" * 250_000, b"\x1f" * 250_000),  # a 250 KB key plus a 250 KB value
    (b"s1", "\u2028".encode() * 60_000),  # valid UTF-8 whose text would not fit
])
def test_any_input_makes_a_dead_letter_well_under_a_kafka_record(key, value):
    origin = Origin("reco.served", 0, 1, key, value)
    raw = dead_letter_value(origin, InvalidInput("schema", "\x01" * 100_000))
    assert len(dead_letter_key(origin) or b"") + len(raw) <= 300 * 1024 < MAX_RECORD_BYTES
    record = orjson.loads(raw)
    assert record["value_bytes"] == len(value) and record["key_bytes"] == len(key)
    assert base64.b64decode(record["value_base64"]) == value[:DEAD_LETTER_VALUE_BYTES]
    assert dead_letter_key(origin) == key[:DEAD_LETTER_KEY_BYTES]
    assert validation_error("reco.dead-letter", record) is None


def test_a_reaction_waiting_in_the_join_keeps_a_bounded_copy_of_its_input():
    value = {"event_id": "c1", "site_id": "shop", "session_id": "s1", "ts": 1_700_000_000_000,
             "item_id": "i1", "padding": "x" * 600_000}
    raw = orjson.dumps(value)
    reaction = decode(CLICKS, Origin("reco.clicks", 0, 5, b"s1", raw))
    assert reaction.origin is not None and len(reaction.origin.value or b"") <= 4096
    assert reaction.origin.value_bytes == len(raw)  # what its dead letter will report


@pytest.mark.parametrize("ts", ["1796160000000.0", "1e30", str(2**64), "-1"])
def test_event_times_are_json_integers_in_range(ts):
    raw = (b'{"event_id": "c1", "site_id": "shop", "session_id": "s1", "item_id": "i1", '
           b'"ts": ' + ts.encode() + b"}")
    with pytest.raises(InvalidInput) as error:
        decode(CLICKS, Origin("reco.clicks", 0, 5, b"s1", raw))
    assert error.value.reason == "schema" and "ts" in str(error.value)


def test_a_key_must_be_the_session_id_byte_for_byte():
    value = b'{"event_id": "c1", "site_id": "shop", "session_id": "nu\\ufffd", "item_id": "i", ' \
            b'"ts": 1700000000000}'
    for key in (b"nu\xff", b"nu\xfe", b"NU\xef\xbf\xbd"):  # invalid UTF-8 once read as U+FFFD
        with pytest.raises(InvalidInput) as error:
            decode(CLICKS, Origin("reco.clicks", 0, 5, key, value))
        assert error.value.reason == "key_mismatch"
    assert decode(CLICKS, Origin("reco.clicks", 0, 5, "nu\ufffd".encode(), value)).session_id \
        == "nu\ufffd"


def test_a_catalog_item_has_one_key_only():
    from app.contract.decode import catalog_key, decode_catalog

    assert decode_catalog(catalog_key("a=b", "x").encode(), None) == ("a=b", "x", None)
    assert decode_catalog(catalog_key("shop:eu", "sku").encode(), None)[:2] == ("shop:eu", "sku")
    for other_spelling in (b"a%3Db:x", b"\xff:x", b"shop%3aeu:sku"):
        with pytest.raises(InvalidInput) as error:
            decode_catalog(other_spelling, None)
        assert error.value.reason == "key_mismatch"
