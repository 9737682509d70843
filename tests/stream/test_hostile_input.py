"""What outside traffic found, each finding through a real broker and worker: no code from
data, records bounded in size, integer times only, tenants that cannot collide."""

from __future__ import annotations

import pickle
import time

import orjson
import pytest
from confluent_kafka import Producer

from app.contract.decode import catalog_key
from app.contract.topics import (
    BASKET_ADDS,
    CATALOG,
    CLICKS,
    DEAD_LETTER,
    DETAIL_VIEWS,
    RANKINGS,
    REWARDS,
    SERVED,
    Topics,
)
from app.kafka.topic_admin import ensure_internal_topics, internal_topics
from app.settings import Settings
from tests.kafka_io import TopicReader, event, every_kind_at, now_ms, produce
from tests.stream.test_state import Exploit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNDECODABLE = "recoloop_records_undecodable_total"


def display_and_click(s: Settings, site: str, session: str, ts: int, n: str = "1") -> list:
    return [event(s.topic(SERVED), {"event_id": f"d{n}", "site_id": site, "session_id": session,
                                    "ts": ts, "items": ["i1", "i2"]}),
            event(s.topic(CLICKS), {"event_id": f"c{n}", "site_id": site, "session_id": session,
                                    "ts": ts + 500, "item_id": "i1"})]


def of(messages: list, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in messages if m.topic() == topic]


def rewards_of(reader: TopicReader, count: int, timeout_s: float = 60) -> list[dict]:
    topic = reader.topics[0]
    return of(reader.read_until(lambda ms: len(of(ms, topic)) >= count, timeout_s), topic)


def send(bootstrap: str, records: list[tuple], **config: object) -> None:
    """Produce ``(topic, key, value[, partition[, timestamp_ms]])`` records as given."""
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    for topic, key, value, *where in records:
        extra = {name: given for name, given in zip(("partition", "timestamp"), where,
                                                     strict=False) if given is not None}
        producer.produce(topic, value, key, **extra)
    assert producer.flush(30) == 0


def test_crafted_pickles_on_the_models_and_changelog_topics_never_run(
        start_worker, worker_settings, tmp_path):
    s: Settings = worker_settings
    marker = tmp_path / "pwned"
    topics = Topics.of(s)
    ensure_internal_topics(s, internal_topics(topics, s.kafka.partitions))
    crafted = pickle.dumps(Exploit(str(marker)))
    produce(s.kafka.bootstrap_servers, [(topics.models, b"shop", b"7\n" + crafted),
                                  (topics.models, b"other", crafted)])
    # A fresh worker restores every partition's changelog.
    send(s.kafka.bootstrap_servers, [(topics.changelog, b"clock", crafted, p)
                               for p in range(s.kafka.partitions)])

    worker = start_worker(reward_window_s="2", grace_s="1")
    worker.wait_ready()
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])
    produce(s.kafka.bootstrap_servers, display_and_click(s, "shop", "s1", now_ms()))
    assert [r["reward"] for r in rewards_of(reader, 1)] == [1.0], worker.log_tail()
    reader.close()
    assert not marker.exists()
    assert worker.metric(UNDECODABLE, source="models") == 2
    assert worker.metric(UNDECODABLE, source="changelog") >= s.kafka.partitions
    assert "skipped" in worker.log_tail(200)


def test_records_too_large_for_kafka_are_dead_lettered_and_the_partition_goes_on(
        start_worker, worker_settings):
    s: Settings = worker_settings
    t = now_ms()
    big = {"site_id": "shop", "ts": t, "item_id": "i1"}
    served = {"site_id": "shop", "session_id": "bot", "items": [f"{n:03d}" + "x" * 253
                                                                 for n in range(100)],
              "context": {f"k{n}": "v" * 256 for n in range(32)}}
    send(s.kafka.bootstrap_servers, [
        (s.topic(CLICKS), b"ctl", b"\x01" * 200_000),  # not JSON: escapes six-fold as text
        (s.topic(CLICKS), b"k" * 250_000, b"v" * 250_000),  # a 250 KB key plus value
        event(s.topic(CLICKS), {**big, "event_id": "wide", "session_id": "wide",
                                "context": {f"k{n}": "v" for n in range(45_000)}}),
        *[event(s.topic(CLICKS), {**big, "event_id": f"fat{n}", "session_id": "fat",
                                  "padding": "p" * 600_000}) for n in range(2)],
        event(s.topic(CLICKS), {**big, "event_id": "huge", "session_id": "huge",
                                "padding": "p" * 1_030_000}),
        # A bot session: each display is valid, together they would not fit one record.
        *[event(s.topic(SERVED), {**served, "event_id": f"bot{n}", "ts": t + n})
          for n in range(40)],
    ], **{"message.max.bytes": 2_000_000})
    # Each too_large input costs a redo of its batch; on a loaded machine the redos can stall
    # the worker for longer than the default 5 s, after which a quiet partition's displays
    # close by the wall clock (a known cost of the backstop, see docs/contract.md, Limits).
    worker = start_worker(idle_close_s="30")
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(DEAD_LETTER)])
    reasons = {}

    def found(messages: list) -> bool:
        for letter in of(messages, s.topic(DEAD_LETTER)):
            reasons.setdefault(letter["reason"].partition(":")[0], []).append(letter)
        return {"invalid_json", "schema", "too_large"} <= set(reasons)
    reader.read_until(found, timeout_s=90)
    assert {"invalid_json", "schema", "too_large"} <= set(reasons), worker.log_tail()
    for message in reader.messages:  # every dead letter fits, however large its input
        assert len(message.value()) + len(message.key() or b"") < 300 * 1024
    too_large = reasons["too_large"]
    assert all(letter["value_bytes"] > 0 for letter in too_large)
    assert min(int(letter["offset"]) for letter in too_large) > 0  # early displays fit
    reader.close()
    # The partitions go on: new traffic is answered, by the same worker process.
    rewards = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])
    t = now_ms()
    produce(s.kafka.bootstrap_servers, [*display_and_click(s, "shop", "after", t, "after"),
                                  *every_kind_at(s, "shop", "after", t + 26_000)])

    def after(ms: list) -> list[dict]:
        return [r for r in of(ms, s.topic(REWARDS)) if r["served_id"] == "dafter"]
    assert [r["reward"] for r in after(rewards.read_until(after, timeout_s=90))] == [1.0], \
        worker.log_tail()
    rewards.close()
    assert worker.process is not None and worker.process.poll() is None
    assert worker.metric("recoloop_dead_letters_total", reason="too_large") >= 1


