"""What a world measures: every settled display, tallied per group, site, time bucket and arm,
and the figures built from them (reward per decision and CTR with their standard errors over
sessions, per fifth of the run, the live progress and the summary).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from app.sim.shoppers import CHAIN, WorldConfig

GROUPS = ("engine", "control", "fallback")
# Every top-level field of the summary (documented in docs/simulator.md, "The summary").
SUMMARY_FIELDS = ("run", "events", "sessions", "rankings", "decisions", "reward_per_decision",
                  "uplift_vs_control", "regret", "arm_share", "per_site", "timeline", "ctr",
                  "by_fifth", "standard_error")
FIFTHS = 5


class Settled(NamedTuple):
    """One settled display, as the figures need it."""

    served_id: str
    ts: int
    site_id: str
    session_id: str
    group: str
    reward: float  # the contract's
    clicked: bool
    expected: float
    oracle: float
    organic: float  # the part of ``reward`` that organic reactions earned it


@dataclass
class Tally:
    decisions: int = 0
    reward: float = 0.0
    expected: float = 0.0
    oracle: float = 0.0
    clicks: int = 0
    organic: float = 0.0

    def add(self, settled: Settled) -> None:
        self.decisions += 1
        self.reward += settled.reward
        self.expected += settled.expected
        self.oracle += settled.oracle
        self.clicks += settled.clicked
        self.organic += settled.organic

    def per_decision(self, total: float) -> float | None:
        return round(total / self.decisions, 4) if self.decisions else None


def ratio_se(pairs: Iterable[tuple[float, float]]) -> float | None:
    """Standard error of sum(y) / sum(n) over independent clusters given as (y, n) pairs
    (the delta method); None with fewer than two clusters.

    >>> ratio_se([(1, 2), (0, 2), (1, 2), (0, 2)])
    0.1443
    """
    clusters = list(pairs)
    if len(clusters) < 2:
        return None
    total_y, total_n = sum(y for y, _ in clusters), sum(n for _, n in clusters)
    if total_n == 0:
        return None
    mean = total_y / total_n
    spread = sum((y - mean * n) ** 2 for y, n in clusters)
    k = len(clusters)
    return round(math.sqrt(k / (k - 1) * spread) / total_n, 4)


def figures(records: Iterable[Settled]) -> dict[str, Any]:
    """Decisions, sessions, CTR and reward per decision (each with its standard error over
    sessions: one shopper's displays are not independent), the expected and the oracle's
    reward per decision, and the reward organic reactions earned, per decision."""
    tally = Tally()
    per_session: dict[tuple[str, str], list[float]] = {}
    for record in records:
        tally.add(record)
        sums = per_session.setdefault((record.site_id, record.session_id), [0.0, 0.0, 0.0])
        sums[0] += 1
        sums[1] += record.clicked
        sums[2] += record.reward
    return {"decisions": tally.decisions, "sessions": len(per_session),
            "ctr": tally.per_decision(tally.clicks),
            "ctr_se": ratio_se((s[1], s[0]) for s in per_session.values()),
            "reward": tally.per_decision(tally.reward),
            "reward_se": ratio_se((s[2], s[0]) for s in per_session.values()),
            "expected": tally.per_decision(tally.expected),
            "oracle": tally.per_decision(tally.oracle),
            "organic": tally.per_decision(tally.organic)}


def by_fifth(records: Sequence[Settled], start_ms: int, elapsed_ms: float,
             groups: Sequence[str] = GROUPS) -> list[dict[str, Any]]:
    """:func:`figures` per group for each fifth of the run (by display time)."""
    span = max(elapsed_ms, 1.0) / FIFTHS
    rows: list[dict[str, Any]] = []
    for fifth in range(FIFTHS):
        low, high = start_ms + fifth * span, start_ms + (fifth + 1) * span
        inside = [r for r in records if low <= r.ts < high or (fifth == FIFTHS - 1
                                                              and r.ts >= high)]
        rows.append({"from_s": round(fifth * span / 1000, 1),
                     "to_s": round((fifth + 1) * span / 1000, 1),
                     **{g: figures(r for r in inside if r.group == g) for g in groups}})
    return rows


class Scoreboard:
    """Every settled display of a world started at ``start_ms``, tallied per group, per site
    and group, per time bucket (``bucket_ms``, by display time) and group, and per arm; the
    last minute of them is kept for :meth:`progress`."""

    def __init__(self, start_ms: int, bucket_ms: int) -> None:
        self.start_ms = start_ms
        self.bucket_ms = bucket_ms
        self.tallies: dict[str, Tally] = {g: Tally() for g in GROUPS}
        self.site_tallies: dict[tuple[str, str], Tally] = {}
        self.buckets: dict[tuple[int, str], Tally] = {}
        self.arm_counts: dict[str, Counter[str]] = {g: Counter() for g in (*GROUPS, "oracle")}
        self.recent: deque[tuple[int, str, float, float, str]] = deque()  # settled, 60 s
        self.settled: list[Settled] = []

    def add(self, record: Settled, arm: str, best_arm: str | None) -> None:
        """One settled display that showed ``arm`` (``best_arm``: the oracle's, if known)."""
        self.settled.append(record)
        self.tallies[record.group].add(record)
        self.site_tallies.setdefault((record.site_id, record.group), Tally()).add(record)
        bucket = (record.ts - self.start_ms) // self.bucket_ms
        self.buckets.setdefault((bucket, record.group), Tally()).add(record)
        self.arm_counts[record.group][arm] += 1
        if record.group == "engine" and best_arm is not None:
            self.arm_counts["oracle"][best_arm] += 1
        self.recent.append((record.ts, record.group, record.reward, record.oracle, arm))
        while self.recent and self.recent[0][0] < record.ts - 60_000:
            self.recent.popleft()

    def progress(self) -> dict[str, Any]:
        """Decisions so far, and reward per decision and the engine's arm shares over the
        last minute of settled displays."""
        rewards: dict[str, list[float]] = {g: [] for g in GROUPS}
        oracle: list[float] = []
        arms: Counter[str] = Counter()
        for _, group, reward, best, arm in self.recent:
            rewards[group].append(reward)
            if group == "engine":
                oracle.append(best)
                arms[arm] += 1
        return {
            "decisions": sum(t.decisions for t in self.tallies.values()),
            "engine": _mean(rewards["engine"]), "control": _mean(rewards["control"]),
            "oracle": _mean(oracle), "arm_share": _shares(arms),
        }

    def summary(self, config: WorldConfig, counts: Counter[str], elapsed_ms: int,
                unsettled: int) -> dict[str, Any]:
        """Everything measured so far, with the world's ``counts`` of what it emitted;
        :data:`SUMMARY_FIELDS` are its keys, documented in docs/simulator.md, "The summary"."""
        elapsed_s = elapsed_ms / 1000.0
        total = events_produced(counts)
        engine = self.tallies["engine"]
        rates = {g: self.tallies[g].per_decision(self.tallies[g].reward) for g in GROUPS}
        overall = {g: figures(r for r in self.settled if r.group == g) for g in GROUPS}
        return {
            "run": {"sites": list(config.sites), "rate": config.rate,
                    "control_share": config.control_share,
                    "reward_window_s": config.window_ms / 1000,
                    "rewards": dict(config.rewards),
                    "bucket_s": config.bucket_ms / 1000,
                    "started_ms": self.start_ms, "elapsed_s": round(elapsed_s, 1)},
            "events": {"total": total, "served": counts["served"],
                       **{kind: counts[kind] for kind in CHAIN},
                       "per_s": round(total / elapsed_s, 1) if elapsed_s > 0 else None,
                       "catalog": counts["catalog"],
                       **{tag: counts[tag] for tag in (
                           "reactions_to_displays", "reactions_beyond_window", "browsing")}},
            "sessions": {"started": counts["sessions"],
                         "engine": counts["sessions_engine"],
                         "control": counts["sessions_control"],
                         "ended": counts["sessions_ended"]},
            "rankings": {"read": counts["rankings_read"],
                         "session": counts["rankings_session"],
                         "default": counts["rankings_default"]},
            "decisions": {"total": sum(t.decisions for t in self.tallies.values()),
                          **{g: self.tallies[g].decisions for g in GROUPS},
                          "engine_from_default": counts["engine_from_default"],
                          "unsettled": unsettled,
                          "served": {g: counts[f"served_{g}"] for g in GROUPS}},
            "reward_per_decision": {**rates, "oracle": engine.per_decision(engine.oracle),
                                    "engine_expected": engine.per_decision(engine.expected),
                                    "engine_from_organic": engine.per_decision(engine.organic)},
            "uplift_vs_control": (round(rates["engine"] / rates["control"] - 1, 4)
                                  if rates["engine"] is not None and rates["control"] else None),
            "regret": {"total": round(engine.oracle - engine.expected, 2),
                       "per_decision": engine.per_decision(engine.oracle - engine.expected)},
            "arm_share": {group: _shares(self.arm_counts[group])
                          for group in ("engine", "control", "oracle")},
            "per_site": {site: self._site_summary(site) for site in config.sites},
            "timeline": self._timeline_rows(),
            "ctr": {g: overall[g]["ctr"] for g in GROUPS},
            "by_fifth": by_fifth(self.settled, self.start_ms, elapsed_ms),
            "standard_error": {"over": "sessions",
                               "ctr": {g: overall[g]["ctr_se"] for g in GROUPS},
                               "reward_per_decision": {g: overall[g]["reward_se"]
                                                       for g in GROUPS}},
        }

    def _site_summary(self, site: str) -> dict[str, Any]:
        tallies = {g: self.site_tallies.get((site, g), Tally()) for g in GROUPS}
        return {"decisions": {g: t.decisions for g, t in tallies.items()},
                "reward_per_decision": {**{g: t.per_decision(t.reward)
                                           for g, t in tallies.items()},
                                        "oracle": tallies["engine"].per_decision(
                                            tallies["engine"].oracle)}}

    def _timeline_rows(self) -> list[dict[str, Any]]:
        """Per time bucket (by display time): decisions and reward per decision of the
        engine and the control, the oracle's, and the engine's regret."""
        rows = []
        cumulative = 0.0
        last = max((bucket for bucket, _ in self.buckets), default=-1)
        for bucket in range(last + 1):
            engine = self.buckets.get((bucket, "engine"), Tally())
            control = self.buckets.get((bucket, "control"), Tally())
            regret = engine.oracle - engine.expected
            cumulative += regret
            rows.append({"t_s": bucket * self.bucket_ms / 1000,
                         "engine_decisions": engine.decisions,
                         "control_decisions": control.decisions,
                         "engine": engine.per_decision(engine.reward),
                         "control": control.per_decision(control.reward),
                         "oracle": engine.per_decision(engine.oracle),
                         "engine_expected": engine.per_decision(engine.expected),
                         "regret": round(regret, 3), "cumulative_regret": round(cumulative, 3)})
        return rows


def events_produced(counts: Counter[str]) -> int:
    """Displays and reactions emitted so far (the catalog not included), from a world's
    counts."""
    return counts["served"] + sum(counts[kind] for kind in CHAIN)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {arm: round(n / total, 4) for arm, n in sorted(counts.items())} if total else {}
