"""The simulator's pure model: hidden table, oracle, rewards, control group, delays, seeds.

Time is a fake clock moved by the tests; nothing sleeps and nothing talks to Kafka.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any

import pytest

from app.contract.specs import validation_error
from app.contract.topics import BASKET_ADDS, CATALOG, CLICKS, DETAIL_VIEWS, SERVED
from app.core.default_rankings import segment_key
from app.core.events import Reaction, Served
from app.core.policy import ContextualBandit
from app.sim.arm_table import HiddenModel, SimConfig, Simulator, all_contexts, context_weight
from app.sim.figures import GROUPS, SUMMARY_FIELDS
from app.sim.shoppers import CHAIN, Delays, Outgoing, Shopper, window_shares

START_MS = 1_800_000_000_000
WINDOW_MS = 20_000

# The arm-table world's hidden table is drawn over the arms the engine has; these tests use
# the five candidate-list arms it was designed with (its benchmark runs them too).
ARM_TABLE_ARMS = ("category1", "category2", "bestsellers", "trending", "similar")


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


def simulator(seed: int = 1, **config: Any) -> tuple[Simulator, Clock]:
    clock = Clock()
    options = {"sites": ("shop-a", "shop-b"), "rate": 40.0,
               "arms": {site: ARM_TABLE_ARMS for site in ("shop-a", "shop-b")}, **config}
    return Simulator(SimConfig(**options), random.Random(seed), clock), clock


def run_for(sim: Simulator, clock: Clock, seconds: float, step_ms: int = 100,
            on_step: Any = None) -> list[Outgoing]:
    """Advance the fake clock in steps, collecting what the simulator emits."""
    out: list[Outgoing] = []
    for _ in range(int(seconds * 1000 / step_ms)):
        clock.now += step_ms
        records = sim.advance()
        out += records
        if on_step is not None:
            on_step(records)
    return out


def of(records: list[Outgoing], topic: str) -> list[dict[str, Any]]:
    return [r.value for r in records if r.topic == topic]


def weighted_mean(model: HiddenModel, value: Any) -> float:
    return sum(context_weight(c) * value(c) for c in all_contexts())


# -- the hidden model ---------------------------------------------------------------------


def test_window_shares_match_the_sampled_delays():
    delays, rng = Delays(), random.Random(7)
    inside = Counter()
    samples = 40_000
    for _ in range(samples):
        click = delays.click(rng)
        view = click + delays.view(rng)
        basket = view + delays.basket(rng)
        for kind, at in zip(CHAIN, (click, view, basket), strict=True):
            inside[kind] += at <= WINDOW_MS
    shares = window_shares(delays, WINDOW_MS)
    for kind, share in zip(CHAIN, shares, strict=True):
        assert inside[kind] / samples == pytest.approx(share, abs=0.01), kind
    # Realistic, and what makes the window matter: a few clicks and many basket adds late.
    assert 0.01 < 1 - shares[0] < 0.1 and 0.15 < 1 - shares[2] < 0.45


def test_expected_reward_is_the_best_reaction_inside_the_window():
    model = HiddenModel(arms=("a", "b"), base={"a": 0.2, "b": 0.1},
                        lift={("b", "device", "desktop"): 0.5}, p_view=0.5,
                        p_buy={"a": 0.4, "b": 0.0}, shares=(0.9, 0.8, 0.5),
                        rewards={"click": 1.0, "detail_view": 2.0, "basket_add": 3.0})
    mobile, desktop = {"device": "mobile"}, {"device": "desktop"}
    # click 1, a view raises it to 2, a basket add to 3; each only inside the window.
    # Mobile buys 0.8 times as often: P(buy | view) = 0.4 * 0.8.
    assert model.expected_reward("a", mobile) == pytest.approx(
        0.2 * 0.9 * 1 + 0.2 * 0.5 * 0.8 * 1 + 0.2 * 0.5 * 0.32 * 0.5 * 1)
    assert model.expected_reward("b", desktop) == pytest.approx(0.6 * 0.9 + 0.6 * 0.5 * 0.8)
    assert model.best_arm(mobile) == "a" and model.best_arm(desktop) == "b"
    assert model.oracle(desktop) == model.expected_reward("b", desktop)


def test_the_hidden_table_has_context_dependent_winners_with_big_gaps():
    for seed in range(5):
        model = HiddenModel.draw(random.Random(seed), ARM_TABLE_ARMS,
                                 window_shares(Delays(), WINDOW_MS))
        winners = {model.best_arm(c) for c in all_contexts()}
        assert len(winners) >= 2, seed  # a context-free bandit cannot be optimal
        oracle = weighted_mean(model, model.oracle)
        uniform = weighted_mean(model, lambda c, m=model: sum(
            m.expected_reward(a, c) for a in ARM_TABLE_ARMS) / len(ARM_TABLE_ARMS))
        assert oracle > 1.6 * uniform, (seed, oracle, uniform)


def test_the_engines_policy_learns_the_hidden_table_in_a_few_minutes_of_decisions():
    """app.core.policy's bandit, fed this model's rewards 25 s late as the worker does, beats
    uniform choice clearly after the number of decisions one site gets in a 5-minute demo."""
    rng = random.Random(3)
    model = HiddenModel.draw(rng, ARM_TABLE_ARMS, window_shares(Delays(), WINDOW_MS))
    policy = ContextualBandit(ARM_TABLE_ARMS, epsilon=0.1, seed=1)
    contexts = all_contexts()
    weights = [context_weight(c) for c in contexts]
    per_s, pending = 6, deque()
    chosen = uniform = 0.0
    for step in range(240 * per_s):
        context = rng.choices(contexts, weights)[0]
        arm, _ = policy.choose(context)
        click, _, basket = model.chain_probabilities(arm, context)
        draw = rng.random()
        reward = 3.0 if draw < basket * model.shares[2] else float(draw < click * model.shares[0])
        pending.append((step + 25 * per_s, arm, context, reward))
        while pending[0][0] <= step:
            _, done_arm, done_context, done_reward = pending.popleft()
            policy.update(done_arm, done_context, done_reward)
        if step >= 120 * per_s:  # the second two minutes
            chosen += model.expected_reward(arm, context)
            uniform += sum(model.expected_reward(a, context)
                           for a in ARM_TABLE_ARMS) / len(ARM_TABLE_ARMS)
    assert chosen > 1.3 * uniform, (chosen, uniform)


# -- sessions, displays and reactions ------------------------------------------------------


def test_records_follow_the_contract_in_event_time_order():
    sim, clock = simulator()
    catalog = sim.catalog_records()
    assert {r.topic for r in catalog} == {CATALOG}
    for record in catalog:
        assert validation_error(CATALOG, record.value) is None
        assert record.key == f"{record.value['site_id']}:{record.value['item_id']}"
    records = run_for(sim, clock, 60)
    assert {r.topic for r in records} == {SERVED, CLICKS, DETAIL_VIEWS, BASKET_ADDS}
    for record in records:
        assert validation_error(record.topic, record.value) is None, record
        assert record.key == record.value["session_id"]
    times = [r.value["ts"] for r in records]
    assert times == sorted(times) and times[-1] <= clock.now
    assert len({r.value["event_id"] for r in records}) == len(records)


def test_reactions_answer_displays_with_delays_some_beyond_the_window():
    sim, clock = simulator(no_served_id_share=0.0)  # every reaction names its display
    records = run_for(sim, clock, 120)
    served = {v["event_id"]: v for v in of(records, SERVED)}
    delays = [r.value["ts"] - served[r.value["served_id"]]["ts"] for r in records
              if "served_id" in r.value]
    assert delays and min(delays) >= 0
    late = sum(d > WINDOW_MS for d in delays)
    assert 0 < late < 0.25 * len(delays)
    assert late == sim.counts["reactions_beyond_window"]
    # The reacted item was displayed; browsing (no served_id) happens too.
    for r in records:
        if "served_id" in r.value:
            assert r.value["item_id"] in served[r.value["served_id"]]["items"]
    assert sim.counts["browsing"] > 0
    assert any("served_id" not in v for v in of(records, CLICKS))


def test_sessions_end():
    sim, clock = simulator(rate=20.0)
    run_for(sim, clock, 240)
    assert 0 < sim.counts["sessions_ended"] < sim.counts["sessions"]
    assert len(sim._shoppers) == sim.counts["sessions"] - sim.counts["sessions_ended"]


@pytest.mark.slow
def test_the_event_rate_is_about_the_requested_one_from_the_start():
    sim, clock = simulator(rate=40.0)
    run_for(sim, clock, 30)
    first = sim.events_produced()
    run_for(sim, clock, 90)
    assert 30 * 40 * 0.7 < first < 30 * 40 * 1.3
    assert 90 * 40 * 0.8 < sim.events_produced() - first < 90 * 40 * 1.2


def test_the_control_group_sees_uniformly_random_arms_without_rankings():
    sim, clock = simulator(seed=2, control_share=0.3)
    records = run_for(sim, clock, 120)
    assert sim.counts["sessions_control"] / sim.counts["sessions"] == pytest.approx(0.3, abs=0.07)
    control = {s for (_, s), shopper in sim._shoppers.items() if shopper.group == "control"}
    shown = [v for v in of(records, SERVED) if v["session_id"] in control]
    assert shown and all("ranking_id" not in v and v["propensity"] == 1 / 5 for v in shown)
    arms = Counter(v["arm"] for v in shown)
    assert set(arms) == set(ARM_TABLE_ARMS) and min(arms.values()) > 0.1 * len(shown)


def test_without_rankings_engine_sessions_fall_back_and_are_counted_apart():
    sim, clock = simulator(control_share=0.0)
    run_for(sim, clock, 60)
    summary = sim.summary()
    assert summary["decisions"]["engine"] == 0 and summary["decisions"]["control"] == 0
    assert summary["decisions"]["fallback"] > 0
    assert summary["reward_per_decision"]["engine"] is None


def ranking(site: str, session: str, ranking_id: str, arm: str, items: list[str],
            segment: str | None = None) -> dict[str, Any]:
    value = {"ranking_id": ranking_id, "site_id": site, "session_id": session, "ts": START_MS,
             "arm": arm, "propensity": 0.5, "model_version": "3", "context": {},
             "items": [{"item_id": item, "score": 1.0} for item in items]}
    if segment is not None:
        value["segment"] = segment
    return value


def test_engine_sessions_show_their_ranking_else_the_segment_default_else_the_site_default():
    sim, clock = simulator(control_share=0.0, sites=("shop-a",))
    items = [i.item_id for i in sim.catalogs["shop-a"][:8]]
    sim.on_ranking(ranking("shop-a", "*", "default:site", "trending", items, segment=""))
    first = of(run_for(sim, clock, 1), SERVED)
    assert first and all(v["ranking_id"] == "default:site" and v["arm"] == "trending"
                         and v["items"] == items[:6] for v in first)
    shopper = next(s for s in sim._shoppers.values() if s.displays and s.pages_left)
    segment = segment_key(shopper.context)
    sim.on_ranking(ranking("shop-a", "*", "default:seg", "similar", items, segment=segment))
    sim.on_ranking(ranking("shop-a", shopper.session_id, "rk-1", "category2", items[2:]))
    later = of(run_for(sim, clock, 60), SERVED)
    own = [v for v in later if v["session_id"] == shopper.session_id]
    assert own and all(v["ranking_id"] == "rk-1" and v["items"] == items[2:8] for v in own)
    others = Counter((segment_key(v["context"]) == segment, v["ranking_id"]) for v in later
                     if v["session_id"] != shopper.session_id)
    assert set(others) == {(True, "default:seg"), (False, "default:site")}


def test_rankings_of_unknown_sessions_are_ignored():
    sim, clock = simulator()
    sim.on_ranking(ranking("shop-a", "someone-else", "rk-x", "trending", ["x"]))
    assert sim._session_rankings == {} and sim.counts["rankings_read"] == 1


# -- rewards and the summary ---------------------------------------------------------------


def display(event_id: str, ts: int, items: tuple[str, ...]) -> Served:
    return Served(event_id, "shop-a", "s1", ts, items)


def reaction(kind: str, ts: int, item: str, served_id: str | None) -> Reaction:
    return Reaction(f"r-{kind}-{ts}", kind, "shop-a", "s1", ts, item, served_id)


def test_the_reward_of_a_display_follows_the_contracts_attribution():
    sim, _ = simulator()
    shopper = Shopper("shop-a", "s1", {}, "engine", 0)
    first, second = display("d1", 1_000, ("i1", "i2")), display("d2", 5_000, ("i2", "i3"))
    shopper.displays = [first, second]
    shopper.reactions = [
        reaction("click", 2_000, "i1", "d1"),  # d1 by served_id: 1
        reaction("basket_add", 1_000 + WINDOW_MS + 1, "i1", "d1"),  # beyond d1's window
        reaction("detail_view", 6_000, "i2", None),  # no served_id: the latest (d2) wins
        reaction("basket_add", 7_000, "i3", "d2"),  # 3
    ]
    assert sim.reward_of(first, shopper) == 1.0
    assert sim.reward_of(second, shopper) == 3.0
    shopper.reactions = [reaction("detail_view", 3_000, "i2", None)]  # before d2: d1's
    assert sim.reward_of(first, shopper) == 1.0 and sim.reward_of(second, shopper) == 0.0


def test_the_summary_has_its_fields_and_its_counts_add_up():
    sim, clock = simulator(seed=4)
    items = {site: [i.item_id for i in catalog[:10]] for site, catalog in sim.catalogs.items()}

    def engine_answers(records: list[Outgoing]) -> None:
        # A stand-in engine: a ranking of one fixed arm after every event of a session.
        for r in records:
            site, session = r.value["site_id"], r.value["session_id"]
            sim.on_ranking(ranking(site, session, f"rk-{r.value['event_id']}", "similar",
                                   items[site]))

    records = run_for(sim, clock, 90, on_step=engine_answers)
    summary = sim.summary()
    assert tuple(summary) == SUMMARY_FIELDS
    decisions, events = summary["decisions"], summary["events"]
    assert decisions["total"] == sum(decisions[g] for g in GROUPS)
    assert decisions["total"] + decisions["unsettled"] == events["served"] == len(
        of(records, SERVED)) == sum(decisions["served"].values())
    assert events["total"] == len(records) == events["served"] + sum(events[k] for k in CHAIN)
    assert events["click"] == len(of(records, CLICKS))
    assert events["basket_add"] == len(of(records, BASKET_ADDS))
    assert events["reactions_to_displays"] + events["reactions_beyond_window"] + events[
        "browsing"] == sum(events[k] for k in CHAIN)
    assert decisions["engine"] > 0 and decisions["control"] > 0
    assert summary["sessions"]["started"] == summary["sessions"]["engine"] + summary[
        "sessions"]["control"]
    timeline = summary["timeline"]
    assert sum(row["engine_decisions"] for row in timeline) == decisions["engine"]
    assert sum(row["control_decisions"] for row in timeline) == decisions["control"]
    assert timeline[-1]["cumulative_regret"] == pytest.approx(summary["regret"]["total"],
                                                              abs=0.01)
    rewards = summary["reward_per_decision"]
    assert rewards["oracle"] >= rewards["engine_expected"]
    # Always "similar": the engine's arm share says so, the oracle's does not have to.
    assert summary["arm_share"]["engine"] == {"similar": 1.0}
    for site in ("shop-a", "shop-b"):
        assert set(summary["per_site"][site]["decisions"]) == set(GROUPS)


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not():
    def play(seed: int) -> list[Outgoing]:
        sim, clock = simulator(seed=seed)
        return sim.catalog_records() + run_for(sim, clock, 40)

    assert play(5) == play(5)
    assert play(5) != play(6)