def test_float_and_out_of_range_times_are_dead_lettered_and_break_nothing(
        start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="2", grace_s="1")
    t = now_ms()
    display = {"site_id": "shop", "session_id": "s1", "items": ["i1"]}
    records = [event(s.topic(SERVED), {**display, "event_id": "ok", "ts": t})]
    for n, bad in enumerate([float(t), 2**64, 1e30]):
        raw = orjson.dumps({**display, "event_id": f"bad{n}"})[:-1] + b',"ts":' + \
            repr(bad).encode() + b"}"
        records.append((s.topic(SERVED), b"s1", raw))
    produce(s.kafka.bootstrap_servers, records)
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(DEAD_LETTER), s.topic(REWARDS)])
    messages = reader.read_until(lambda ms: len(of(ms, s.topic(DEAD_LETTER))) >= 3
                                 and len(of(ms, s.topic(REWARDS))) >= 1, timeout_s=60)
    reader.close()
    assert sorted(d["reason"].partition(":")[0] for d in of(messages, s.topic(DEAD_LETTER))) \
        == ["schema"] * 3, worker.log_tail()
    [reward] = of(messages, s.topic(REWARDS))
    assert reward["served_id"] == "ok" and reward["served_ts"] == t
    assert type(reward["served_ts"]) is int


def test_a_producer_clock_ahead_cannot_push_stream_time(start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="10", grace_s="1")
    t = now_ms()
    ahead = t + 50 * 60_000  # a producer clock 50 minutes fast sets both times
    send(s.kafka.bootstrap_servers, [
        event(s.topic(SERVED), {"event_id": "d1", "site_id": "shop", "session_id": "s1",
                                "ts": t, "items": ["i1"]}),
        (*event(s.topic(CLICKS), {"event_id": "future", "site_id": "shop", "session_id": "s1",
                                  "ts": ahead, "item_id": "x"}), None, ahead),
    ])
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(DEAD_LETTER), s.topic(REWARDS)])
    reader.read_until(lambda ms: len(of(ms, s.topic(DEAD_LETTER))) >= 1, timeout_s=60)
    [letter] = of(reader.messages, s.topic(DEAD_LETTER))
    assert letter["reason"].startswith("future_timestamp"), worker.log_tail()
    # The open display was not closed by the future time: a real click still counts.
    produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
        "event_id": "c1", "site_id": "shop", "session_id": "s1", "ts": t + 2_000,
        "item_id": "i1"})])
    reader.read_until(lambda ms: len(of(ms, s.topic(REWARDS))) >= 1, timeout_s=60)
    reader.close()
    assert [(r["served_id"], r["reward"]) for r in of(reader.messages, s.topic(REWARDS))] == \
        [("d1", 1.0)]


