"""Personalized rankings and the learning bandit, through a real broker and worker."""

from __future__ import annotations

import random
import time
from collections import Counter

import orjson
import pytest

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
)
from app.settings import Settings
from tests.kafka_io import (
    TopicReader,
    collect,
    event,
    every_kind_at,
    now_ms,
    produce,
    values,
    wait_until_learned,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The hidden truth of the learning test: which arm pays in which season.
BEST = {"winter": "recent", "summer": "learned"}  # default arms any clicked session may get


def apply_catalog(s: Settings, records: list[dict]) -> None:
    """Produce catalog records and wait until the worker has applied all of them.

    The barrier: after the records, one unusable record into every catalog partition; once
    all of those are dead-lettered, everything before them in each partition was applied.
    """
    produce(s.kafka.bootstrap_servers, [
        (s.topic(CATALOG), catalog_key(r['site_id'], r['item_id']).encode(), orjson.dumps(r))
        for r in records])
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers})
    for partition in range(s.kafka.partitions):
        producer.produce(s.topic(CATALOG), key=b"barrier", value=b"barrier",
                         partition=partition)
    assert producer.flush(30) == 0
    collect(s.kafka.bootstrap_servers, [s.topic(DEAD_LETTER)],
            lambda ms: len(values(ms, s.topic(DEAD_LETTER))) >= s.kafka.partitions)


def rankings_of(s: Settings, session_id: str, count: int) -> list[dict]:
    messages = collect(s.kafka.bootstrap_servers, [s.topic(RANKINGS)], lambda ms: len(
        [m for m in ms if m.key() == session_id.encode()]) >= count)
    return [v for v in values(messages, s.topic(RANKINGS)) if v["session_id"] == session_id]


def test_category1_follows_the_session_and_hides_basket_and_unavailable_items(
        start_worker, worker_settings):
    s: Settings = worker_settings
    start_worker(arms="category1")
    shoes = [f"shoe{n}" for n in range(8)]
    apply_catalog(s, [
        {"site_id": "shop", "item_id": item, "category": "shoes", "available": item != "shoe3",
         "ts": 1} for item in shoes] + [
        {"site_id": "shop", "item_id": f"hat{n}", "category": "hats", "available": True,
         "ts": 1} for n in range(8)])
    t = now_ms()
    # Other visitors, spread over every partition, engage with shoes and hats (no category
    # in the events: it comes from the catalog).
    crowd = []
    for n in range(40):
        for i, item in enumerate([shoes[n % 8], shoes[(n + 3) % 8], f"hat{n % 8}"]):
            crowd.append(event(s.topic(DETAIL_VIEWS), {
                "event_id": f"v{n}-{i}", "site_id": "shop", "session_id": f"crowd{n}",
                "ts": t + i, "item_id": item}))
    produce(s.kafka.bootstrap_servers, crowd)
    wait_until_learned(s, engagements=len(crowd))  # the site's statistics, from every partition
    produce(s.kafka.bootstrap_servers, [
        event(s.topic(DETAIL_VIEWS), {"event_id": "me1", "site_id": "shop", "session_id": "me",
                                      "ts": t + 10, "item_id": "shoe1"}),
        event(s.topic(DETAIL_VIEWS), {"event_id": "me2", "site_id": "shop", "session_id": "me",
                                      "ts": t + 11, "item_id": "shoe2"}),
        event(s.topic(BASKET_ADDS), {"event_id": "me3", "site_id": "shop", "session_id": "me",
                                     "ts": t + 12, "item_id": "shoe2"}),
    ])
    latest = rankings_of(s, "me", 3)[-1]
    shown = [i["item_id"] for i in latest["items"]]
    assert latest["arm"] == "category1" and latest["propensity"] == 1.0
    assert len(shown) == 10
    # Its category's items first, then the fallbacks; never the basket or unavailable items.
    assert set(shown[:5]) <= set(shoes), shown
    assert "shoe2" not in shown and "shoe3" not in shown, shown


