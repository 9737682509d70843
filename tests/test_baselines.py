"""bench.baselines: the contenders' online models, same shoppers for all, and the suite's
side-by-side report. In-process and on simulated time: no broker."""

from __future__ import annotations

from typing import Any

import pytest

from app.contract.topics import BASKET_ADDS, CATALOG, CLICKS, DETAIL_VIEWS, SERVED
from bench import baselines, next_item
from bench.baselines import Options
from bench.contenders import Contender, CoView, Popular, RandomItems, Recent, SessionKnn
from bench.next_item import View
from bench.suite import render_table
from bench.suite_worlds import world_tables, world_verdict

clock = [0]  # event time of the fed events, one second apart


def feed(contender: Contender, events: list[tuple[str, str, str]]) -> None:
    """(topic, session, item) events of one site, after a catalog of items a..h (h
    unavailable)."""
    for item in "abcdefgh":
        contender.observe(CATALOG, {"site_id": "s", "item_id": item, "available": item != "h"})
    for topic, session, item in events:
        clock[0] += 1_000
        value: dict[str, Any] = {"site_id": "s", "session_id": session, "item_id": item,
                                 "ts": clock[0]}
        if topic == SERVED:
            value = {"site_id": "s", "session_id": session, "items": [item], "ts": clock[0]}
        contender.observe(topic, value)


def ranked(contender: Contender, session: str) -> list[str]:
    record = contender.ranking("s", session, 0, 1)
    return [entry["item_id"] for entry in record["items"]]


def test_popular_ranks_by_engagement_without_the_basket_or_unavailable_items() -> None:
    popular = Popular(seed=1, size=3)
    feed(popular, [(CLICKS, "x", "c"), (DETAIL_VIEWS, "x", "c"), (CLICKS, "w", "c"),
                   (CLICKS, "y", "h"), (CLICKS, "y", "h"), (CLICKS, "y", "h"),
                   (BASKET_ADDS, "z", "b"),
                   (CLICKS, "y", "b"), (SERVED, "z", "a")])
    assert ranked(popular, "x") == ["c", "b", "a"]  # h is unavailable; ties by catalog order
    assert ranked(popular, "z") == ["c", "a", "d"]  # b is in z's basket


def test_coview_ranks_what_others_viewed_right_after_the_last_item() -> None:
    coview = CoView(seed=1, size=3)
    feed(coview, [(CLICKS, "u", "a"), (DETAIL_VIEWS, "u", "a"), (CLICKS, "u", "d"),
                  (CLICKS, "v", "a"), (CLICKS, "v", "e"), (CLICKS, "w", "a"),
                  (CLICKS, "w", "d"), (BASKET_ADDS, "w", "d"), (CLICKS, "me", "a")])
    # After a: d twice, e once (a's detail view is the same visit as its click); then the
    # most popular.
    assert ranked(coview, "me") == ["d", "e", "a"]
    assert ranked(coview, "w")[:1] != ["d"]  # w's own basket; w's last item is d
    feed(coview, [(BASKET_ADDS, "me", "d")])
    assert ranked(coview, "me")[0] == "e"


def test_coview_counts_an_item_after_itself_when_visitors_return_to_it() -> None:
    coview = CoView(seed=1, size=2)
    feed(coview, [(CLICKS, "u", "b"), (DETAIL_VIEWS, "u", "b"), (CLICKS, "u", "b"),
                  (CLICKS, "v", "b"), (DETAIL_VIEWS, "v", "b"), (CLICKS, "v", "b"),
                  (CLICKS, "w", "b"), (CLICKS, "w", "c"), (CLICKS, "me", "b")])
    assert ranked(coview, "me") == ["b", "c"]


