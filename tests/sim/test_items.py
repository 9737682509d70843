"""The item world: seeds, the same shoppers for every contender, position bias, the oracle,
organic views, and rewards exactly as the contract's join counts them.

Simulated time only (``run_simulated``): nothing sleeps and nothing talks to Kafka.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from app.contract.codec import EncodedStore
from app.contract.specs import validation_error
from app.contract.topics import (
    BASKET_ADDS,
    CATALOG,
    CLICKS,
    DETAIL_VIEWS,
    REACTION_TYPE_BY_TOPIC,
    SERVED,
)
from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.events import Reaction, Served
from app.core.policy import ContextualBandit
from app.core.store import MemoryStore
from app.settings import DEFAULT_ARMS, Settings
from app.sim.common import SimClock, run_simulated
from app.sim.items import (
    ItemConfig,
    ItemShopper,
    ItemWorld,
    pick_position,
    position_bias,
)
from app.sim.shoppers import ORGANIC, Outgoing

START_MS = 1_800_000_000_000
REACTIONS = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)
# A contender: given the world and one session's latest record, the items to rank for it.
Ranker = Callable[[ItemWorld, dict[str, Any]], list[str]]


def play(seed: int = 1, seconds: float = 120, ranker: Ranker | None = None,
         **config: Any) -> tuple[ItemWorld, list[Outgoing]]:
    """An item world run for ``seconds`` of simulated time; ``ranker`` answers every event
    of a session with a ranking, as an engine does."""
    clock = SimClock(START_MS)
    world = ItemWorld(ItemConfig(**{"rate": 40.0, **config}), seed, clock)
    emitted = world.catalog_records()
    ids = itertools.count()

    def respond(records: list[Outgoing]) -> None:
        emitted.extend(records)
        if ranker is None:
            return
        for record in records:
            items = ranker(world, record.value)
            world.on_ranking({"ranking_id": f"rk-{next(ids)}", "site_id": record.value["site_id"],
                              "session_id": record.value["session_id"], "arm": "test",
                              "propensity": 1.0,
                              "items": [{"item_id": item, "score": 1.0} for item in items]})

    run_simulated(world, clock, START_MS + int(seconds * 1000), respond)
    return world, emitted


def catalog_head(world: ItemWorld, record: dict[str, Any]) -> list[str]:
    """Always the same list: the first available items of the catalog."""
    return [i.item_id for i in world.catalogs[record["site_id"]][:8] if i.available][:6]


def random_items(rng: random.Random) -> Ranker:
    def rank(world: ItemWorld, record: dict[str, Any]) -> list[str]:
        return [i.item_id for i in rng.sample(world.catalogs[record["site_id"]], 6)]
    return rank


def recently_viewed(world: ItemWorld, record: dict[str, Any]) -> list[str]:
    """The session's own page items (the current one first), filled with the catalog's
    head: organic reactions to them land inside displays' windows."""
    shopper = world._shoppers.get((record["site_id"], record["session_id"]))
    items = world.models[record["site_id"]].items
    own = [items[shopper.current].item_id] if isinstance(shopper, ItemShopper) \
        and shopper.current >= 0 else []
    return (own + catalog_head(world, record))[:6]


def of(records: list[Outgoing], *topics: str) -> list[dict[str, Any]]:
    return [r.value for r in records if r.topic in topics]


def shoppers(world: ItemWorld) -> list[ItemShopper]:
    return [s for s in world._shoppers.values() if isinstance(s, ItemShopper)]


# -- records, seeds and the same shoppers ---------------------------------------------------


@pytest.mark.slow
def test_records_follow_the_contract_in_event_time_order() -> None:
    world, records = play(seconds=60, ranker=catalog_head)
    catalog = [r for r in records if r.topic == CATALOG]
    assert len(catalog) == 300 and sum(not r.value["available"] for r in catalog) > 0
    events = [r for r in records if r.topic != CATALOG]
    assert {r.topic for r in events} == {SERVED, *REACTIONS}
    for record in records:
        assert validation_error(record.topic, record.value) is None, record
    times = [r.value["ts"] for r in events]
    assert times == sorted(times)
    assert len({r.value["event_id"] for r in events}) == len(events)


@pytest.mark.slow
def test_the_same_seed_replays_the_run_and_another_seed_does_not() -> None:
    assert play(5, 40, catalog_head)[1] == play(5, 40, catalog_head)[1]
    assert play(5, 40, catalog_head)[1] != play(6, 40, catalog_head)[1]


def organic_path(records: list[Outgoing]) -> list[tuple[str, str, int, str]]:
    return [(r.topic, r.value["session_id"], r.value["ts"], r.value["item_id"])
            for r in records if r.value.get("source") == ORGANIC and r.topic != BASKET_ADDS]


