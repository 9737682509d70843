"""The item world's variants (returns, longtail, slots, shifting): the same shoppers for
every contender, and each world's own assumption about shoppers.

Simulated time only (``run_simulated``): nothing sleeps and nothing talks to Kafka.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from app.contract.topics import BASKET_ADDS, CLICKS, SERVED
from app.sim.common import SimClock, run_simulated
from app.sim.items import ItemShopper, ItemWorld
from app.sim.longtail import LongTailConfig, LongTailWorld
from app.sim.returns import ReturnsConfig, ReturnsWorld
from app.sim.shifting import ShiftingConfig, ShiftingWorld
from app.sim.shoppers import ORGANIC, Outgoing
from app.sim.slots import SlotsConfig, SlotsWorld
from app.sim.worlds import ITEM_WORLDS, WORLDS, best_baseline, build_world

START_MS = 1_800_000_000_000
Ranker = Callable[[ItemWorld, dict[str, Any]], list[str]]


def play(name: str, seconds: float, ranker: Ranker | None = None, seed: int = 1,
         rate: float = 40.0) -> tuple[ItemWorld, list[Outgoing]]:
    clock = SimClock(START_MS)
    world = build_world(name, seed, clock, sites=("shop-1",), rate=rate, control_share=0.2,
                        window_ms=20_000, rewards={"click": 1.0}, arms={}, run_tag=name)
    assert isinstance(world, ItemWorld)
    emitted: list[Outgoing] = []
    ids = itertools.count()

    def respond(records: list[Outgoing]) -> None:
        emitted.extend(records)
        for record in records if ranker else ():
            assert ranker is not None
            items = ranker(world, record.value)
            world.on_ranking({"ranking_id": f"rk-{next(ids)}", "site_id": "shop-1",
                              "session_id": record.value["session_id"], "arm": "test",
                              "propensity": 1.0,
                              "items": [{"item_id": item, "score": 1.0} for item in items]})

    run_simulated(world, clock, START_MS + int(seconds * 1000), respond)
    return world, emitted


def catalog_head(world: ItemWorld, record: dict[str, Any]) -> list[str]:
    return [i.item_id for i in world.catalogs["shop-1"] if i.available][:6]


def page_first(world: ItemWorld, record: dict[str, Any]) -> list[str]:
    """The page's own item, then random items."""
    shopper = world._shoppers.get(("shop-1", record["session_id"]))
    own = [world.models["shop-1"].items[shopper.current].item_id] \
        if isinstance(shopper, ItemShopper) and shopper.current >= 0 else []
    return own + [i.item_id for i in random.Random(len(world.settled)).sample(
        world.catalogs["shop-1"], 5)]


def organic_path(records: list[Outgoing]) -> list[tuple[str, str, int, str]]:
    return [(r.topic, r.value["session_id"], r.value["ts"], r.value["item_id"])
            for r in records if r.value.get("source") == ORGANIC and r.topic != BASKET_ADDS]


def test_every_world_is_built_by_name_with_a_stated_best_baseline() -> None:
    assert set(ITEM_WORLDS) | {"arms"} == set(WORLDS) and WORLDS[0] == "items"
    assert {w: best_baseline(w) for w in ITEM_WORLDS} == {
        "items": "sknn", "returns": "recent", "longtail": "sknn", "slots": "coview",
        "shifting": "popular"}
    with pytest.raises(ValueError, match="no item baseline"):
        best_baseline("arms")


@pytest.mark.parametrize(("name", "seconds"), [("returns", 60), ("longtail", 30),
                                                ("slots", 60), ("shifting", 200)])
@pytest.mark.slow
def test_every_contender_faces_the_same_shoppers(name: str, seconds: float) -> None:
    """Whatever is shown, the same sessions browse the same items at the same times and see
    blocks at the same moments (the shifting world across a season change)."""
    runs = [play(name, seconds, ranker, rate=20.0 if name == "shifting" else 40.0)
            for ranker in (catalog_head, page_first)]
    paths = [organic_path(records) for _, records in runs]
    assert len(paths[0]) > 300 and paths[0] == paths[1]
    blocks = [[(r.value["session_id"], r.value["ts"]) for r in records if r.topic == SERVED]
              for _, records in runs]
    assert blocks[0] == blocks[1]
    clicks = [[r.value["item_id"] for r in records if r.topic == CLICKS
               and r.value.get("served_id")] for _, records in runs]
    assert clicks[0] != clicks[1]


