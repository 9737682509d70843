"""The off-policy estimators against policies whose true value is known, and on the Open
Bandit Dataset (``bench/ope_obd.py``): Bernoulli Thompson Sampling's click-through rate
estimated from the uniform random log, against the rate its own log shows."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from app.core.shadow import candidate
from app.evaluation.offline import evaluate
from app.evaluation.ope import Logged, estimate_all
from bench.ope_obd import thompson_on_random

# The true mean reward of each arm, per context: a world where the truth is known.
TRUTH = {"mobile": {"similar": 0.2, "category1": 0.5, "learned": 0.35},
         "desktop": {"similar": 0.6, "category1": 0.3, "learned": 0.4}}
LOGGING = {"similar": 0.5, "category1": 0.3, "learned": 0.2}


def logged_decisions(n: int, seed: int = 7) -> list[dict]:
    """Decisions of a known, non-uniform logging policy, with exact propensities."""
    rng = random.Random(seed)
    decisions = []
    for _ in range(n):
        device = rng.choice(("mobile", "desktop"))
        arm = rng.choices(list(LOGGING), list(LOGGING.values()))[0]
        decisions.append({"arm": arm, "propensity": LOGGING[arm],
                          "context": {"device": device},
                          "reward": float(rng.random() < TRUTH[device][arm])})
    return decisions


def true_value(policy: dict[str, dict[str, float]]) -> float:
    """A policy's value: mean over the (equally likely) contexts of its expected reward."""
    return statistics.fmean(sum(p * TRUTH[device][arm] for arm, p in policy[device].items())
                            for device in TRUTH)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["arm:similar", "arm:category1", "arm:learned", "uniform"])
def test_each_estimators_95_percent_interval_covers_the_true_value_about_95_percent_of_runs(
        spec):
    """40 logs of 2,000 decisions each: a calibrated interval misses the truth in about 2
    of them (more than 6 misses has a chance under 0.3 % if it is calibrated)."""
    arms = tuple(LOGGING)
    chooser = candidate(spec, arms, None)
    truth = true_value({device: dict(chooser({"device": device})) for device in TRUTH})
    misses: Counter[str] = Counter()
    for seed in range(40):
        estimates = evaluate(logged_decisions(2_000, seed), chooser, arms)
        assert [e.name for e in estimates] == ["ips", "snips", "dr"]
        for e in estimates:
            misses[e.name] += not e.covers(truth)
            assert e.high - e.low < 0.15, e  # and each says something
    assert max(misses.values()) <= 6, (spec, misses)
    # a fixed arm's weights: worth about its logging share of the decisions
    if spec == "arm:learned":
        assert 0.15 * 2_000 < estimates[0].effective_sample_size < 0.25 * 2_000


def test_doubly_robust_has_less_variance_than_ips_when_its_model_is_right():
    rows = []
    rng = random.Random(3)
    for _ in range(5_000):
        arm = rng.choices(list(LOGGING), list(LOGGING.values()))[0]
        reward = float(rng.random() < TRUTH["mobile"][arm])
        rows.append(Logged(reward, LOGGING[arm], float(arm == "learned"),
                           TRUTH["mobile"][arm], TRUTH["mobile"]["learned"]))
    ips, snips, dr = estimate_all(rows)
    assert dr.high - dr.low < ips.high - ips.low
    assert all(e.covers(TRUTH["mobile"]["learned"]) for e in (ips, snips, dr))


def test_thompson_samplings_ctr_estimated_from_the_random_log_matches_its_own_log():
    estimates, truth, half = thompson_on_random()  # the Open Bandit Dataset's small sample
    assert [e.name for e in estimates] == ["ips", "snips"]
    for e in estimates:
        assert e.covers(truth), (e, truth)
        assert truth - half <= e.value <= truth + half, (e, truth, half)  # within its interval
