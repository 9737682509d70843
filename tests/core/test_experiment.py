"""Experiments in the core: stable assignment, each variant's rankings and models, the
variant on every record, controls, apprentice decisions and the site config's checks."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from app.contract.codec import EncodedStore
from app.contract.decode import InvalidInput
from app.contract.site_config import decode_site_config
from app.core.catalog import StoreCatalog, apply_record
from app.core.engine import Engine
from app.core.events import Reaction, Served
from app.core.experiment import Experiment, Variant, model_key, site_of_model_key
from app.core.policy import ContextualBandit, learn_decision
from app.core.shadow import ShadowScores, candidate
from app.core.sites import SiteSettings
from app.core.store import MemoryStore
from app.settings import Settings

T0 = 1_700_000_000_000
SITE = "shop|eu"  # a "|" in the id: its variant models must still be its own
EXPERIMENT = {"name": "home-1", "variants": [
    {"name": "engine", "share": 60},
    {"name": "candidate", "share": 20, "arms": ["trending"]},
    {"name": "control", "share": 10, "baseline": "bestsellers"},
    {"name": "holdout", "share": 10, "baseline": "nothing"},
]}


class VariantPolicies:
    """A bandit per model key, as the worker's BanditModels keeps them."""

    def __init__(self, sites: SiteSettings) -> None:
        self.sites = sites
        self.bandits: dict[str, ContextualBandit] = {}

    def current(self, key: str) -> tuple[ContextualBandit, int]:
        if key not in self.bandits:
            site, variant = site_of_model_key(key)
            self.bandits[key] = ContextualBandit(self.sites.arms_for(site, variant), seed=1)
        return self.bandits[key], self.bandits[key].n_updates


def config(**fields) -> bytes:
    return orjson.dumps({"site_id": SITE, **fields})


@pytest.fixture
def setup():
    settings = Settings.of(reward_window_s=20, grace_s=5, idle_close_s=5,
                        arms=("similar", "category1", "bestsellers", "learned"))
    sites = SiteSettings(settings)
    assert sites.offer(decode_site_config(SITE.encode(), config(experiment=EXPERIMENT))) is None
    catalog = MemoryStore()
    for n in range(20):
        apply_record(catalog, SITE, f"i{n}",
                     {"site_id": SITE, "item_id": f"i{n}", "category": "c", "available": True,
                      "price": 10.0, "ts": T0})
    policies = VariantPolicies(sites)
    engine = Engine(settings, policies, StoreCatalog(catalog), sites=sites)
    return engine, policies, sites


def sessions_of(sites: SiteSettings, variant: str, n: int = 3) -> list[str]:
    experiment = sites.experiment_for(SITE)
    assert experiment is not None
    found = [f"s{k}" for k in range(2_000) if experiment.assign(f"s{k}").name == variant]
    return found[:n]


def test_assignment_is_stable_and_follows_the_shares():
    experiment = Experiment("e", (Variant("engine", 80), Variant("control", 20, "x")))
    counts = Counter(experiment.assign(f"session-{n}").name for n in range(20_000))
    assert abs(counts["control"] / 20_000 - 0.2) < 0.01  # 3.5 standard errors
    again = Experiment("e", (Variant("engine", 0.8), Variant("control", 0.2, "x")))
    assert all(experiment.assign(f"session-{n}") .name == again.assign(f"session-{n}").name
               for n in range(1_000))
    renamed = Experiment("f", experiment.variants)  # a new name reshuffles
    assert sum(experiment.assign(f"s{n}").name != renamed.assign(f"s{n}").name
               for n in range(1_000)) > 100


def test_model_keys_of_sites_and_variants_never_meet():
    pairs = [("a", None), ("a|b", None), ("a", "b"), ("a%7Cb", None), ("a:b", "c")]
    keys = [model_key(site, variant) for site, variant in pairs]
    assert len(set(keys)) == len(keys)
    assert [site_of_model_key(key) for key in keys] == pairs
    assert model_key("a", "engine") == model_key("a", None)


def test_each_variant_ranks_with_its_own_model_and_controls_show_their_baseline(setup):
    engine, policies, sites = setup
    store = EncodedStore()
    seen = {}
    for variant in ("engine", "candidate", "control", "holdout"):
        for session in sessions_of(sites, variant):
            effects = engine.handle(store, Served(f"d-{session}", SITE, session, T0,
                                                  ("i1", "i2")))
            seen[session] = [r for r in effects.rankings if r.session_id == session]
    for session in sessions_of(sites, "engine"):
        (ranking,) = seen[session]
        assert (ranking.experiment, ranking.variant) == ("home-1", "engine")
        assert ranking.arm in ("similar", "category1", "bestsellers", "learned")
    for session in sessions_of(sites, "candidate"):
        (ranking,) = seen[session]
        assert ranking.variant == "candidate" and ranking.arm == "trending"
    for session in sessions_of(sites, "control"):
        (ranking,) = seen[session]
        assert (ranking.variant, ranking.arm, ranking.propensity) == ("control",
                                                                     "bestsellers", 1.0)
        assert ranking.to_value()["variant"] == "control"
    for session in sessions_of(sites, "holdout"):
        assert seen[session] == []  # the site shows its own list
    # Only the engine variants have models, each its own.
    assert set(policies.bandits) == {model_key(SITE, None), model_key(SITE, "candidate")}


