"""The topic contract files: they load, their examples hold, and bad events are named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.contract import specs as specs_module
from app.contract import topics
from app.contract.specs import TOPICS_DIR, TopicSpec, load_specs, validation_error
from app.core.arms import KNOWN_ARMS

CONTRACT_TOPICS = {topics.SERVED, *topics.REACTION_TOPICS, topics.CATALOG, topics.SITE_CONFIG,
                   topics.RANKINGS, topics.REWARDS, topics.DEAD_LETTER}
INPUTS = (topics.SERVED, *topics.REACTION_TOPICS)
DAY_MS = 86_400_000


def example(topic: str) -> dict[str, Any]:
    return copy.deepcopy(dict(load_specs()[topic].example))


def test_every_contract_topic_has_exactly_one_spec() -> None:
    assert set(load_specs()) == CONTRACT_TOPICS
    assert load_specs() is load_specs()  # cached: parsed once per process
    assert all(isinstance(spec, TopicSpec) for spec in load_specs().values())


def test_topic_settings_follow_the_contract() -> None:
    specs = load_specs()
    assert specs[topics.CATALOG].cleanup_policy == "compact"
    for topic in INPUTS:
        assert (specs[topic].cleanup_policy, specs[topic].retention_ms) == ("delete", 7 * DAY_MS)
    assert specs[topics.RANKINGS].retention_ms == DAY_MS
    assert specs[topics.REWARDS].retention_ms == 30 * DAY_MS
    assert specs[topics.DEAD_LETTER].retention_ms == 30 * DAY_MS
    # The join inputs must agree on their partition count by construction.
    assert len({specs[t].partition_count(8) for t in topics.JOIN_INPUT_TOPICS}) == 1


@pytest.mark.parametrize("topic", sorted(CONTRACT_TOPICS))
def test_schema_is_draft7_and_example_validates(topic: str) -> None:
    spec = load_specs()[topic]
    jsonschema.Draft7Validator.check_schema(spec.value_schema)
    jsonschema.Draft7Validator(spec.value_schema).validate(spec.example)
    assert validation_error(topic, example(topic)) is None


@pytest.mark.parametrize("topic", sorted(CONTRACT_TOPICS - {topics.SITE_CONFIG}))
def test_schemas_allow_additional_fields(topic: str) -> None:
    event = example(topic) | {"x_future_field": {"anything": [1, 2]}}
    assert validation_error(topic, event) is None


def test_a_site_config_with_a_misspelt_field_is_refused_not_half_applied() -> None:
    """Configs are written by people: a rule under a wrong name must not be ignored."""
    config = example(topics.SITE_CONFIG)
    config["rules"]["exclude_item"] = ["sku-1"]
    assert "exclude_item" in (validation_error(topics.SITE_CONFIG, config) or "")


def test_the_site_config_schema_takes_every_registered_arm_by_its_pattern() -> None:
    """The arm registry (app/core/arms.py) is the one list of arms: the schema checks only
    their form, and each registered name fits every place the schema takes an arm."""
    config = {"site_id": "shop", "arms": list(KNOWN_ARMS), "shadow": [f"arm:{KNOWN_ARMS[0]}"],
              "experiment": {"name": "e", "variants": [
                  {"name": "a", "share": 1, "arms": list(KNOWN_ARMS[:8])}]}}
    assert validation_error(topics.SITE_CONFIG, config) is None
    for arm in KNOWN_ARMS:
        variant = {"name": "c", "share": 1, "baseline": arm}
        config = {"site_id": "shop", "arms": [arm], "shadow": [f"arm:{arm}"],
                  "experiment": {"name": "e", "variants": [variant]}}
        assert validation_error(topics.SITE_CONFIG, config) is None, arm
    schema = load_specs()[topics.SITE_CONFIG].value_schema
    arm_schema = {"$ref": "#/definitions/arm"}
    assert schema["properties"]["arms"]["items"] == arm_schema
    variant = schema["properties"]["experiment"]["properties"]["variants"]["items"]
    assert variant["properties"]["arms"]["items"] == arm_schema


def test_optional_fields_may_be_left_out() -> None:
    served = example(topics.SERVED)
    for optional in ("ranking_id", "arm", "propensity", "context"):
        del served[optional]
    assert validation_error(topics.SERVED, served) is None
    click = example(topics.CLICKS)
    for optional in ("served_id", "category", "price", "context"):
        del click[optional]
    assert validation_error(topics.CLICKS, click) is None


def _without(event: dict[str, Any], field: str) -> dict[str, Any]:
    event.pop(field)
    return event


BAD_EVENTS = [
    # (topic, how to break the example, a field the reason must mention)
    (topics.SERVED, lambda e: _without(e, "session_id"), "session_id"),
    (topics.SERVED, lambda e: e | {"ts": "1732170000000"}, "ts"),
    (topics.SERVED, lambda e: e | {"ts": -1}, "ts"),
    (topics.SERVED, lambda e: e | {"ts": True}, "ts"),
    (topics.SERVED, lambda e: e | {"items": []}, "items"),
    (topics.SERVED, lambda e: e | {"items": ["sku-1", 7]}, "items[1]"),
    (topics.SERVED, lambda e: e | {"propensity": 0}, "propensity"),
    (topics.SERVED, lambda e: e | {"propensity": 1.5}, "propensity"),
    (topics.SERVED, lambda e: e | {"session_id": ""}, "session_id"),
    (topics.SERVED, lambda e: e | {"context": {"device": 3}}, "context.device"),
    (topics.CLICKS, lambda e: e | {"item_id": 42}, "item_id"),
    (topics.DETAIL_VIEWS, lambda e: _without(e, "item_id"), "item_id"),
    (topics.BASKET_ADDS, lambda e: e | {"price": -1}, "price"),
    (topics.CATALOG, lambda e: e | {"available": "yes"}, "available"),
    (topics.REWARDS, lambda e: e | {"closed_by": "timeout"}, "closed_by"),
]


@pytest.mark.parametrize(("topic", "breaks", "field"), BAD_EVENTS)
def test_bad_events_name_the_field(topic: str, breaks: Any, field: str) -> None:
    event = breaks(example(topic))
    reason = validation_error(topic, event)
    assert reason is not None and field in reason, reason
    # The reference implementation agrees that the event is invalid.
    assert not jsonschema.Draft7Validator(load_specs()[topic].value_schema).is_valid(event)


@pytest.mark.parametrize("value", [[], "text", 3, None, ["a"]])
def test_a_value_that_is_not_an_object_is_rejected(value: object) -> None:
    reason = validation_error(topics.CLICKS, value)
    assert reason is not None and "object" in reason


def test_reason_is_short_and_lists_every_missing_field() -> None:
    reason = validation_error(topics.SERVED, {"event_id": "e1", "ts": 1})
    assert reason == "site_id, session_id, items: required fields missing"


def test_validation_does_not_modify_the_event() -> None:
    event = example(topics.SERVED)
    before = copy.deepcopy(event)
    validation_error(topics.SERVED, event)
    assert event == before


def test_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        validation_error("reco.nope", {})


def test_specs_are_loaded_from_the_package_topic_specs_dir() -> None:
    assert TOPICS_DIR.is_dir()
    assert TOPICS_DIR.parent == Path(specs_module.__file__).resolve().parent  # package data
    assert sorted(p.stem for p in TOPICS_DIR.glob("*.json")) == sorted(CONTRACT_TOPICS)


def test_a_malformed_spec_directory_is_reported_with_the_file(tmp_path: Any) -> None:
    from app.contract.specs import TopicSpecError

    with pytest.raises(TopicSpecError, match="no topic specs"):
        load_specs(tmp_path)
    (tmp_path / "reco.a.json").write_text('{"name": "reco.b"}')
    with pytest.raises(TopicSpecError, match="reco.a.json"):
        load_specs(tmp_path)  # failures are not cached


def test_event_times_far_ahead_of_their_message_are_rejected():
    import orjson
    import pytest

    from app.contract.decode import InvalidInput, decode
    from app.core.events import Origin

    value = {"event_id": "e", "site_id": "s", "session_id": "k", "ts": 5_000, "item_id": "i"}
    origin = Origin("reco.clicks", 0, 0, b"k", orjson.dumps(value))
    assert decode("reco.clicks", origin, latest_ts=5_000).ts == 5_000
    with pytest.raises(InvalidInput) as error:
        decode("reco.clicks", origin, latest_ts=4_999)
    assert error.value.reason == "future_timestamp"
