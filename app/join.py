"""The reward join of one session: reactions attributed to the displays they answer.

Pure and synchronous. The caller owns stream time (the largest event time seen on the
partition) and passes it in; nothing here reads a clock.

Rules (README, "The reward join"):

- a reaction counts for a display of the same session when
  ``served.ts <= reaction.ts <= served.ts + window``, and its ``served_id`` names the
  display, or it has none and its item is among the served items (the latest such
  display wins);
- the decision's reward is the maximum reward of its reactions; it closes when stream time
  passes ``served.ts + window + grace``, or at once when the maximum reward is reached;
- a reaction that finds no display yet is held until stream time passes
  ``reaction.ts + grace`` (its display may still be on its way), then dropped as unattributed;
- a reaction whose display has already closed is late and never applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.events import ClosedDecision, Context, Outcome, Reaction, Served

# Closed displays remembered per session, so a reaction after the close is recognised as late.
RECENTLY_CLOSED_KEPT = 16


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

    def close(self, closed_by: str) -> ClosedDecision:
        s = self.served
        return ClosedDecision(
            served_id=s.event_id, ranking_id=s.ranking_id, site_id=s.site_id,
            session_id=s.session_id, arm=self.arm, propensity=self.propensity,
            context=self.context, items=s.items, served_ts=s.ts, reward=self.reward,
            outcomes=tuple(self.outcomes), closed_by=closed_by,
        )


@dataclass
class SessionJoin:
    """Join state of one session: open displays, early reactions, recently closed displays."""

    pending: dict[str, PendingDisplay] = field(default_factory=dict)
    held: list[Reaction] = field(default_factory=list)
    recently_closed: dict[str, Served] = field(default_factory=dict)

    def next_deadline(self, rules: JoinRules) -> int | None:
        """The earliest stream time at which this session has something to close or drop."""
        times = [p.served.ts + rules.window_ms + rules.grace_ms for p in self.pending.values()]
        times += [r.ts + rules.grace_ms for r in self.held]
        return min(times) if times else None


@dataclass
class JoinResult:
    closed: list[ClosedDecision] = field(default_factory=list)
    late: list[Reaction] = field(default_factory=list)
    unattributed: list[Reaction] = field(default_factory=list)
    attributed: int = 0


def add_display(state: SessionJoin, display: PendingDisplay, stream_time: int,
                rules: JoinRules, closed_by: str = "window") -> JoinResult:
    """Open a display, then give it the held reactions that were waiting for it."""
    result = expire(state, stream_time, rules, closed_by)
    served = display.served
    state.pending[served.event_id] = display
    waiting, state.held = state.held, []
    for reaction in waiting:
        _attribute(state, reaction, stream_time, rules, result, hold_if_unmatched=True)
    return result


def add_reaction(state: SessionJoin, reaction: Reaction, stream_time: int,
                 rules: JoinRules, closed_by: str = "window") -> JoinResult:
    result = expire(state, stream_time, rules, closed_by)
    _attribute(state, reaction, stream_time, rules, result, hold_if_unmatched=True)
    return result


def expire(state: SessionJoin, stream_time: int, rules: JoinRules,
           closed_by: str = "window") -> JoinResult:
    """Close displays whose window plus grace has passed; drop held reactions past grace."""
    result = JoinResult()
    for served_id, display in list(state.pending.items()):
        if stream_time > display.served.ts + rules.window_ms + rules.grace_ms:
            _close(state, served_id, closed_by, result)
    keep = []
    for reaction in state.held:
        if stream_time > reaction.ts + rules.grace_ms:
            result.unattributed.append(reaction)
        else:
            keep.append(reaction)
    state.held = keep
    return result


def _attribute(state: SessionJoin, reaction: Reaction, stream_time: int, rules: JoinRules,
               result: JoinResult, hold_if_unmatched: bool) -> None:
    matches = [p for p in state.pending.values() if covers(p.served, reaction, rules.window_ms)]
    if matches:
        display = max(matches, key=lambda p: p.served.ts)
        display.reward = max(display.reward, rules.rewards.get(reaction.type, 0.0))
        display.outcomes.append(Outcome(reaction.type, reaction.item_id, reaction.ts,
                                        reaction.ts - display.served.ts))
        result.attributed += 1
        if display.reward >= rules.max_reward:
            _close(state, display.served.event_id, "max_reward", result)
        return
    if any(covers(s, reaction, rules.window_ms) for s in state.recently_closed.values()):
        result.late.append(reaction)
    elif stream_time > reaction.ts + rules.grace_ms or not hold_if_unmatched:
        result.unattributed.append(reaction)
    else:
        state.held.append(reaction)


def covers(served: Served, reaction: Reaction, window_ms: int) -> bool:
    """Whether ``reaction`` may be attributed to the display ``served``."""
    if not served.ts <= reaction.ts <= served.ts + window_ms:
        return False
    if reaction.served_id is not None:
        return reaction.served_id == served.event_id
    return reaction.item_id in served.items


def _close(state: SessionJoin, served_id: str, closed_by: str, result: JoinResult) -> None:
    display = state.pending.pop(served_id)
    result.closed.append(display.close(closed_by))
    state.recently_closed[served_id] = display.served
    while len(state.recently_closed) > RECENTLY_CLOSED_KEPT:
        state.recently_closed.pop(next(iter(state.recently_closed)))
