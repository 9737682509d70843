"""Off-policy evaluation: what a candidate policy would have earned, estimated from logged
decisions and their exact propensities (``reco.rewards`` logs every one).

Each logged decision gives the reward ``r``, the propensity ``p`` the logging policy had of
its action, the probability ``t`` the candidate gives that same action in that context, and
optionally a reward model's predictions: ``q_logged`` for the logged action and
``q_candidate``, the model's value of the candidate's whole distribution in that context.
With ``w = t / p``:

- IPS: ``mean(w r)``, unbiased when every action the candidate takes had ``p > 0``;
- self-normalised IPS: ``sum(w r) / sum(w)``, a little biased, much less variance;
- doubly robust: ``mean(q_candidate + w (r - q_logged))``, unbiased if either the
  propensities or the reward model are right.

Intervals are 95 % normal ones (the delta method for SNIPS); the effective sample size
``(sum w)^2 / sum w^2`` says how many logged decisions the estimate is really worth.

>>> rows = [Logged(1.0, 0.5, 1.0), Logged(0.0, 0.5, 0.0), Logged(1.0, 0.5, 1.0),
...         Logged(0.0, 0.5, 1.0)]
>>> [(e.name, e.value) for e in estimate_all(rows)]
[('ips', 1.0), ('snips', 0.6666666666666666)]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Logged:
    reward: float
    propensity: float  # the logging policy's, of the logged action
    candidate: float  # the candidate's probability of that action in that context
    q_logged: float | None = None  # the reward model's value of the logged action
    q_candidate: float | None = None  # ... and of the candidate's distribution


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float
    effective_sample_size: float
    n: int

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _weights(rows: Sequence[Logged]) -> list[float]:
    return [row.candidate / row.propensity for row in rows]


def _ess(weights: Sequence[float]) -> float:
    squares = sum(w * w for w in weights)
    return sum(weights) ** 2 / squares if squares else 0.0


def _mean_estimate(name: str, terms: Sequence[float], ess: float) -> Estimate:
    mean = statistics.fmean(terms)
    half = Z_95 * statistics.pstdev(terms) / math.sqrt(len(terms)) if len(terms) > 1 else math.inf
    return Estimate(name, mean, mean - half, mean + half, ess, len(terms))


def ips(rows: Sequence[Logged]) -> Estimate:
    weights = _weights(rows)
    return _mean_estimate("ips", [w * row.reward for w, row in zip(weights, rows, strict=True)],
                          _ess(weights))


def snips(rows: Sequence[Logged]) -> Estimate:
    weights = _weights(rows)
    total = sum(weights)
    if total <= 0:
        return Estimate("snips", math.nan, -math.inf, math.inf, 0.0, len(rows))
    value = sum(w * row.reward for w, row in zip(weights, rows, strict=True)) / total
    variance = sum((w * (row.reward - value)) ** 2
                   for w, row in zip(weights, rows, strict=True)) / total ** 2
    half = Z_95 * math.sqrt(variance)
    return Estimate("snips", value, value - half, value + half, _ess(weights), len(rows))


def doubly_robust(rows: Sequence[Logged]) -> Estimate:
    weights = _weights(rows)
    terms = []
    for w, row in zip(weights, rows, strict=True):
        if row.q_logged is None or row.q_candidate is None:
            raise ValueError("doubly robust needs the reward model's values on every row")
        terms.append(row.q_candidate + w * (row.reward - row.q_logged))
    return _mean_estimate("dr", terms, _ess(weights))


def estimate_all(rows: Sequence[Logged]) -> list[Estimate]:
    """IPS, SNIPS and, when every row has the reward model's values, doubly robust."""
    if not rows:
        raise ValueError("no logged decisions to evaluate on")
    found = [ips(rows), snips(rows)]
    if all(row.q_logged is not None and row.q_candidate is not None for row in rows):
        found.append(doubly_robust(rows))
    return found