def test_returns_shoppers_go_back_and_click_what_they_viewed() -> None:
    world, records = play("returns", 120, page_first)
    assert isinstance(world, ReturnsWorld) and isinstance(world.config, ReturnsConfig)
    returns = views = 0
    for _, pages in itertools.groupby(sorted(organic_path(records), key=lambda p: p[1]),
                                      key=lambda p: p[1]):
        items = [p[3] for p in pages if p[0] == CLICKS]
        views += len(items) - 1
        returns += sum(item in items[:n] for n, item in enumerate(items) if n)
    assert 0.15 < returns / views < 0.45
    # The page's own item is clicked from the block, and it draws most of the clicks.
    shown = {r.value["event_id"]: r.value["items"] for r in records if r.topic == SERVED}
    positions = Counter(shown[r.value["served_id"]].index(r.value["item_id"])
                        for r in records if r.topic == CLICKS and r.value.get("served_id"))
    assert positions[0] > sum(positions.values()) / 2
    shopper = next(s for s in world._shoppers.values()
                   if isinstance(s, ItemShopper) and len(set(s.viewed)) >= 3)
    latest, older = shopper.viewed[-1], next(n for n in reversed(shopper.viewed)
                                             if n != shopper.viewed[-1])
    assert world.attraction(shopper, latest) > world.attraction(shopper, older) \
        >= shopper.attraction[older]
    assert world.attraction(shopper, latest) <= world.config.attraction_max


@pytest.mark.slow
def test_longtail_has_thousands_of_items_viewed_a_handful_of_times() -> None:
    world, records = play("longtail", 60, rate=50.0)
    assert isinstance(world, LongTailWorld) and isinstance(world.config, LongTailConfig)
    model = world.models["shop-1"]
    assert len(model.items) >= 2_000 and model.near == ()
    views = Counter(r.value["item_id"] for r in records
                    if r.topic == CLICKS and r.value.get("source") == ORGANIC)
    assert sorted(views.values())[len(views) // 2] <= 3
    sessions = Counter(r.value["session_id"] for r in records
                       if r.topic == CLICKS and r.value.get("source") == ORGANIC)
    assert sum(sessions.values()) / len(sessions) < 4.5
    # A session stays within its mission, a kind of 20 items finer than the catalog's
    # categories (departments of 200).
    kinds: dict[str, set[int]] = {r.value["session_id"]: set() for r in records
                                  if r.topic == CLICKS}
    index = model.index
    for r in records:
        if r.topic == CLICKS and r.value.get("source") == ORGANIC:
            kinds[r.value["session_id"]].add(index[r.value["item_id"]] // 20)
    long = [k for s, k in kinds.items() if sessions[s] >= 4]
    assert long and sum(len(k) <= 2 for k in long) > 0.8 * len(long)
    assert len({i.category for i in model.items}) == 10


def test_slots_show_one_item_whose_pull_depends_on_the_page() -> None:
    world, records = play("slots", 60, catalog_head)
    assert isinstance(world, SlotsWorld) and isinstance(world.config, SlotsConfig)
    assert {len(r.value["items"]) for r in records if r.topic == SERVED} == {1}
    shopper = next(s for s in world._shoppers.values()
                   if isinstance(s, ItemShopper) and s.current >= 0)
    model = world.models["shop-1"]
    n = shopper.by_fit[0]
    pulls = set()
    for page in model.available[:20]:
        shopper.current = page
        pulls.add(round(world.attraction(shopper, n), 6) if page != n else None)
    assert len(pulls) > 10
    shopper.current = n
    assert world.attraction(shopper, n) == 0.0 and world.best_list(shopper) != [
        model.items[n].item_id]


def test_shifting_moves_every_live_shopper_to_the_new_season() -> None:
    world, _ = play("shifting", 149, rate=20.0)
    assert isinstance(world, ShiftingWorld) and isinstance(world.config, ShiftingConfig)
    c = world.config
    first, second = set(world.hot("shop-1", 0)), set(world.hot("shop-1", 1))
    assert len(first) == len(second) == c.hot_items and first != second
    shopper = next(s for s in world._shoppers.values() if isinstance(s, ItemShopper))
    assert [round(f - o, 9) for f, o in zip(shopper.fit, shopper.own_fit, strict=True)] == [
        c.hot_boost if n in first else 0.0 for n in range(len(shopper.fit))]
    world._follow_season(shopper, world.start_ms + c.season_ms)
    moved = [round(f - o, 9) for f, o in zip(shopper.fit, shopper.own_fit, strict=True)]
    assert moved == [c.hot_boost if n in second else 0.0 for n in range(len(moved))]
    assert shopper.by_fit[0] in second or shopper.fit[shopper.by_fit[0]] > max(
        shopper.fit[n] for n in second)