def test_every_closed_decision_carries_its_variant_even_without_a_ranking(setup):
    engine, _, sites = setup
    store = EncodedStore()
    holdout = sessions_of(sites, "holdout", 1)[0]
    control = sessions_of(sites, "control", 1)[0]
    engine.handle(store, Served("d-h", SITE, holdout, T0, ("own-1", "own-2")))
    ranking = engine.handle(store, Served("d-c0", SITE, control, T0, ("i1",))).rankings[-1]
    engine.handle(store, Served("d-c", SITE, control, T0 + 100, ("i3",),
                                ranking_id=ranking.ranking_id))
    engine.handle(store, Reaction("r-h", "basket_add", SITE, holdout, T0 + 1_000, "own-2",
                                  price=25.0))
    rewards = []
    for n, kind in enumerate(("served", "click", "detail_view", "basket_add")):
        event = Served(f"clock{n}", SITE, "clock", T0 + 60_000, ("z",)) if kind == "served" \
            else Reaction(f"clock{n}", kind, SITE, "clock", T0 + 60_000, "z")
        rewards += engine.handle(store, event).rewards
    by_id = {r.served_id: r for r in rewards}
    assert by_id["d-h"].to_value()["variant"] == "holdout"
    assert by_id["d-h"].to_value()["outcomes"][0]["price"] == 25.0
    assert (by_id["d-c"].variant, by_id["d-c"].arm, by_id["d-c"].propensity) == \
        ("control", "bestsellers", 1.0)


def test_default_rankings_are_published_per_variant_that_ranks(setup):
    engine, _, sites = setup
    store = EncodedStore()
    session = sessions_of(sites, "engine", 1)[0]
    rankings = engine.handle(store, Served("d1", SITE, session, T0, ("i1",))).rankings
    defaults = {r.variant: r for r in rankings if r.segment is not None}
    assert set(defaults) == {None, "candidate", "control"}  # not the holdout's: nothing
    assert defaults["control"].arm == "bestsellers"
    assert len({r.key for r in defaults.values()}) == 3
    assert defaults["candidate"].key.endswith("|@candidate")


def test_an_apprentice_control_records_what_the_engine_would_have_shown(setup):
    engine, _, sites = setup
    sites.offer(decode_site_config(SITE.encode(), config(experiment={
        "name": "apprentice-1",
        "variants": [{"name": "site", "share": 1, "baseline": "items",
                      "items": ["i5", "i6"], "apprentice": True}]})))
    store = EncodedStore()
    ranking = engine.handle(store, Served("d0", SITE, "s1", T0, ("i1",))).rankings[-1]
    assert [item for item, _ in ranking.items][:2] == ["i5", "i6"]
    assert ranking.arm == "items"
    engine.handle(store, Served("d1", SITE, "s1", T0 + 10, ("i5", "i6"),
                                ranking_id=ranking.ranking_id))
    rewards = []
    for n, kind in enumerate(("served", "click", "detail_view", "basket_add")):
        event = Served(f"clock{n}", SITE, "clock", T0 + 60_000, ("z",)) if kind == "served" \
            else Reaction(f"clock{n}", kind, SITE, "clock", T0 + 60_000, "z")
        rewards += engine.handle(store, event).rewards
    decision = next(r for r in rewards if r.served_id == "d1")
    shadow = decision.to_value()["apprentice"]
    assert shadow["arm"] in ("similar", "category1", "bestsellers", "learned")
    assert 0 < shadow["propensity"] <= 1 and shadow["shown_arm_probability"] == 0.0
    assert len(shadow["items"]) == engine.settings.ranking.ranking_size
    # It teaches the site's item model (the list is no arm: the bandit learns nothing).
    policy = ContextualBandit(("similar",), seed=1)
    assert len(decision.signals) == 2  # the items shown, with their signals at display time
    value = decision.learning_value()
    assert not learn_decision(policy, value)
    assert learn_decision(policy, value, apprentice=True)
    assert policy.n_updates == 1 and policy.ranker.n_updates > 0


