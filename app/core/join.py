"""The reward join of one session: reactions attributed to the displays they answer.

Pure and synchronous. The caller owns stream time and passes it in as ``watermark``: the
event time up to which every input topic of the partition has been read (see app.core.stream_time).
Decisions are taken only behind the watermark, so their outcome does not depend on how fast
each topic happened to be read, only on what each topic holds.

Rules (docs/reward-join.md):

- a reaction counts for a display of the same session when
  ``served.ts <= reaction.ts <= served.ts + window``, and its ``served_id`` names the
  display, or it has none and its item is among the served items; the latest such display
  wins;
- a reaction is attributed once the watermark passes its time (every display it could
  answer has been read by then: one at the same millisecond may still be unread while the
  watermark equals it); one that finds no display waits until the watermark passes
  ``reaction.ts + grace`` (a display produced late may still come), then counts as
  unattributed; one whose display has already closed is late and never applied;
- the decision's reward is the maximum reward of its reactions; it closes when the
  watermark passes ``served.ts + window + grace``, or at once when the maximum reward is
  reached.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.core.events import Apprentice, ClosedDecision, Context, Outcome, Reaction, Served

# Closed displays remembered per session, so a reaction after the close is recognised as late.
RECENTLY_CLOSED_KEPT = 16
# Outcomes a display lists at most (and then only ones that raised its reward).
OUTCOMES_KEPT = 32
# A session's open displays and waiting reactions at most: far more than a shopper makes
# within a reward window; a bot's burst must not grow one state record past Kafka's limit.
PENDING_KEPT = 128
WAITING_KEPT = 256


@dataclass(frozen=True)
class JoinRules:
    window_ms: int
    grace_ms: int
    rewards: Mapping[str, float]

    @property
    def max_reward(self) -> float:
        return max(self.rewards.values())


@dataclass
class PendingDisplay:
    served: Served
    arm: str | None
    propensity: float | None
    context: Context
    reward: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    # Each shown item's signals at display time, for the item model (app.core.ranker).
    signals: tuple[tuple[float, ...], ...] = ()
    experiment: str | None = None
    variant: str | None = None
    apprentice: Apprentice | None = None

    def close(self, closed_by: str) -> ClosedDecision:
        s = self.served
        return ClosedDecision(
            served_id=s.event_id, ranking_id=s.ranking_id, site_id=s.site_id,
            session_id=s.session_id, arm=self.arm, propensity=self.propensity,
            context=self.context, items=s.items, served_ts=s.ts, reward=self.reward,
            outcomes=tuple(self.outcomes), closed_by=closed_by, signals=self.signals,
            experiment=self.experiment, variant=self.variant, apprentice=self.apprentice,
            trace=s.trace,
        )


@dataclass
class SessionJoin:
    """Join state of one session: open displays, waiting reactions, recently closed ones."""

    pending: dict[str, PendingDisplay] = field(default_factory=dict)
    waiting: list[Reaction] = field(default_factory=list)  # ordered by (ts, event_id)
    recently_closed: dict[str, Served] = field(default_factory=dict)

    def next_due(self, rules: JoinRules, watermark: int) -> int | None:
        """The earliest watermark at which :func:`advance` has something to do here."""
        times = [p.served.ts + rules.window_ms + rules.grace_ms + 1
                 for p in self.pending.values()]
        for reaction in self.waiting:  # the first not yet ready, and every ready one
            if reaction.ts >= watermark:
                times.append(reaction.ts + 1)
                break
            times.append(reaction.ts + rules.grace_ms + 1)
        return min(times) if times else None


@dataclass
class JoinResult:
    closed: list[ClosedDecision] = field(default_factory=list)
    late: list[Reaction] = field(default_factory=list)
    unattributed: list[Reaction] = field(default_factory=list)
    attributed: int = 0
    # (display, reaction) of each attribution to a traced display, for its trace.
    traced: list[tuple[Served, Reaction]] = field(default_factory=list)


def add_display(state: SessionJoin, display: PendingDisplay) -> JoinResult:
    """Open a display; past PENDING_KEPT open ones (a bot, not a shopper) the oldest closes
    early with the reward it has, ``closed_by: evicted``."""
    result = JoinResult()
    state.pending[display.served.event_id] = display
    while len(state.pending) > PENDING_KEPT:
        _close(state, next(iter(state.pending)), "evicted", result)
    return result


def add_reaction(state: SessionJoin, reaction: Reaction) -> JoinResult:
    """Queue a reaction until the watermark passes it; past WAITING_KEPT waiting ones the
    earliest is given up as unattributed (a session's state stays small)."""
    result = JoinResult()
    keys = [(r.ts, r.event_id) for r in state.waiting]
    state.waiting.insert(bisect.bisect(keys, (reaction.ts, reaction.event_id)), reaction)
    if len(state.waiting) > WAITING_KEPT:
        result.unattributed.append(state.waiting.pop(0))
    return result


def advance(state: SessionJoin, watermark: int, rules: JoinRules,
            closed_by: str = "window") -> JoinResult:
    """Attribute the reactions the watermark has passed, in time order, then close the
    displays whose window and grace it has passed."""
    result = JoinResult()
    still_waiting = []
    for reaction in state.waiting:
        if reaction.ts >= watermark or not _attribute(state, reaction, watermark, rules, result):
            still_waiting.append(reaction)
    state.waiting = still_waiting
    for served_id, display in list(state.pending.items()):
        if watermark > display.served.ts + rules.window_ms + rules.grace_ms:
            _close(state, served_id, closed_by, result)
    return result


def covers(served: Served, reaction: Reaction, window_ms: int) -> bool:
    """Whether ``reaction`` may be attributed to the display ``served``."""
    if not served.ts <= reaction.ts <= served.ts + window_ms:
        return False
    if reaction.served_id is not None:
        return reaction.served_id == served.event_id
    return reaction.item_id in served.items


def _attribute(state: SessionJoin, reaction: Reaction, watermark: int, rules: JoinRules,
               result: JoinResult) -> bool:
    """Settle one ready reaction; False when it must keep waiting for its display."""
    candidates = [p.served for p in state.pending.values()]
    candidates += state.recently_closed.values()
    matches = [s for s in candidates if covers(s, reaction, rules.window_ms)]
    if not matches:
        if watermark > reaction.ts + rules.grace_ms:
            result.unattributed.append(reaction)
            return True
        return False
    best = max(matches, key=lambda s: (s.ts, s.event_id))
    display = state.pending.get(best.event_id)
    if display is None:
        result.late.append(reaction)
        return True
    reward = rules.rewards.get(reaction.type, 0.0)
    if len(display.outcomes) < OUTCOMES_KEPT or reward > display.reward:
        # Past the cap only an outcome that raises the reward is kept (the reward record
        # must stay small however often a visitor clicks).
        display.outcomes.append(Outcome(reaction.type, reaction.item_id, reaction.ts,
                                        reaction.ts - best.ts, reaction.price))
    display.reward = max(display.reward, reward)
    result.attributed += 1
    if best.trace is not None:
        result.traced.append((best, reaction))
    if display.reward >= rules.max_reward:
        _close(state, best.event_id, "max_reward", result)
    return True


def _close(state: SessionJoin, served_id: str, closed_by: str, result: JoinResult) -> None:
    display = state.pending.pop(served_id)
    result.closed.append(display.close(closed_by))
    state.recently_closed[served_id] = display.served
    while len(state.recently_closed) > RECENTLY_CLOSED_KEPT:
        del state.recently_closed[next(iter(state.recently_closed))]
