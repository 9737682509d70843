"""The join's result depends on what each topic holds, never on how the topics interleave.

A worker reads its four input topics at different paces, above all while catching up on a
backlog after a restart. Here a seeded stream (every topic in event-time order, as sites
produce them) is fed to the engine in many random interleavings; every run must give the
same rewards as a plain reference join written independently below.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.contract.codec import EncodedStore
from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.events import Reaction, Served
from app.core.policy import ContextualBandit
from app.core.store import MemoryStore
from app.settings import Settings

T0 = 1_700_000_000_000
WINDOW_MS, GRACE_MS = 20_000, 5_000
REWARD = {"click": 1.0, "detail_view": 1.0, "basket_add": 3.0}
KINDS = ("served", "click", "detail_view", "basket_add")


class Policies:
    def __init__(self) -> None:
        self.policy = ContextualBandit(Settings().bandit.arms, seed=1)

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        return self.policy, 0


def seeded_stream(seed: int, sessions: int = 40) -> dict[str, list[Any]]:
    """Displays and reactions of many sessions, each topic in event-time order, with the
    edge cases mixed in: served_id and item matches, several displays of one item, reactions
    after a maximum reward (late), reactions with no display, reactions outside the window,
    repeated event ids."""
    rng = random.Random(seed)
    events: list[Any] = []
    for n in range(sessions):
        site, session = f"site{n % 3}", f"s{n}"
        ts = T0 + rng.randrange(60_000)
        displays = []
        for d in range(rng.randrange(1, 5)):
            ts += rng.randrange(0, 15_000)
            items = tuple(f"i{rng.randrange(8)}" for _ in range(3))
            displays.append(Served(f"{session}-d{d}", site, session, ts, items))
        events += displays
        for r in range(rng.randrange(0, 7)):
            display = rng.choice(displays)
            kind = rng.choice(("click", "detail_view", "basket_add", "click"))
            delay = rng.choice((0, 500, 3_000, 12_000, 19_999, 20_000, 20_001, 31_000))
            item = rng.choice(display.items) if rng.random() < 0.85 else "i-none"
            served_id = display.event_id if rng.random() < 0.3 else None
            events.append(Reaction(f"{session}-r{r}", kind, site, session,
                                   display.ts + delay, item, served_id=served_id))
            if rng.random() < 0.1:  # the site sent it twice
                events.append(events[-1])
    by_kind: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for e in events:
        by_kind["served" if isinstance(e, Served) else e.type].append(e)
    for kind in KINDS:
        by_kind[kind].sort(key=lambda e: e.ts)
    return by_kind


def reference_join(by_kind: dict[str, list[Any]]) -> dict[str, tuple[float, list]]:
    """The join, written plainly: each reaction in time order goes to the latest display of
    its session that it answers, unless that display already has the maximum reward."""
    displays: dict[tuple[str, str], list[Served]] = {}
    for d in by_kind["served"]:
        displays.setdefault((d.site_id, d.session_id), []).append(d)
    result: dict[str, tuple[float, list]] = {d.event_id: (0.0, []) for d in by_kind["served"]}
    seen: set[tuple[str, str, str]] = set()
    reactions = [r for kind in KINDS[1:] for r in by_kind[kind]]
    for r in sorted(reactions, key=lambda r: (r.ts, r.event_id)):
        if (r.site_id, r.session_id, r.event_id) in seen:
            continue
        seen.add((r.site_id, r.session_id, r.event_id))

        def answers(d: Served, r: Reaction = r) -> bool:
            in_window = d.ts <= r.ts <= d.ts + WINDOW_MS
            if r.served_id is not None:
                return in_window and r.served_id == d.event_id
            return in_window and r.item_id in d.items

        candidates = [d for d in displays.get((r.site_id, r.session_id), []) if answers(d)]
        if not candidates:
            continue
        best = max(candidates, key=lambda d: (d.ts, d.event_id))
        reward, outcomes = result[best.event_id]
        if reward >= max(REWARD.values()):
            continue  # closed at the maximum reward: late
        result[best.event_id] = (max(reward, REWARD[r.type]), outcomes + [(r.type, r.item_id)])
    return result


def run_engine(by_kind: dict[str, list[Any]], seed: int) -> dict[str, tuple[float, list]]:
    """Feed the topics to the engine in one random interleaving that keeps each topic's
    order, then read every topic far ahead so all decisions close."""
    rng = random.Random(seed)
    engine = Engine(Settings(), Policies(), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    cursors = {kind: 0 for kind in KINDS}
    decided: dict[str, tuple[float, list]] = {}

    def handle(event: Any) -> None:
        for decision in engine.handle(store, event).rewards:
            assert decision.served_id not in decided, "a display closed twice"
            decided[decision.served_id] = (decision.reward,
                                           [(o.type, o.item_id) for o in decision.outcomes])

    while any(cursors[k] < len(by_kind[k]) for k in KINDS):
        # Skewed pace: some topics run far ahead of others for a while.
        kind = rng.choice([k for k in KINDS if cursors[k] < len(by_kind[k])])
        for _ in range(rng.choice((1, 1, 2, 5, 20))):
            if cursors[kind] < len(by_kind[kind]):
                handle(by_kind[kind][cursors[kind]])
                cursors[kind] += 1
    end = T0 + 3_600_000
    handle(Served("end-d", "end", "end", end, ("x",)))
    for kind in KINDS[1:]:
        handle(Reaction(f"end-{kind}", kind, "end", "end", end, "x"))
    return {k: v for k, v in decided.items() if not k.startswith("end")}


@pytest.mark.parametrize("stream_seed", [1, 2, 3])
def test_every_interleaving_gives_the_reference_rewards(stream_seed):
    by_kind = seeded_stream(stream_seed)
    expected = reference_join(by_kind)
    assert sum(1 for reward, _ in expected.values() if reward == 3.0) > 5  # cases present
    assert sum(1 for reward, _ in expected.values() if reward == 0.0) > 5
    for interleaving in range(8):
        got = run_engine(by_kind, seed=100 * stream_seed + interleaving)
        assert got.keys() == expected.keys(), "every display has exactly one decision"
        mismatched = {k: (got[k], expected[k]) for k in expected
                      if got[k][0] != expected[k][0]
                      or sorted(got[k][1]) != sorted(expected[k][1])}
        assert not mismatched, (interleaving, mismatched)


def test_a_reaction_waits_for_a_display_at_its_own_millisecond():
    # Every topic has been read up to T (another session's events are at T) when s1's click
    # at T arrives, but s1's second display, also at T, comes later on its topic: the click
    # must wait for it (the latest display it answers wins), not go to the first display.
    engine = Engine(Settings(), Policies(), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    t = T0 + 1_000
    events = [Served("s1-d1", "shop", "s1", T0, ("a",)),
              Served("s0-d1", "shop", "s0", t, ("x",)),
              Reaction("s0-v1", "detail_view", "shop", "s0", t, "x"),
              Reaction("s0-b1", "basket_add", "shop", "s0", t, "x"),
              Reaction("s0-c1", "click", "shop", "s0", t, "x"),
              Reaction("s1-c1", "click", "shop", "s1", t, "a"),
              Served("s1-d2", "shop", "s1", t, ("a",)),
              Served("end-d", "end", "end", T0 + 3_600_000, ("x",))]
    events += [Reaction(f"end-{kind}", kind, "end", "end", T0 + 3_600_000, "x")
               for kind in KINDS[1:]]
    rewards = {d.served_id: d.reward for e in events for d in engine.handle(store, e).rewards}
    assert rewards["s1-d2"] == 1.0 and rewards["s1-d1"] == 0.0