def test_site_ids_with_separators_cannot_touch_each_other(start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="2", grace_s="1")
    t = now_ms()
    # Same partition on purpose: the state of both lives in one RocksDB.
    send(s.kafka.bootstrap_servers, [
        (*event(s.topic(SERVED), {"event_id": "d1", "site_id": "shop", "session_id": "a:b",
                                  "ts": t, "items": ["i1"]}), 0),
        (*event(s.topic(BASKET_ADDS), {"event_id": "b1", "site_id": "shop:a",
                                       "session_id": "b", "ts": t + 500, "item_id": "i1"}), 0),
        (s.topic(CATALOG), catalog_key("shop:eu", "sku-9").encode(), orjson.dumps({
            "site_id": "shop:eu", "item_id": "sku-9", "category": "c", "available": True,
            "ts": 1})),
        (s.topic(CATALOG), catalog_key("shop", "eu:sku-9").encode(), orjson.dumps({
            "site_id": "shop", "item_id": "eu:sku-9", "category": "c", "available": False,
            "ts": 2})),
    ])
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS), s.topic(DEAD_LETTER)])
    reader.read_until(lambda ms: len(of(ms, s.topic(REWARDS))) >= 1, timeout_s=60)
    assert [(r["served_id"], r["reward"]) for r in of(reader.messages, s.topic(REWARDS))] == \
        [("d1", 0.0)], worker.log_tail()  # another site's basket add is not this display's
    assert of(reader.messages, s.topic(DEAD_LETTER)) == []  # both catalog keys were fine
    reader.close()
    # shop:eu's sku-9 stays available: a fresh session there is shown it.
    rankings = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])
    produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
        "event_id": "v1", "site_id": "shop:eu", "session_id": "eu1", "ts": t + 1_000,
        "item_id": "other"})])

    def eu_ranking(ms: list) -> list[dict]:
        return [r for r in of(ms, s.topic(RANKINGS)) if r["session_id"] == "eu1"]
    [ranking] = eu_ranking(rankings.read_until(lambda ms: bool(eu_ranking(ms)), timeout_s=60))
    rankings.close()
    assert ranking["site_id"] == "shop:eu"
    assert "sku-9" in [item["item_id"] for item in ranking["items"]]


def test_one_visit_sites_stop_being_ranked_and_leave_memory(start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(site_idle_s="3", default_ranking_interval_s="1")
    t = now_ms()
    sites = [f"visit-{n}" for n in range(200)]
    produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
        "event_id": f"c{n}", "site_id": site, "session_id": f"s{n}", "ts": t, "item_id": "i"})
        for n, site in enumerate(sites)])
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])

    def defaults(ms: list) -> set[str]:
        return {r["site_id"] for r in of(ms, s.topic(RANKINGS)) if r["session_id"] == "*"}
    # A site's defaults come from its home partition, for the segments seen there: about a
    # quarter of these one-session sites.
    reader.read_until(lambda ms: len(defaults(ms)) >= 30, timeout_s=60)
    assert len(defaults(reader.messages)) >= 30
    deadline = time.monotonic() + 30  # the gauge is set on the worker's next tick
    while worker.metric("recoloop_bandit_models_in_memory") < 30:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    # Past the idle time (stream time follows the wall clock once the partition is quiet)
    # nothing more is published for them (at 1 s intervals they would go on forever)...
    deadline = time.monotonic() + 40
    while True:
        seen = len(reader.messages)
        reader.read_until(lambda ms: False, timeout_s=3)
        later = defaults(reader.messages[seen:])
        if not later:
            break
        assert time.monotonic() < deadline, sorted(later)[:5]
    reader.close()
    # ... and their bandits have left memory.
    while worker.metric("recoloop_bandit_models_in_memory") > 0:
        assert time.monotonic() < deadline + 20, worker.log_tail()
        time.sleep(0.5)


def test_events_stamped_ahead_then_a_quiet_spell_leave_live_traffic_joined_right(
        start_worker, worker_settings):
    """Event times a little ahead of the clocks (allowed skew), a quiet spell, then live
    traffic: stream time waited for the wall clock, so the live display gets its click."""
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="2", grace_s="1", idle_close_s="2")
    ahead = now_ms() + 10_000
    first = {"site_id": "shop", "session_id": "early", "ts": ahead}
    send(s.kafka.bootstrap_servers, [
        (*event(s.topic(SERVED), {**first, "event_id": "e-d", "items": ["a"]}), 0),
        *[(*event(s.topic(topic), {**first, "event_id": f"e-{topic}", "item_id": "z"}), 0)
          for topic in (CLICKS, DETAIL_VIEWS, BASKET_ADDS)]])
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])
    rewards_of(reader, 1, timeout_s=60)  # the early display closed: the partition is warm
    time.sleep(8)  # a quiet spell: the partition's stream time follows the wall clock
    live = now_ms()
    send(s.kafka.bootstrap_servers, [
        (*event(s.topic(SERVED), {"event_id": "live-d", "site_id": "shop",
                                  "session_id": "live", "ts": live, "items": ["b"]}), 0),
        (*event(s.topic(CLICKS), {"event_id": "live-c", "site_id": "shop",
                                  "session_id": "live", "ts": live + 500, "item_id": "b"}), 0)])

    def live_reward(ms: list) -> list[dict]:
        return [r for r in of(ms, s.topic(REWARDS)) if r["served_id"] == "live-d"]
    found = live_reward(reader.read_until(live_reward, timeout_s=60))
    reader.close()
    assert [r["reward"] for r in found] == [1.0], worker.log_tail()
