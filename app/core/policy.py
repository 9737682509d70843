"""The contextual bandit that picks which arm (candidate list) a session sees.

River's ``LinUCBDisjoint`` documents itself as slow and River's other bandit policies
ignore context, so the policy is built from River's online linear models: one
``linear_model.BayesianLinearRegression`` per arm predicts the reward of that arm from the
one-hot context, and an epsilon-greedy rule turns the estimates into choice probabilities.
The probabilities are exact, so every published ranking carries the true propensity of its
arm. The Bayesian model's exact incremental posterior mean tells arms apart from 0/3 rewards
where plain SGD regression stays too noisy (docs/learning.md, "Choices measured").
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import linear_model

from app.core.ranker import ItemRanker, RankerState, reacted_items

# Estimates this close are ties; ties share the greedy probability equally.
TIE_TOLERANCE = 1e-9
EXPLORATION_RULES = ("epsilon", "squarecb")
# A context feature ("key=value") longer than this is not learned: the model is published
# after every batch, and its size must stay bounded (see app.contract.codec).
MAX_FEATURE_CHARS = 128
_FLOAT = np.dtype("<f8")


@dataclass(frozen=True)
class ArmState:
    """One arm's Bayesian regression as numbers: its features (indices into
    :attr:`PolicyState.features`, in the model's own order), the upper triangle of its
    posterior precision matrix and its natural mean, both little-endian float64."""

    features: tuple[int, ...]
    precision: bytes
    natural_mean: bytes


@dataclass(frozen=True)
class PolicyState:
    """Everything a :class:`ContextualBandit` has learned, as plain values."""

    arms: tuple[str, ...]
    epsilon: float
    seed: int | None
    alpha: float
    max_features: int
    n_updates: int
    features: tuple[str, ...]
    models: dict[str, ArmState]
    rule: str = "epsilon"
    squarecb_gamma: float = 1.0
    ranker: RankerState | None = None


class ContextualBandit:
    """A contextual bandit over named arms, exploring epsilon-greedy or by SquareCB.

    Parameters
    ----------
    arms
        The arm names, in a fixed order.
    epsilon
        With ``rule="epsilon"``: the share of probability spread uniformly over all arms.
    rule
        ``"epsilon"`` (epsilon-greedy) or ``"squarecb"``: SquareCB (Foster & Rakhlin,
        2020), whose exploration shrinks with evidence and with how far behind an arm is.
        Each arm behind the best by ``gap`` gets ``1 / (K + gamma * gap)``, the best arms
        share the rest, with ``gamma = squarecb_gamma * sqrt(K * (1 + n_updates))``: a
        closed form, so propensities stay exact.
    squarecb_gamma
        SquareCB's learning-rate scale: larger exploits sooner.
    seed
        Seed of the random draws, so a run can be replayed.
    alpha
        Prior precision of each arm model's weights (River's ``alpha``): larger is more
        cautious about weights seen in few decisions.
    max_features
        Distinct context features (``key=value``) the policy learns weights for; later ones
        are ignored, so a site sending unbounded context values cannot grow the model (which
        is saved after every decision) without bound.

    Examples
    --------
    >>> policy = ContextualBandit(["bestsellers", "trending"], epsilon=0.2, seed=1)
    >>> for _ in range(200):
    ...     policy.update("trending", {"season": "winter"}, 3.0)
    ...     policy.update("bestsellers", {"season": "winter"}, 0.0)
    >>> policy.probabilities({"season": "winter"})
    {'bestsellers': 0.1, 'trending': 0.9}
    >>> policy.n_updates
    400
    >>> restored = ContextualBandit.from_state(policy.to_state())
    >>> restored.probabilities({"season": "winter"}) == policy.probabilities({"season": "winter"})
    True
    >>> policy.rule = "squarecb"  # an arm ~3 behind: 1 / (2 + gamma * 3), gamma = sqrt(2 * 401)
    >>> {arm: round(p, 4) for arm, p in policy.probabilities({"season": "winter"}).items()}
    {'bestsellers': 0.0115, 'trending': 0.9885}

    References
    ----------
    Foster, D. and Rakhlin, A. (2020). Beyond UCB: Optimal and Efficient Contextual Bandits
    with Regression Oracles. ICML.
    """

    def __init__(self, arms: Iterable[str], epsilon: float = 0.1, seed: int | None = None,
                 alpha: float = 1.0, max_features: int = 128, rule: str = "epsilon",
                 squarecb_gamma: float = 1.0) -> None:
        self.arms = tuple(arms)
        if not self.arms:
            raise ValueError("a bandit needs at least one arm")
        if rule not in EXPLORATION_RULES:
            raise ValueError(f"rule must be one of {EXPLORATION_RULES}")
        self.epsilon = epsilon
        self.rule = rule
        self.squarecb_gamma = squarecb_gamma
        self.seed = seed
        self.alpha = alpha
        self.max_features = max_features
        self._known_features: set[str] = {"bias"}
        self.n_updates = 0
        self._rng = random.Random(seed)
        self._models = {
            arm: linear_model.BayesianLinearRegression(alpha=alpha, beta=1.0)
            for arm in self.arms
        }
        # The site's item model, for the ``learned`` arm: learned from the same decisions.
        self.ranker = ItemRanker()

    def with_arms(self, arms: Iterable[str]) -> ContextualBandit:
        """A policy over ``arms`` that keeps what this one learned about the arms in common."""
        policy = ContextualBandit(arms, self.epsilon, self.seed, self.alpha,
                                  self.max_features, self.rule, self.squarecb_gamma)
        policy._known_features = set(self._known_features)
        policy._models.update({a: m for a, m in self._models.items() if a in policy._models})
        policy.n_updates = self.n_updates
        policy.ranker = self.ranker
        return policy

    @staticmethod
    def features(context: Mapping[str, Any]) -> dict[str, float]:
        """One-hot features of a context, plus a constant that learns the arm's overall
        reward (River's Bayesian regression has no intercept); an unseen value has no weight
        yet, so an unseen context falls back on what the arm earns overall."""
        features = {f"{key}={value}": 1.0 for key, value in context.items() if value is not None}
        features = {name: 1.0 for name in features if len(name) <= MAX_FEATURE_CHARS}
        features["bias"] = 1.0
        return features

    def estimates(self, context: Mapping[str, Any]) -> dict[str, float]:
        """The expected reward of each arm in this context."""
        x = self.features(context)
        return {arm: model.predict_one(x) for arm, model in self._models.items()}

    def probabilities(self, context: Mapping[str, Any]) -> dict[str, float]:
        """The probability with which :meth:`choose` picks each arm in this context."""
        return self.spread(self.estimates(context))

    def spread(self, estimates: Mapping[str, float]) -> dict[str, float]:
        """Each arm's probability, given the :meth:`estimates` in a context of the arms
        that may be chosen (all, or some: the others get none)."""
        best = max(estimates.values())
        greedy = [arm for arm, value in estimates.items() if value >= best - TIE_TOLERANCE]
        k = len(estimates)
        if self.rule == "squarecb":
            gamma = self.squarecb_gamma * math.sqrt(k * (1 + self.n_updates))
            behind = {arm: 1.0 / (k + gamma * (best - value))
                      for arm, value in estimates.items() if arm not in greedy}
            share = (1.0 - sum(behind.values())) / len(greedy)
            return {arm: behind.get(arm, share) for arm in estimates}
        explore = self.epsilon / k
        exploit = (1.0 - self.epsilon) / len(greedy)
        return {arm: explore + (exploit if arm in greedy else 0.0) for arm in estimates}

    def choose(self, context: Mapping[str, Any],
               draw: float | None = None) -> tuple[str, float]:
        """Draw an arm; return it with the exact probability it had of being drawn.

        ``draw`` is a uniform number in [0, 1) to use instead of the policy's own random
        stream, so a decision replayed after a crash picks the same arm.
        """
        return self.pick(self.probabilities(context), draw)

    def pick(self, probabilities: Mapping[str, float],
             draw: float | None = None) -> tuple[str, float]:
        """The arm ``draw`` falls on among ``probabilities`` (:meth:`choose`, with the
        probabilities at hand), and its probability."""
        if draw is None:
            draw = self._rng.random()
        cumulative = 0.0
        for arm, probability in probabilities.items():
            cumulative += probability
            if draw < cumulative:
                return arm, probability
        return arm, probability  # float rounding left the draw just above the total

    def update(self, arm: str, context: Mapping[str, Any], reward: float) -> None:
        """Learn the reward one decision earned. Unknown arms are ignored."""
        model = self._models.get(arm)
        if model is None:
            return
        x = self.features(context)
        for name in x:
            if name not in self._known_features and len(self._known_features) < self.max_features:
                self._known_features.add(name)
        model.learn_one({k: v for k, v in x.items() if k in self._known_features}, reward)
        self.n_updates += 1

    # -- state as plain values (River's learned arrays as numbers, never a pickle) --------

    def to_state(self) -> PolicyState:
        names = tuple(sorted(self._known_features))
        position = {name: i for i, name in enumerate(names)}
        models = {}
        for arm, model in self._models.items():
            n = len(model._idx)
            upper = np.triu_indices(n)
            models[arm] = ArmState(
                features=tuple(position[str(name)] for name in model._idx),
                precision=model._ss_arr[:n, :n][upper].astype(_FLOAT).tobytes(),
                natural_mean=model._eta_arr[:n].astype(_FLOAT).tobytes())
        return PolicyState(self.arms, self.epsilon, self.seed, self.alpha, self.max_features,
                           self.n_updates, names, models, self.rule, self.squarecb_gamma,
                           self.ranker.to_state())

    @classmethod
    def from_state(cls, state: PolicyState) -> ContextualBandit:
        """The policy ``state`` describes; ValueError when it is not self-consistent."""
        policy = cls(state.arms, state.epsilon, state.seed, state.alpha, state.max_features,
                     state.rule, state.squarecb_gamma)
        if len(state.features) > state.max_features or set(state.models) - set(state.arms):
            raise ValueError("more features than max_features, or models of unknown arms")
        policy._known_features = set(state.features)
        policy.n_updates = state.n_updates
        for arm, arm_state in state.models.items():
            _restore(policy._models[arm], state.features, arm_state)
        if state.ranker is not None:
            policy.ranker = ItemRanker.from_state(state.ranker)
        return policy


def learn_decision(policy: ContextualBandit, decision: Mapping[str, Any],
                   apprentice: bool = False) -> bool:
    """Teach ``policy`` one closed decision (a ``decisions`` record: a ``reco.rewards`` value
    with each shown item's ``signals``): the bandit its arm's reward, the item model which
    shown items were reacted to. False, learning nothing, when its arm is not one of the
    policy's (the site's own lists are joined and logged, not learned), unless the decision
    is an ``apprentice`` control's: the item model then learns from the site's list."""
    known = decision.get("arm") in policy.arms
    if not known and not apprentice:
        return False
    if known:
        policy.update(decision["arm"], decision.get("context") or {}, float(decision["reward"]))
    else:  # the version counts every decision learned, so this one is published too
        policy.n_updates += 1
    policy.ranker.learn_display(decision.get("items") or [], decision.get("signals") or [],
                                reacted_items(decision.get("outcomes") or []))
    return True


def _restore(model: linear_model.BayesianLinearRegression, names: tuple[str, ...],
             state: ArmState) -> None:
    """Put ``state`` into a fresh River model (its internals as of river 0.26)."""
    n = len(state.features)
    if len(set(state.features)) != n or any(not 0 <= i < len(names) for i in state.features):
        raise ValueError("an arm's feature indices must be distinct and known")
    precision = np.frombuffer(state.precision, dtype=_FLOAT)
    natural_mean = np.frombuffer(state.natural_mean, dtype=_FLOAT)
    if precision.size != n * (n + 1) // 2 or natural_mean.size != n:
        raise ValueError("an arm's arrays do not match its features")
    if not (np.isfinite(precision).all() and np.isfinite(natural_mean).all()):
        raise ValueError("an arm's arrays must be finite")
    full = np.zeros((n, n), dtype=np.float64)
    full[np.triu_indices(n)] = precision
    full = full + np.triu(full, 1).T
    model._idx = {names[i]: j for j, i in enumerate(state.features)}
    model._cap = n
    model._ss_arr = full
    # The covariance is recomputed rather than carried: every reader, the learner included
    # (it re-decodes after each commit), works from the same numbers.
    model._ss_inv_arr = np.asfortranarray(np.linalg.inv(full)) if n else np.zeros((0, 0),
                                                                                order="F")
    model._eta_arr = natural_mean.copy()
    model._m_dirty = True