def test_one_sites_events_never_change_another_sites_rankings(start_worker, worker_settings):
    s: Settings = worker_settings
    start_worker(arms="bestsellers")
    t = now_ms()
    # Same session ids and item ids on both sites; only site b buys "z".
    produce(s.kafka.bootstrap_servers, [
        event(s.topic(BASKET_ADDS), {"event_id": f"a{n}", "site_id": "a",
                                     "session_id": f"s{n}", "ts": t, "item_id": "x"})
        for n in range(20)] + [
        event(s.topic(BASKET_ADDS), {"event_id": f"b{n}-{k}", "site_id": "b",
                                     "session_id": f"s{n}", "ts": t, "item_id": "z"})
        for n in range(20) for k in range(3)])
    # Site statistics are learned by the site's learner from the engagements of every
    # partition; then a new session of site a (s0 itself bought x, and basket items are not
    # shown back) is ranked from them.
    wait_until_learned(s, engagements=80)
    probe = event(s.topic(BASKET_ADDS), {"event_id": "probe", "site_id": "a",
                                         "session_id": "new", "ts": t + 5, "item_id": "y"})
    produce(s.kafka.bootstrap_servers, [probe])
    messages = collect(s.kafka.bootstrap_servers, [s.topic(RANKINGS)], lambda ms: any(
        orjson.loads(m.value())["ranking_id"] == "rk-probe" for m in ms))
    for ranking in values(messages, s.topic(RANKINGS)):
        if ranking["site_id"] == "a":
            assert "z" not in [i["item_id"] for i in ranking["items"]], ranking
        else:
            assert "x" not in [i["item_id"] for i in ranking["items"]], ranking
    [probe_ranking] = [r for r in values(messages, s.topic(RANKINGS))
                       if r["ranking_id"] == "rk-probe"]
    assert [i["item_id"] for i in probe_ranking["items"]][:1] == ["x"]


def test_the_bandit_learns_the_right_arm_per_context_and_keeps_it_across_restarts(
        start_worker, worker_settings):
    s: Settings = worker_settings
    exploring = {"exploration": "0.1", "exploration_rule": "epsilon"}  # every worker alike
    first = start_worker(**exploring)
    rng = random.Random(7)
    # Logged decisions of uniformly random arms, 1 ms apart: all of them within one grace
    # period, so reading the served and basket-add topics at different paces while catching
    # up on this backlog cannot push a basket add out of its display's reach.
    t = now_ms() - 60_000
    records, decisions = [], 3_000
    for n in range(decisions):
        season = rng.choice(sorted(BEST))
        arm = rng.choice(s.bandit.arms)
        ts = t + n
        records.append(event(s.topic(SERVED), {
            "event_id": f"d{n}", "site_id": "shop", "session_id": f"s{n % 300}", "ts": ts,
            "items": [f"i{n}"], "arm": arm, "propensity": 1 / len(s.bandit.arms),
            "context": {"season": season}}))
        if rng.random() < (0.6 if arm == BEST[season] else 0.1):
            records.append(event(s.topic(BASKET_ADDS), {
                "event_id": f"b{n}", "site_id": "shop", "session_id": f"s{n % 300}",
                "ts": ts + 200, "item_id": f"i{n}"}))
    # Then another site's traffic on every partition moves stream time past them all at once
    # (rather than after each topic has been waited out as quiet).
    moved_to = t + decisions + 30_000
    for k in range(40):  # sessions on all partitions
        records += every_kind_at(s, "elsewhere", f"tail{k}", moved_to)
    produce(s.kafka.bootstrap_servers, records)

    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])
    seen: dict[str, dict] = {}  # ranking_id -> ranking, of everything read so far

    def probe(round_: str, season: str, count: int) -> list[dict]:
        """Rankings for ``count`` new sessions in a season, read off reco.rankings."""
        produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
            "event_id": f"{round_}-{season}-{k}", "site_id": "shop",
            "session_id": f"new-{round_}-{season}-{k}", "ts": moved_to + 1_000,
            "item_id": "i0", "context": {"season": season}}) for k in range(count)])
        wanted = {f"rk-{round_}-{season}-{k}" for k in range(count)}

        def arrived(messages: list) -> bool:
            while reader.parsed < len(messages):
                ranking = orjson.loads(messages[reader.parsed].value())
                seen[ranking["ranking_id"]] = ranking
                reader.parsed += 1
            return wanted <= seen.keys()

        reader.read_until(arrived)
        return [seen[ranking_id] for ranking_id in wanted if ranking_id in seen]

    # Wait until every decision has closed and been learned (model_version counts updates).
    deadline = time.monotonic() + 120
    version = 0
    while version < decisions and time.monotonic() < deadline:
        version = max(r["model_version"] for r in probe(f"wait{int(time.monotonic())}",
                                                        "winter", 1))
    assert version == decisions, first.log_tail()

    chosen = {}
    for season, best in BEST.items():
        rankings = probe("after", season, 60)
        assert {r["model_version"] for r in rankings} == {decisions}
        counts = Counter(r["arm"] for r in rankings)
        # The right arm most of the time, at about the propensity the rankings announce.
        propensity = next(r["propensity"] for r in rankings if r["arm"] == best)
        assert propensity > 0.9
        assert counts[best] / len(rankings) > 0.75, (season, counts)
        assert abs(counts[best] / len(rankings) - propensity) < 0.15
        chosen[season] = {r["arm"]: r["propensity"] for r in rankings}

    # A clean restart, then a worker that rebuilds from the changelogs alone: same model.
    first.stop()
    for data_dir in ("worker-data", "fresh-data-dir"):
        worker = start_worker(data_dir=data_dir, **exploring)
        for season in BEST:
            rankings = probe(f"restart-{data_dir}", season, 10)
            assert {r["model_version"] for r in rankings} == {decisions}, worker.log_tail()
            after = {r["arm"]: r["propensity"] for r in rankings}
            assert after[BEST[season]] == chosen[season][BEST[season]]
            assert all(after[arm] == chosen[season][arm] for arm in after.keys() & chosen[season])
        worker.stop()
    reader.close()


