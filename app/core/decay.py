"""Exponentially decayed scores with a bounded number of keys.

Forward decay (Cormode et al.): an event at time ``t`` adds ``w * 2**((t - ref) / half_life)``
instead of decaying every stored value at every step, so the order of stored values is the
order of decayed values at any later time, and a top-k needs no arithmetic per key.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from operator import itemgetter

# Rescale before the forward-decay weights get anywhere near float overflow (2**1023), and
# never raise 2 to more than this when reading at a time far from the reference.
_MAX_EXPONENT = 200.0
_MAX_READ_EXPONENT = 900.0
# The highest keys are kept in order as they change: stored values only grow by their own
# additions, so a key can only enter the leaders when it is added to.
LEADERS_KEPT = 64


@dataclass
class DecayedScores:
    """Decayed sums per key, keeping about ``capacity`` keys (the lowest are evicted).

    Examples
    --------
    >>> scores = DecayedScores(half_life_ms=1_000, capacity=4)
    >>> scores.add("a", 1.0, ts=0)
    >>> scores.add("b", 1.0, ts=1_000)
    >>> round(scores.value("a", ts=1_000), 3), round(scores.value("b", ts=1_000), 3)
    (0.5, 1.0)
    >>> for key in "cdef":
    ...     scores.add(key, 2.0, ts=1_000)   # over capacity + 1/4: "a" and "b" are evicted
    >>> scores.top(5, ts=1_000)
    [('c', 2.0), ('d', 2.0), ('e', 2.0), ('f', 2.0)]
    """

    half_life_ms: float
    capacity: int
    ref_ts: int | None = None
    raw: dict[str, float] = field(default_factory=dict)
    leaders: list[tuple[str, float]] = field(default_factory=list)  # highest first

    def add(self, key: str, weight: float, ts: int) -> None:
        if self.ref_ts is None:
            self.ref_ts = ts
        exponent = (ts - self.ref_ts) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            self._rebase(ts)
            exponent = 0.0
        value = self.raw[key] = self.raw.get(key, 0.0) + weight * 2.0 ** exponent
        leaders = self.leaders
        # A key among the leaders is at least the last one: a positive weight takes it
        # above, so only a negative one needs the scan.
        if len(leaders) < LEADERS_KEPT or value > leaders[-1][1] \
                or (weight < 0 and any(k == key for k, _ in leaders)):
            leaders = [kv for kv in leaders if kv[0] != key]
            leaders.append((key, value))
            leaders.sort(key=_second, reverse=True)
            self.leaders = leaders[:LEADERS_KEPT]
        if len(self.raw) > self.capacity + self.capacity // 4:
            # Evict in batches: one O(n log k) trim per capacity/4 new keys, not a scan per add.
            self.raw = dict(heapq.nlargest(self.capacity, self.raw.items(), key=_second))
            self.leaders = [kv for kv in self.leaders if kv[0] in self.raw]

    def value(self, key: str, ts: int) -> float:
        """The decayed sum of ``key`` as seen at time ``ts``."""
        if self.ref_ts is None or key not in self.raw:
            return 0.0
        return self.raw[key] * self._factor(ts)

    def top(self, n: int, ts: int, exclude: Container[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` highest keys with their decayed sums at time ``ts``, highest first."""
        if n <= LEADERS_KEPT and (not exclude or len(self.leaders) == len(self.raw)):
            best = [kv for kv in self.leaders if kv[0] not in exclude][:n]
        else:
            candidates: Iterable[tuple[str, float]] = (
                (k, v) for k, v in self.raw.items() if k not in exclude)
            best = heapq.nlargest(n, candidates, key=_second)
        if self.ref_ts is None:
            return best
        factor = self._factor(ts)
        return [(k, v * factor) for k, v in best]

    def _factor(self, ts: int) -> float:
        """What stored values are multiplied by to read them as decayed sums at ``ts``."""
        assert self.ref_ts is not None
        exponent = (self.ref_ts - ts) / self.half_life_ms
        return 2.0 ** max(-_MAX_READ_EXPONENT, min(_MAX_READ_EXPONENT, exponent))

    def _rebase(self, ts: int) -> None:
        assert self.ref_ts is not None
        factor = 2.0 ** ((self.ref_ts - ts) / self.half_life_ms)
        self.raw = {k: v * factor for k, v in self.raw.items() if v * factor > 1e-12}
        self.leaders = heapq.nlargest(LEADERS_KEPT, self.raw.items(), key=_second)
        self.ref_ts = ts


_second = itemgetter(1)