@pytest.mark.slow
def test_every_contender_faces_the_same_shoppers_with_the_same_draws() -> None:
    """Whatever is shown, the same sessions browse the same items at the same times and
    see blocks at the same moments; control sessions see and do exactly the same."""
    runs = [play(2, 120, ranker) for ranker in
            (catalog_head, random_items(random.Random(1)), recently_viewed)]
    paths = [organic_path(records) for _, records in runs]
    assert len(paths[0]) > 1_000 and all(path == paths[0] for path in paths)
    blocks = [[(v["session_id"], v["ts"]) for v in of(records, SERVED)] for _, records in runs]
    assert all(b == blocks[0] for b in blocks)
    # What was shown differed, and so did the reactions to it.
    shown = [[v["items"] for v in of(records, SERVED)] for _, records in runs]
    assert len({str(s) for s in shown}) == len(runs)

    def control(world: ItemWorld, records: list[Outgoing]) -> list[tuple[Any, ...]]:
        sessions = {f"{world.config.run_tag}-s{n}" for n in range(1, world.counts["sessions"] + 1)}
        served = {v["event_id"]: v for v in of(records, SERVED)}
        control_ids = {v["session_id"] for v in served.values() if v.get("arm") == "control"}
        assert control_ids and control_ids <= sessions
        return [(r.topic, r.value["session_id"], r.value["ts"], r.value.get("item_id"),
                 tuple(r.value.get("items", ()))) for r in records
                if r.topic != CATALOG and r.value["session_id"] in control_ids]

    controls = [control(world, records) for world, records in runs]
    assert all(c == controls[0] for c in controls)
    tallies = [world.summary()["reward_per_decision"]["control"] for world, _ in runs]
    assert len(set(tallies)) == 1


@pytest.mark.slow
def test_the_event_rate_is_about_the_requested_one() -> None:
    world, _ = play(seconds=300, ranker=catalog_head, rate=40.0)
    assert 300 * 40 * 0.8 < world.events_produced() < 300 * 40 * 1.2


@pytest.mark.slow
def test_sessions_end() -> None:
    world, _ = play(seconds=600, rate=20.0)
    assert 0 < world.counts["sessions_ended"] < world.counts["sessions"]
    assert len(world._shoppers) == world.counts["sessions"] - world.counts["sessions_ended"]


# -- the click model, the oracle ------------------------------------------------------------


def test_position_bias_falls_with_the_position() -> None:
    biases = [position_bias(p) for p in range(10)]
    assert biases[0] == 1.0 and all(a > b > 0 for a, b in itertools.pairwise(biases))
    # The same item lower down is less likely clicked, and the drawn clicks say so too.
    world, _ = play(seconds=20)
    shopper = max(shoppers(world), key=lambda s: s.attraction[s.by_fit[1]])
    item = world.models[shopper.site_id].items[shopper.by_fit[1]].item_id
    chances = [world.click_chances(shopper, [item] + [""] * 5)[0]]
    chances += [world.click_chances(shopper, [""] * p + [item])[p] for p in range(1, 6)]
    assert all(a > b for a, b in itertools.pairwise(chances))
    rng = random.Random(3)
    clicks: Counter[int] = Counter()
    for _ in range(50_000):
        position = pick_position(rng.random(), [0.1 * position_bias(p) for p in range(6)])
        clicks[position if position is not None else -1] += 1
    assert all(clicks[a] > clicks[b] for a, b in itertools.pairwise(range(6)))
    assert clicks[5] / clicks[0] == pytest.approx(position_bias(5), rel=0.1)


@pytest.mark.slow
def test_clicks_in_a_run_fall_with_the_position() -> None:
    """Every block shows the same six items in a random order; positions higher up get
    more of their clicks."""
    rng = random.Random(4)

    def shuffled(world: ItemWorld, record: dict[str, Any]) -> list[str]:
        return rng.sample(catalog_head(world, record), 6)

    _, records = play(seconds=300, ranker=shuffled, rate=60.0)
    served = {v["event_id"]: v["items"] for v in of(records, SERVED)}
    positions = Counter(served[v["served_id"]].index(v["item_id"])
                        for v in of(records, CLICKS) if "served_id" in v)
    assert sum(positions.values()) > 150
    assert positions[0] > positions[2] > positions[5]


def test_the_oracle_is_at_least_any_list() -> None:
    world, _ = play(seconds=60, ranker=catalog_head)
    rng = random.Random(5)
    checked = 0
    for shopper in shoppers(world)[:40]:
        best = world.best_list(shopper)
        oracle = world.expected_reward(shopper, best)
        assert len(best) == 6 and oracle > 0
        items = [i.item_id for i in world.catalogs[shopper.site_id]]
        ranked = [items[n] for n in shopper.by_fit]
        lists = [rng.sample(items, 6) for _ in range(30)]
        lists += [rng.sample(best, 6) for _ in range(10)]  # the best items, reordered
        lists += [ranked[:6], ranked[1:7], best[::-1], [best[0]] * 6, best[:3] + ranked[10:13]]
        for shown in lists:
            assert world.expected_reward(shopper, shown) <= oracle + 1e-12, shown
            checked += 1
        assert world.expected_reward(shopper, best[::-1]) < oracle  # order matters
    assert checked > 1_000


def test_the_displays_oracle_and_expected_reward_are_the_worlds() -> None:
    world, _ = play(seconds=120, ranker=random_items(random.Random(6)))
    engine = [r for r in world.settled if r.group == "engine"]
    assert len(engine) > 200
    assert all(0 <= r.expected <= r.oracle for r in engine)
    summary = world.summary()["reward_per_decision"]
    assert summary["oracle"] > 3 * summary["engine_expected"]