def test_triggers_first_defaults_and_a_burst_that_keeps_the_shown_ranking(
        start_worker, worker_settings):
    s: Settings = worker_settings
    worker = start_worker(reward_window_s="3", grace_s="1", arms="session_knn,trending,similar")
    t = now_ms()
    click = {"site_id": "brand-new", "session_id": "b1", "item_id": "i1"}
    produce(s.kafka.bootstrap_servers,
            [event(s.topic(CLICKS), {**click, "event_id": "c0", "ts": t})])
    messages = collect(s.kafka.bootstrap_servers, [s.topic(RANKINGS)], lambda ms: len(
        values(ms, s.topic(RANKINGS))) >= 2)
    first = values(messages, s.topic(RANKINGS))
    session = next(r for r in first if r["session_id"] == "b1")
    default = next(r for r in first if r["session_id"] == "*")
    assert session["trigger_event_id"] == "c0" and session["ranking_id"] == "rk-c0"
    assert (default["site_id"], default["segment"], default["trigger_event_id"]) == \
        ("brand-new", "", None)  # without waiting for a tick
    # A burst of browsing publishes 30 more rankings before the site shows the first one.
    produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
        **click, "event_id": f"burst{n}", "ts": t + 10 + n, "item_id": f"x{n}"})
        for n in range(30)] + [event(s.topic(SERVED), {
            "event_id": "d1", "site_id": "brand-new", "session_id": "b1", "ts": t + 100,
            "items": [item["item_id"] for item in session["items"]] or ["i1"],
            "ranking_id": "rk-c0", "arm": "made-up", "propensity": 0.99})])
    rewards = collect(s.kafka.bootstrap_servers, [s.topic(REWARDS)], lambda ms: bool(
        values(ms, s.topic(REWARDS))), timeout_s=60)
    [reward] = values(rewards, s.topic(REWARDS))
    assert (reward["arm"], reward["propensity"]) == (session["arm"], session["propensity"]), \
        worker.log_tail()