def test_recent_shows_the_session_s_views_newest_first_then_the_popular() -> None:
    recent = Recent(seed=1, size=4)
    feed(recent, [(CLICKS, "x", "g"), (CLICKS, "x", "g"), (CLICKS, "me", "a"),
                  (CLICKS, "me", "b"), (CLICKS, "me", "h"), (CLICKS, "me", "a"),
                  (DETAIL_VIEWS, "me", "c"), (BASKET_ADDS, "me", "b")])
    # c latest, then a (viewed again); b is in the basket, h unavailable; then g.
    assert ranked(recent, "me") == ["c", "a", "g", "d"]


def test_sknn_votes_with_the_most_similar_sessions() -> None:
    sknn = SessionKnn(seed=1, size=3)
    sknn.neighbours = 2
    feed(sknn, [(CLICKS, "u", "a"), (CLICKS, "u", "b"), (CLICKS, "u", "c"),
                (CLICKS, "v", "a"), (CLICKS, "v", "b"), (CLICKS, "v", "d"),
                (CLICKS, "w", "a"), (CLICKS, "w", "e"), (CLICKS, "w", "f"), (CLICKS, "w", "g"),
                (CLICKS, "me", "a"), (CLICKS, "me", "b")])
    # u and v share a and b with me (cosine 2/sqrt(6)); w only a (1/sqrt(8)), left out.
    assert sknn.scores("s", sknn.sessions[("s", "me")]) == pytest.approx(
        {"a": 2 * 2 / 6 ** 0.5, "b": 2 * 2 / 6 ** 0.5, "c": 2 / 6 ** 0.5, "d": 2 / 6 ** 0.5})
    assert ranked(sknn, "me") == ["a", "b", "c"]


def test_random_lists_are_of_available_items() -> None:
    contender = RandomItems(seed=1, size=4)
    feed(contender, [(BASKET_ADDS, "x", "a")])
    lists = [ranked(contender, "x") for _ in range(50)]
    assert all(len(set(items)) == 4 and not {"a", "h"} & set(items) for items in lists)
    assert len({tuple(items) for items in lists}) > 40


@pytest.fixture(scope="module")
def short_run() -> dict[str, Any]:
    return baselines.run(Options(duration_s=90, rate=50, world="returns"))


@pytest.mark.slow
def test_every_contender_plays_the_same_shoppers(short_run: dict[str, Any]) -> None:
    assert short_run["same_shoppers"]
    contenders = short_run["contenders"]
    assert set(contenders) == {"random", "popular", "coview", "recent", "sknn"}
    displays = {c["engine_group"]["decisions"] for c in contenders.values()}
    assert len(displays) == 1 and displays.pop() > 300
    # Different lists, different results; all under the oracle, which is the same for all.
    assert len({c["engine_group"]["ctr"] for c in contenders.values()}) == 5
    for c in contenders.values():
        f = c["engine_group"]
        assert f["expected"] < f["oracle"] and f["ctr_se"] > 0
        assert len(c["by_fifth"]) == 5


@pytest.mark.slow
def test_the_returns_world_s_stated_baseline_is_its_best(short_run: dict[str, Any]) -> None:
    assert short_run["stated_best"] == short_run["best"] == "recent"


@pytest.mark.slow
@pytest.mark.parametrize(("world", "seconds"), [("slots", 90), ("shifting", 120)])
def test_each_world_s_stated_baseline_is_its_best(world: str, seconds: float) -> None:
    """The best of the baselines is the one the world's docstring names. Random lists are
    the control group's (the same shoppers), so the random contender is not run again.
    The item and long-tail worlds need longer runs to tell their best two apart:
    ``python -m bench.baselines --world W`` reports it."""
    result = baselines.run(Options(duration_s=seconds, rate=50, world=world,
                                   contenders=("popular", "coview", "recent", "sknn")))
    assert result["best"] == result["stated_best"]
    control = next(iter(result["contenders"].values()))["control_group"]["ctr"]
    assert result["contenders"][result["best"]]["engine_group"]["ctr"] > 1.5 * control


