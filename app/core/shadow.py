"""Candidate policies, and their live scores in the shadow of the site's own.

A candidate is named by a spec: ``arm:NAME`` (always that arm), ``uniform`` (every arm
alike), ``current`` (the site's bandit as it is), ``epsilon:E`` or ``squarecb:G`` (the
site's bandit with another exploration). :func:`candidate` turns a spec into each arm's
probability in a context; ``recoloop evaluate`` (:mod:`app.evaluation.offline`) scores
candidates on the logged decisions, and :class:`ShadowScores` on every closed decision as it
happens: self-normalised IPS, ``sum(w r) / sum(w)`` with ``w`` the candidate's probability of
the logged arm over its logged propensity.

>>> scores = ShadowScores()
>>> always_a = candidate("arm:a", ("a", "b"), None)
>>> for arm, reward in [("a", 1.0), ("b", 0.0), ("a", 0.0), ("b", 1.0)]:
...     scores.add("arm:a", always_a({}), arm, 0.5, reward)
>>> scores.value("arm:a"), scores.effective_decisions("arm:a")
(0.5, 2.0)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.core.policy import ContextualBandit

Chooser = Callable[[Mapping[str, Any]], Mapping[str, float]]  # context -> arm probabilities


def candidate(spec: str, arms: Sequence[str], current: ContextualBandit | None) -> Chooser:
    """The candidate policy ``spec`` names, as each arm's probability in a context;
    ValueError for a spec that names nothing (or ``current`` without a model)."""
    kind, _, value = spec.partition(":")
    if kind == "arm":
        if value not in arms:
            raise ValueError(f"unknown arm {value!r}; the site's arms: {list(arms)}")
        return lambda context: {arm: float(arm == value) for arm in arms}
    if kind == "uniform":
        return lambda context: {arm: 1.0 / len(arms) for arm in arms}
    if kind in ("current", "epsilon", "squarecb"):
        if current is None:
            raise ValueError("the site has no model on the models topic yet")
        policy = current
        if kind != "current":
            # A shallow copy shares the learned models (read only) and explores its own way.
            policy = copy.copy(current)
            policy.rule = kind
            if kind == "epsilon":
                policy.epsilon = float(value)
            else:
                policy.squarecb_gamma = float(value)
        return policy.probabilities
    raise ValueError(f"unknown policy {spec!r}: arm:NAME, uniform, current, epsilon:E or "
                     "squarecb:G")


class ShadowScores:
    """Running self-normalised IPS sums per candidate spec (one site's)."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}  # spec -> [sum w, sum w r, sum w^2]

    def add(self, spec: str, probabilities: Mapping[str, float], arm: str,
            propensity: float, reward: float) -> None:
        """One closed decision: ``arm`` was drawn with ``propensity`` and earned ``reward``."""
        w = probabilities.get(arm, 0.0) / propensity
        sums = self._sums.setdefault(spec, [0.0, 0.0, 0.0])
        sums[0] += w
        sums[1] += w * reward
        sums[2] += w * w

    def value(self, spec: str) -> float | None:
        """The candidate's estimated reward per decision; None before any weight."""
        sums = self._sums.get(spec)
        return None if not sums or sums[0] == 0 else sums[1] / sums[0]

    def effective_decisions(self, spec: str) -> float:
        """Kish's effective sample size, ``(sum w)^2 / sum w^2``: how many decisions the
        estimate is worth."""
        sums = self._sums.get(spec)
        return 0.0 if not sums or sums[2] == 0 else sums[0] ** 2 / sums[2]

    def forget(self, keep: Sequence[str]) -> None:
        """Drop the specs the site's settings no longer name."""
        for spec in [s for s in self._sums if s not in keep]:
            del self._sums[spec]
