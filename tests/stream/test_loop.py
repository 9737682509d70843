"""The whole loop through a real broker and a real ``recoloop worker`` process."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from app.contract.topics import (
    BASKET_ADDS,
    CLICKS,
    DEAD_LETTER,
    DETAIL_VIEWS,
    RANKINGS,
    REWARDS,
    SERVED,
)
from app.settings import Settings
from tests.kafka_io import collect, event, now_ms, produce, values

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RANKING_FIELDS = {"ranking_id", "site_id", "session_id", "ts", "arm", "propensity", "items",
                  "model_version", "context", "trigger_event_id", "explain"}


def test_rewards_3_1_0_and_a_ranking_after_each_session_event(start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="5", grace_s="1")  # d-none's idle close comes soon
    t = now_ms()
    site = {"site_id": "shop"}
    produce(s.kafka.bootstrap_servers, [
        event(s.topic(SERVED), {**site, "event_id": "d-basket", "session_id": "s1", "ts": t,
                                "items": ["a", "b"], "context": {"region": "eu"}}),
        event(s.topic(BASKET_ADDS), {**site, "event_id": "r-basket", "session_id": "s1",
                                     "ts": t + 2_000, "item_id": "a", "category": "shoes"}),
        event(s.topic(SERVED), {**site, "event_id": "d-view", "session_id": "s2", "ts": t,
                                "items": ["c"]}),
        event(s.topic(DETAIL_VIEWS), {**site, "event_id": "r-view", "session_id": "s2",
                                      "ts": t + 1_000, "item_id": "c"}),
        # No reaction, and no further events: the idle fallback must still close it.
        event(s.topic(SERVED), {**site, "event_id": "d-none", "session_id": "s3", "ts": t,
                                "items": ["a"]}),
    ])
    topics = [s.topic(REWARDS), s.topic(RANKINGS)]
    messages = collect(s.kafka.bootstrap_servers, topics,
                       lambda ms: len(values(ms, s.topic(REWARDS))) >= 3, timeout_s=120)
    rewards = {r["served_id"]: r for r in values(messages, s.topic(REWARDS))}
    assert {k: v["reward"] for k, v in rewards.items()} == {
        "d-basket": 3.0, "d-view": 1.0, "d-none": 0.0}, worker.log_tail()
    assert rewards["d-basket"]["closed_by"] == "max_reward"
    assert rewards["d-basket"]["outcomes"] == [
        {"type": "basket_add", "item_id": "a", "ts": t + 2_000, "delay_ms": 2_000}]
    assert rewards["d-none"]["closed_by"] == "idle"
    assert all(m.key() == orjson.loads(m.value())["session_id"].encode()
               for m in messages if m.topic() == s.topic(REWARDS))

    # Session rankings only; default rankings (session "*") come from ticks and first events.
    rankings = [r for r in values(messages, s.topic(RANKINGS)) if r["session_id"] != "*"]
    by_id = {r["ranking_id"]: r for r in rankings}
    # One ranking per session event: 3 displays and 2 reactions.
    assert {"rk-d-basket", "rk-r-basket", "rk-d-view", "rk-r-view", "rk-d-none"} <= set(by_id)
    for ranking in rankings:
        assert set(ranking) == RANKING_FIELDS
        assert ranking["arm"] in s.bandit.arms
        assert 0 < ranking["propensity"] <= 1
        assert isinstance(ranking["model_version"], int)
        assert all(set(item) == {"item_id", "score"} for item in ranking["items"])
        explain = ranking["explain"]  # why: the arms here, and what placed each item
        assert set(explain["arms"]) == set(s.bandit.arms)
        assert explain["arms"][ranking["arm"]]["probability"] == ranking["propensity"]
        assert len(explain["placed_by"]) == len(ranking["items"])
    assert by_id["rk-r-basket"]["session_id"] == "s1"
    assert by_id["rk-d-basket"]["context"] == {"region": "eu"}
    # Topics are read in no fixed order across each other, but one session's rankings are in
    # order: once both s1 events are in, the basket item is not recommended back to it.
    last_for_s1 = [r for r in rankings if r["session_id"] == "s1"][-1]
    assert "a" not in [i["item_id"] for i in last_for_s1["items"]]


def test_bad_input_goes_to_the_dead_letter_topic_and_the_stream_goes_on(worker,
                                                                        worker_settings):
    s: Settings = worker_settings
    t = now_ms()
    bad = [
        (s.topic(CLICKS), b"s1", b"{not json"),
        (s.topic(CLICKS), b"s1", orjson.dumps({"event_id": "x", "site_id": "shop",
                                               "session_id": "s1", "ts": "yesterday",
                                               "item_id": "a"})),
        (s.topic(SERVED), b"s1", orjson.dumps({"event_id": "y", "site_id": "shop",
                                               "session_id": "s1", "ts": t, "items": []})),
        (s.topic(CLICKS), b"other", orjson.dumps({"event_id": "z", "site_id": "shop",
                                                  "session_id": "s1", "ts": t,
                                                  "item_id": "a"})),
        (s.topic(CLICKS), b"s1", b"\xff\xfe binary"),
    ]
    good = event(s.topic(CLICKS), {"event_id": "ok", "site_id": "shop", "session_id": "s1",
                                   "ts": t, "item_id": "a"})
    produce(s.kafka.bootstrap_servers, [*bad, good])
    topics = [s.topic(DEAD_LETTER), s.topic(RANKINGS)]
    messages = collect(s.kafka.bootstrap_servers, topics, lambda ms: len(
        values(ms, s.topic(DEAD_LETTER))) >= 5 and values(ms, s.topic(RANKINGS)))
    dead = {base64.b64decode(d["value_base64"]): d for d in values(messages, s.topic(DEAD_LETTER))}
    # Every bad record is kept byte for byte, with where it came from and why.
    assert sorted(dead) == sorted(v for _, _, v in bad)
    for topic, key, value in bad:
        assert (dead[value]["topic"], dead[value]["key"]) == (topic, key.decode())
    reason = {value: dead[value]["reason"] for _, _, value in bad}
    assert reason[bad[0][2]].startswith("invalid_json")
    assert reason[bad[1][2]].startswith("schema") and "ts" in reason[bad[1][2]]
    assert reason[bad[2][2]].startswith("schema") and "items" in reason[bad[2][2]]
    assert reason[bad[3][2]].startswith("key_mismatch")
    assert reason[bad[4][2]].startswith("invalid_json")
    assert dead[bad[4][2]]["value"] is None  # not UTF-8: only the base64 form is faithful
    # The good event after the bad ones in the same partition was processed.
    assert [r["ranking_id"] for r in values(messages, s.topic(RANKINGS))
            if r["session_id"] != "*"] == ["rk-ok"]  # and the site's first default ranking


def test_the_site_bandit_learns_from_closed_decisions(worker, worker_settings):
    s: Settings = worker_settings
    t = now_ms()
    produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
        "event_id": "c1", "site_id": "shop", "session_id": "s1", "ts": t, "item_id": "a",
        "context": {"season": "winter"}})])
    bootstrap = s.kafka.bootstrap_servers
    [ranking] = [r for r in values(collect(bootstrap, [s.topic(RANKINGS)], lambda ms: [
        m for m in ms if m.key() == b"s1"]), s.topic(RANKINGS)) if r["session_id"] != "*"]
    assert ranking["model_version"] == 0
    # The site shows that ranking; the engine's record of it decides arm and propensity.
    produce(s.kafka.bootstrap_servers, [
        event(s.topic(SERVED), {"event_id": "d1", "site_id": "shop", "session_id": "s1",
                                "ts": t + 100, "items": ["b"], "arm": "not-this-one",
                                "ranking_id": ranking["ranking_id"]}),
        event(s.topic(BASKET_ADDS), {"event_id": "b1", "site_id": "shop", "session_id": "s1",
                                     "ts": t + 900, "item_id": "b"}),
    ])
    [reward] = values(collect(s.kafka.bootstrap_servers, [s.topic(REWARDS)], lambda ms: ms),
                      s.topic(REWARDS))
    assert (reward["arm"], reward["propensity"]) == (ranking["arm"], ranking["propensity"])
    assert reward["ranking_id"] == ranking["ranking_id"] and reward["reward"] == 3.0

    # The learner runs beside the engine; later rankings of the site carry the new version.
    versions: list[int] = []
    for probe in range(30):
        produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
            "event_id": f"p{probe}", "site_id": "shop", "session_id": f"probe{probe}",
            "ts": t + 1_000, "item_id": "a"})])
        wanted = f"rk-p{probe}"
        found = values(collect(bootstrap, [s.topic(RANKINGS)], lambda ms, w=wanted: any(
            orjson.loads(m.value())["ranking_id"] == w for m in ms)), s.topic(RANKINGS))
        versions = [r["model_version"] for r in found if r["ranking_id"] == wanted]
        if versions and versions[0] >= 1:
            break
        time.sleep(0.5)
    assert versions == [1], worker.log_tail()
