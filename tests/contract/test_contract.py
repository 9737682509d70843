"""Dead letters: every input kept with its reason, and always small enough for Kafka."""

from __future__ import annotations

import base64

import orjson

from app.contract.decode import DEAD_LETTER_KEPT_BYTES, InvalidInput, dead_letter_value
from app.contract.specs import validation_error
from app.core.events import Origin


def test_a_dead_letter_keeps_the_exact_bytes_and_the_reason():
    origin = Origin("reco.clicks", 2, 17, b"s1", b"\xff not json")
    record = orjson.loads(dead_letter_value(origin, InvalidInput("invalid_json", "bad"), 5))
    assert base64.b64decode(record["value_base64"]) == b"\xff not json"
    assert record["value"] is None  # not UTF-8
    assert (record["topic"], record["partition"], record["offset"], record["key"]) == \
        ("reco.clicks", 2, 17, "s1")
    assert record["reason"] == "invalid_json: bad" and record["value_bytes"] == 10
    assert validation_error("reco.dead-letter", record) is None


def test_a_huge_input_still_makes_a_dead_letter_under_a_kafka_record_limit():
    huge = b'{"x": "' + b"a" * 3_000_000 + b'"}'
    origin = Origin("reco.served", 0, 1, b"k" * 2_000_000, huge)
    raw = dead_letter_value(origin, InvalidInput("schema", "y" * 100_000))
    assert len(raw) < 1_000_000  # librdkafka's and the broker's default maximum
    record = orjson.loads(raw)
    assert record["value"] is None and record["value_bytes"] == len(huge)
    assert base64.b64decode(record["value_base64"]) == huge[:DEAD_LETTER_KEPT_BYTES]
    assert validation_error("reco.dead-letter", record) is None