@pytest.mark.slow
def test_the_report_sets_the_engine_beside_the_baselines(short_run: dict[str, Any]) -> None:
    text = baselines.render(short_run)
    assert text.count("\n") == 2 + 5 + 1 and "control group" in text
    fifth = {"decisions": 10, "ctr": 0.2, "ctr_se": 0.01, "reward": 0.3}
    last = {**fifth, "ctr": 0.17}
    learned = {"status": "ok", "world": "returns", "engine": 0.25, "random": 0.1,
               "oracle": 0.5, "uplift_vs_random": 1.5, "ctr": {"engine": 0.35, "control": 0.07},
               "standard_error": {"ctr": {"engine": 0.01, "control": 0.02},
                                  "reward_per_decision": {"engine": 0.02, "control": 0.03}},
               "by_fifth": [{"engine": fifth, "control": fifth}] * 4
               + [{"engine": last, "control": fifth}]}
    learning = {"status": "ok", "seed": 1, "seconds": 90.0, "rate_events_per_s": 50.0,
                "worlds": {"returns": learned}}
    base = {"seed": 1, "seconds": 90.0, "rate_events_per_s": 50.0,
            "worlds": {"returns": short_run}}
    steps = {"learning": {"command": "learn", "figures": learning},
             "baselines": {"command": "base", "figures": base}}
    table = render_table(steps)
    assert "0.350 ± 0.010 / 0.070 ± 0.020" in table and table.count("`recent` ") == 1
    side = world_tables(steps)
    assert "| engine (through Kafka) | 0.350 ± 0.010 | 0.250 ± 0.020 |" in side
    assert side.count("| baseline `") == 5 and "random control group" in side
    best = short_run["contenders"]["recent"]["engine_group"]["ctr"]
    verdict = world_verdict(learned, short_run)
    assert verdict["best_baseline"] == "recent" and verdict["ratio"] == round(0.35 / best, 3)
    # 0.2 -> 0.17 is a fall of 0.03, beyond its standard error (0.014).
    assert verdict["fall"] == 0.03 and not verdict["no_fall"]
    assert "no fall from the first fifth to the last beyond the standard error | NOT met" in side
    # Not the same seed or length: nothing is set side by side.
    assert world_tables({**steps, "learning": {"command": "learn", "figures": {
        **learning, "seed": 2}}}) == ""


def test_next_item_scores_each_ranking_against_the_session_s_next_view() -> None:
    options = next_item.NextItemOptions(duration_s=100, test_share=0.5, k=3)
    start = 1_000_000
    views = [View("s", "a", start + 10_000, "x", ("y", "z", "q")),  # before the test part
             View("s", "a", start + 60_000, "y", ("q", "x", "z")),  # next: x, a return, 2nd
             View("s", "a", start + 70_000, "x", ("q", "r", "s")),  # next: z, missed
             View("s", "a", start + 80_000, "z", ()),  # the last view: nothing follows
             View("s", "b", start + 90_000, "q", ("w", "v", "q"))]  # nothing follows
    scored = next_item.score(start, views, options)
    assert scored == {"cases": 2, "hit_rate": 0.5, "mrr": 0.25, "hits": 1,
                      "next_is_a_return": 1, "hits_on_returns": 1}


@pytest.mark.slow
def test_next_item_plays_the_same_sessions_for_every_ranker() -> None:
    options = next_item.NextItemOptions(world="returns", duration_s=60, test_share=0.7)
    start, views = next_item.play(lambda: next_item.sknn_ranker(options), options)
    scored = next_item.score(start, views, options)
    assert scored["cases"] > 50 and 0 < scored["hits_on_returns"] <= scored["hits"]
    assert all(len(view.ranked) == 20 for view in views)
    # A ranker that never answers faces the same sessions (the engine's arms are others).
    _, again = next_item.play(lambda: lambda records, now: {}, options)
    assert [v[:4] for v in again] == [v[:4] for v in views]
    assert next_item.score(start, again, options)["hits"] == 0