@pytest.mark.parametrize("experiment, problem", [
    ({"name": "e", "variants": [{"name": "a", "share": 1}, {"name": "a", "share": 1}]},
     "distinct names"),
    ({"name": "e", "variants": [{"name": "engine", "share": 1, "arms": ["trending"]}]},
     "site's own engine"),
    ({"name": "e", "variants": [{"name": "c", "share": 1, "baseline": "trending",
                                 "arms": ["similar"]}]}, "a control takes no arms"),
    ({"name": "e", "variants": [{"name": "c", "share": 1, "apprentice": True}]},
     "only a control"),
    ({"name": "e", "variants": [{"name": "c", "share": 1, "baseline": "items"}]},
     "items go with"),
    ({"name": "e", "variants": [{"name": "a", "share": 1, "baseline": "learned"}]},
     "the baseline must be an arm other than 'learned'"),
    ({"name": "e", "variants": [{"name": "a", "share": 1, "arms": ["similar", "nope"]}]},
     "unknown arms ['nope']"),
])
def test_an_experiment_that_could_not_work_is_refused_with_the_reason(experiment, problem):
    sites = SiteSettings(Settings())
    refused = sites.offer(decode_site_config(SITE.encode(), config(experiment=experiment)))
    assert refused is not None and problem in refused
    assert sites.experiment_for(SITE) is None


@pytest.mark.parametrize("experiment", [
    {"name": "e", "variants": []},
    {"name": "e", "variants": [{"name": "A b", "share": 1}]},
    {"name": "e", "variants": [{"name": "a", "share": 0}]},
    {"name": "e", "variants": [{"name": "a", "share": 1, "baseline": "Not an arm!"}]},
])
def test_the_schema_refuses_malformed_experiments(experiment):
    with pytest.raises(InvalidInput):
        decode_site_config(SITE.encode(), config(experiment=experiment))


def test_shadow_scores_recover_a_fixed_arms_value_from_a_uniform_log():
    # Arm "a" pays 0.3, arm "b" 0.1; the log draws each with probability 1/2.
    scores = ShadowScores()
    chooser = candidate("arm:a", ("a", "b"), None)
    for n in range(4_000):
        arm = "a" if n % 2 else "b"
        reward = float((n // 2) % 10 < (3 if arm == "a" else 1))
        scores.add("arm:a", chooser({}), arm, 0.5, reward)
    assert scores.value("arm:a") == pytest.approx(0.3)
    assert scores.effective_decisions("arm:a") == pytest.approx(2_000)
    with pytest.raises(ValueError):
        candidate("arm:zzz", ("a", "b"), None)


def close_all(engine: Engine, store: EncodedStore, ts: int) -> list:
    rewards = []
    for n, kind in enumerate(("served", "click", "detail_view", "basket_add")):
        event = Served(f"clock{ts}-{n}", SITE, "clock", ts, ("z",)) if kind == "served" \
            else Reaction(f"clock{ts}-{n}", kind, SITE, "clock", ts, "z")
        rewards += engine.handle(store, event).rewards
    return rewards


def test_a_display_keeps_its_rankings_variant_when_the_experiment_changes(setup):
    engine, _, sites = setup
    store = EncodedStore()
    control = sessions_of(sites, "control", 1)[0]
    rankings = engine.handle(store, Served("d0", SITE, control, T0, ("i1",))).rankings
    ranking = next(r for r in rankings if r.session_id == control)
    assert ranking.variant == "control"
    sites.forget(SITE)  # the experiment ends while the control's list is on screen
    engine.handle(store, Served("d1", SITE, control, T0 + 10, ("i2",),
                                ranking_id=ranking.ranking_id))
    decision = next(r for r in close_all(engine, store, T0 + 60_000) if r.served_id == "d1")
    # Still the control's: the site's engine does not learn a list it did not choose.
    assert (decision.experiment, decision.variant, decision.propensity) == \
        ("home-1", "control", 1.0)


def test_a_shown_default_ranking_belongs_to_the_variant_it_was_published_for(setup):
    engine, _, sites = setup
    store = EncodedStore()
    rankings = engine.handle(store, Served("d0", SITE, "first", T0, ("i1",))).rankings
    default = next(r for r in rankings if r.segment is not None and r.variant == "candidate")
    engine_session = sessions_of(sites, "engine", 1)[0]  # shown another variant's default
    engine.handle(store, Served("d1", SITE, engine_session, T0 + 10, ("i2",),
                                ranking_id=default.ranking_id, arm=default.arm,
                                propensity=default.propensity))
    decision = next(r for r in close_all(engine, store, T0 + 60_000) if r.served_id == "d1")
    assert (decision.experiment, decision.variant) == ("home-1", "candidate")


def test_report_reads_one_experiment_at_a_time():
    old = [{"experiment": "a", "served_ts": 1, "variant": "control"}]
    new = [{"experiment": "b", "served_ts": 5, "variant": "engine"}]
    before = [{"served_ts": 0}]
    from app.evaluation.report import one_experiment
    assert one_experiment(old + new + before, None) == new
    assert one_experiment(old + new + before, "a") == old
    assert one_experiment(before, None) == before
