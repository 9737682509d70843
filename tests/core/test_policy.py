"""The contextual bandit: exact propensities, learning per context, state that round-trips
through its plain encoding, and a model size bounded below a Kafka record's."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.contract.codec import (
    MAX_RECORD_BYTES,
    PRODUCER_LIMIT_BYTES,
    decode_model,
    encode_model,
    model_bytes_bound,
)
from app.core.issuing import stable_uniform
from app.core.policy import MAX_FEATURE_CHARS, ContextualBandit
from app.core.ranker import MAX_ITEM_CHARS, MAX_ITEMS, SIGNALS
from app.settings import DEFAULT_ARMS

ARMS = ("category1", "category2", "bestsellers", "trending", "similar")
# The hidden truth: trending pays in winter, bestsellers in summer.
BEST = {"winter": "trending", "summer": "bestsellers"}


def train(policy: ContextualBandit, decisions: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for n in range(decisions):
        season = rng.choice(sorted(BEST))
        context = {"season": season, "region": rng.choice(["eu", "us"])}
        arm, _ = policy.choose(context, stable_uniform(seed, str(n)))
        paid = rng.random() < (0.6 if arm == BEST[season] else 0.15)
        policy.update(arm, context, 3.0 if paid else 0.0)


def test_propensities_are_a_distribution_with_epsilon_spread_evenly():
    policy = ContextualBandit(ARMS, epsilon=0.2, seed=1)
    train(policy, 500)
    probabilities = policy.probabilities({"season": "winter"})
    assert abs(sum(probabilities.values()) - 1.0) < 1e-12
    assert min(probabilities.values()) >= 0.2 / len(ARMS) - 1e-12


def test_choice_frequencies_match_the_published_propensities():
    policy = ContextualBandit(ARMS, epsilon=0.3, seed=1)
    train(policy, 300)
    context = {"season": "summer", "region": "eu"}
    draws = 20_000
    counts = Counter(policy.choose(context)[0] for _ in range(draws))
    for arm, probability in policy.probabilities(context).items():
        assert abs(counts[arm] / draws - probability) < 0.015, arm
    # The draw a replay passes in picks each arm over an interval as long as its probability.
    grid = Counter(policy.choose(context, draw=n / 10_000)[0] for n in range(10_000))
    for arm, probability in policy.probabilities(context).items():
        assert abs(grid[arm] / 10_000 - probability) < 2e-4, arm


def test_after_a_few_thousand_decisions_it_picks_the_right_arm_per_context():
    policy = ContextualBandit(ARMS, epsilon=0.1, seed=3)
    train(policy, 3_000)
    for season, best in BEST.items():
        for region in ("eu", "us"):
            estimates = policy.estimates({"season": season, "region": region})
            assert max(estimates, key=estimates.__getitem__) == best, (season, region)
    # An unseen context value still gets sensible estimates from what is known.
    assert policy.probabilities({"season": "winter", "region": "mars"})["trending"] > 0.5
    # No context at all: the arm that pays best overall.
    overall = policy.estimates({})
    assert max(overall, key=overall.__getitem__) in BEST.values()


def test_state_round_trips_through_the_plain_encoding_and_keeps_deciding_the_same():
    policy = ContextualBandit(ARMS, epsilon=0.1, seed=5)
    train(policy, 400)
    copy = decode_model(encode_model(policy))
    assert copy.n_updates == policy.n_updates == 400
    for season in BEST:
        assert copy.probabilities({"season": season}) == policy.probabilities({"season": season})
    assert [copy.choose({"season": "winter"}) for _ in range(50)] == [
        policy.choose({"season": "winter"}) for _ in range(50)]
    for season in BEST:  # and learns on from the same numbers
        copy.update("trending", {"season": season}, 1.0)
        policy.update("trending", {"season": season}, 1.0)
    assert copy.estimates({"season": "winter"}) == pytest.approx(
        policy.estimates({"season": "winter"}), rel=1e-9)


def test_with_arms_keeps_what_was_learned_about_the_arms_in_common():
    policy = ContextualBandit(ARMS, epsilon=0.1, seed=5)
    train(policy, 1_000)
    narrowed = policy.with_arms(["trending", "fresh"])
    assert narrowed.arms == ("trending", "fresh")
    estimates = narrowed.estimates({"season": "winter"})
    assert estimates["trending"] > 1.0  # learned: trending pays in winter
    assert estimates["fresh"] == 0.0  # a new arm starts from nothing
    assert narrowed.n_updates == policy.n_updates


def test_unbounded_context_values_do_not_grow_the_model_without_bound():
    policy = ContextualBandit(ARMS, epsilon=0.1, seed=5, max_features=20)
    for n in range(500):
        policy.update("trending", {"visitor": f"v{n}", "season": "winter"}, 1.0)
    small = len(encode_model(policy))
    for n in range(500, 2_000):
        policy.update("trending", {"visitor": f"v{n}", "season": "winter"}, 1.0)
    assert len(encode_model(policy)) <= small * 1.05
    assert policy.estimates({"season": "winter"})["trending"] > 0.5  # still learning


@pytest.mark.slow
def test_a_site_with_every_feature_it_may_learn_still_fits_a_kafka_record():
    """130+ page categories once grew a model past 1 MB; now the worst case is bounded, the
    item model's weights included."""
    policy = ContextualBandit(DEFAULT_ARMS, epsilon=0.1, seed=5)
    for n in range(400):  # far more distinct long values than max_features
        context = {"category": f"{n:03d}" + "é" * (MAX_FEATURE_CHARS - 13), "device": "mobile"}
        for arm in DEFAULT_ARMS:
            policy.update(arm, context, float(n % 3))
    for n in range(2 * MAX_ITEMS):  # more items than get a weight, the longest ids (4-byte)
        policy.ranker.learn(f"{n:04d}" + "😀" * (MAX_ITEM_CHARS - 4), (0.5,) * len(SIGNALS),
                            n % 5, n % 3 == 0)
    raw = encode_model(policy)
    bound = model_bytes_bound(len(DEFAULT_ARMS), policy.max_features)
    assert len(raw) <= bound <= MAX_RECORD_BYTES < PRODUCER_LIMIT_BYTES
    assert len(raw) > bound * 0.8  # the bound is close, not a guess far above
    assert decode_model(raw).estimates({"device": "mobile"}) == pytest.approx(
        policy.estimates({"device": "mobile"}), rel=1e-6)


def test_context_features_too_long_to_publish_are_not_learned():
    long_value = "x" * MAX_FEATURE_CHARS
    assert set(ContextualBandit.features({"k": long_value, "d": "m"})) == {"d=m", "bias"}