@pytest.mark.slow
def test_realised_rewards_match_their_expectation() -> None:
    """Over many displays the reward the reactions earn (organic credit aside) is the
    expected reward the model computes for the lists shown."""
    world, _ = play(seed=7, seconds=300, ranker=catalog_head, rate=60.0, control_share=0.0)
    engine = [r for r in world.settled if r.group == "engine"]
    caused = sum(r.reward - r.organic for r in engine) / len(engine)
    expected = sum(r.expected for r in engine) / len(engine)
    se = world.summary()["standard_error"]["reward_per_decision"]["engine"]
    assert len(engine) > 2_000 and abs(caused - expected) < 4 * se, (caused, expected, se)


def test_a_config_whose_clicks_are_no_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="attraction_max"):
        ItemConfig(attraction_max=0.5)


# -- organic views and reactions to displays ------------------------------------------------


@pytest.mark.slow
def test_organic_views_are_marked_and_reactions_to_displays_name_them() -> None:
    _, records = play(seconds=120, ranker=catalog_head)
    served = {v["event_id"]: v for v in of(records, SERVED)}
    reactions = of(records, *REACTIONS)
    organic = [v for v in reactions if v.get("source") == ORGANIC]
    answers = [v for v in reactions if "served_id" in v]
    assert organic and answers and len(organic) + len(answers) == len(reactions)
    assert not any("served_id" in v for v in organic)
    assert not any("source" in v for v in answers)
    for v in answers:
        display = served[v["served_id"]]
        assert v["item_id"] in display["items"] and v["ts"] >= display["ts"]
    # Organic browsing is a click and a detail view per page, on the same item.
    pages = Counter((v["session_id"], v["item_id"]) for v in organic if v["ts"])
    assert len(of(records, CLICKS)) > 0 and len(pages) > 100
    # Some reactions come after the window closed, as in the arm world.
    late = [v for v in answers if v["ts"] - served[v["served_id"]]["ts"] > 20_000]
    assert late


@pytest.mark.slow
def test_control_and_fallback_blocks_are_random_available_items() -> None:
    world, records = play(seconds=120, control_share=0.3)  # no ranker: engine sessions fall back
    served = of(records, SERVED)
    arms = Counter(v["arm"] for v in served)
    assert set(arms) == {"control", "fallback"} and "ranking_id" not in str(served)
    available = {i.item_id for i in world.catalogs["shop-1"] if i.available}
    assert all(set(v["items"]) <= available and len(set(v["items"])) == 6 for v in served)
    assert all(v["propensity"] == 1 / len(DEFAULT_ARMS) for v in served)
    shown = Counter(item for v in served for item in v["items"])
    assert len(shown) > 0.9 * len(available)  # uniformly spread, not a fixed few
    summary = world.summary()
    assert summary["decisions"]["engine"] == 0 and summary["decisions"]["fallback"] > 0
    assert summary["arm_share"]["control"] == {"control": 1.0}


# -- rewards as the contract counts them ----------------------------------------------------


class Policies:
    def __init__(self) -> None:
        self.policy = ContextualBandit(Settings().bandit.arms, seed=1)

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        return self.policy, 0


def engine_rewards(records: list[Outgoing]) -> dict[str, float]:
    """The real join (app.core.engine) over the emitted records, in event-time order, then
    far ahead so every display closes: served_id -> reward."""
    engine = Engine(Settings(), Policies(), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    rewards: dict[str, float] = {}

    def handle(event: Served | Reaction) -> None:
        for decision in engine.handle(store, event).rewards:
            assert decision.served_id not in rewards, "a display closed twice"
            rewards[decision.served_id] = decision.reward

    for record in records:
        if record.topic == SERVED:
            handle(Served.from_value(record.value))
        elif record.topic in REACTION_TYPE_BY_TOPIC:
            handle(Reaction.from_value(REACTION_TYPE_BY_TOPIC[record.topic], record.value))
    end = records[-1].value["ts"] + 3_600_000
    handle(Served("end-d", "end", "end", end, ("x",)))
    for kind in ("click", "detail_view", "basket_add"):
        handle(Reaction(f"end-{kind}", kind, "end", "end", end, "x"))
    return rewards


@pytest.mark.slow
def test_every_settled_reward_is_the_contracts_join() -> None:
    """The world's reward per display is what the engine's own join computes from the same
    records: organic views of displayed items credit neither."""
    world, records = play(seed=8, seconds=100, ranker=recently_viewed)
    joined = engine_rewards([r for r in records if r.topic != CATALOG])
    settled = {r.served_id: r.reward for r in world.settled}
    assert len(settled) > 500 and settled.keys() <= joined.keys()
    mismatched = {k: (v, joined[k]) for k, v in settled.items() if joined[k] != v}
    assert not mismatched
    assert all(r.organic == 0 for r in world.settled)  # never credited (source: organic)
    assert sum(r.reward == 3.0 for r in world.settled) >= 3  # basket adds after clicks
