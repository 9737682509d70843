"""The learned arm's item model and the engagements that teach site statistics."""

from __future__ import annotations

import random

import pytest

from app.contract.codec import decode_model, encode_model
from app.core.candidates import arm_items
from app.core.catalog import StoreCatalog, apply_record
from app.core.policy import ContextualBandit, learn_decision
from app.core.ranker import SIGNALS, ItemRanker, RankerState
from app.core.session import Session
from app.core.stats import Engagement, SiteStats, learn_into
from app.core.store import MemoryStore


def test_the_model_learns_position_apart_from_the_items():
    """Items shown first are clicked more for their position alone; the model must not credit
    them for it: an item clicked as often from lower positions scores higher."""
    rng = random.Random(1)
    ranker = ItemRanker()
    same = (0.5,) * len(SIGNALS)
    for _ in range(3_000):
        ranker.learn("first", same, 0, rng.random() < 0.10)
        ranker.learn("fifth", same, 4, rng.random() < 0.10)
    assert ranker.score("fifth", same) > ranker.score("first", same)
    assert ranker.to_state().weights["position"] < 0


def test_a_new_model_ranks_by_an_even_blend_of_the_counters_signals():
    """Before any click, the learned arm is no worse than an even mix of the simple arms: an
    item two counters back outranks one that a single counter backs, and that one outranks an
    item none backs (the pool's own order does not decide)."""
    ranker = ItemRanker()
    none, one, two = ([0.0] * len(SIGNALS) for _ in range(3))
    one[SIGNALS.index("coview")] = 1.0
    two[SIGNALS.index("knn")] = two[SIGNALS.index("viewed")] = 1.0
    ranked = ranker.rank([("none", none), ("one", one), ("two", two)])
    assert [item for item, _ in ranked] == ["two", "one", "none"]
    assert ItemRanker.from_state(ranker.to_state()).rank(
        [("none", none), ("one", one)]) == ranker.rank([("none", none), ("one", one)])


def test_a_state_that_is_not_the_models_is_refused():
    for state in (RankerState(0.0, {"x=1": 1.0}, 1), RankerState(float("nan"), {}, 1),
                  RankerState(0.0, {"item=" + "a" * 65: 1.0}, 1)):
        with pytest.raises(ValueError):
            ItemRanker.from_state(state)


def test_a_closed_decision_teaches_the_bandit_and_the_item_model_once():
    policy = ContextualBandit(["similar", "learned"], seed=1)
    decision = {"arm": "learned", "context": {}, "reward": 1.0, "items": ["a", "b", "c"],
                "signals": [[1, 0, 0, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0], "junk"],
                "outcomes": [{"type": "click", "item_id": "a"}]}
    assert learn_decision(policy, decision)
    assert policy.n_updates == 1 and policy.ranker.n_updates == 2  # junk signals skipped
    assert not learn_decision(policy, {**decision, "arm": "site-own"})
    assert policy.n_updates == 1


def test_the_item_model_comes_back_from_the_models_topic_encoding_and_ranks_the_same():
    """A worker rebuilt on an empty data directory reads the site's model from the models
    topic: the item model inside it must be the one that was learned, weights and all."""
    rng = random.Random(3)
    policy = ContextualBandit(["similar", "learned"], seed=1)
    for n in range(200):
        items = [f"i{rng.randrange(40)}" for _ in range(5)]
        learn_decision(policy, {
            "arm": "learned", "context": {}, "reward": 1.0, "items": items,
            "signals": [[rng.random() for _ in SIGNALS] for _ in items],
            "outcomes": [{"type": "click", "item_id": items[n % 5]}] if n % 3 else []})
    copy = decode_model(encode_model(policy)).ranker
    assert copy.to_state() == policy.ranker.to_state() and copy.n_updates == 1_000
    candidates = [(f"i{n}", tuple(rng.random() for _ in SIGNALS)) for n in range(45)]
    assert copy.rank(candidates) == policy.ranker.rank(candidates)


def test_the_learned_arm_ranks_by_what_clicks_taught_it():
    catalog_store = MemoryStore()
    for item, category in (("shoe1", "shoes"), ("shoe2", "shoes"), ("hat1", "hats")):
        apply_record(catalog_store, "shop", item, {"category": category, "available": True,
                                                   "ts": 1})
    stats_store = MemoryStore()
    for n, item in enumerate(["shoe1", "shoe2", "hat1", "hat1", "hat1"]):
        learn_into(stats_store.get, stats_store.set,
                   Engagement("shop", f"o{n}", item, "click", 1_000 + n, category=None))
    session = Session("shop", "me")
    stats = SiteStats("shop", stats_store.get, stats_store.set)
    ranker = ItemRanker()
    popular_only = (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for _ in range(500):  # popular items were never clicked: the model learns to avoid them
        ranker.learn("x", popular_only, 0, False)
        ranker.learn("y", (0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 0, True)
    items = [item for item, _ in arm_items("learned", session, stats,
                                           StoreCatalog(catalog_store), 2_000, 6, ranker)]
    assert items[-1] == "hat1" and set(items) == {"shoe1", "shoe2", "hat1"}
    untaught = [item for item, _ in arm_items("learned", session, stats,
                                              StoreCatalog(catalog_store), 2_000, 6)]
    assert untaught[0] == "hat1"  # untaught, the model follows popularity


def test_engagements_round_trip_and_refuse_what_is_not_one():
    engagement = Engagement("shop", "s", "i", "basket_add", 5, "c", "j", "eu", ("j", "i"), "k")
    assert Engagement.from_value(engagement.to_value()) == engagement
    for bad in ({"ts": 5.0}, {"session_items": "ji"}, {"item_id": 3}, {"ts": True},
                {"previous_same": 7}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            Engagement.from_value({**engagement.to_value(), **bad})
