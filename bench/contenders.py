"""The baselines' online models (:mod:`bench.baselines` plays them against a world).

Each learns from the records a world emits, as the engine would be sent them, and ranks
items for a session on demand; :mod:`bench.baselines` describes each strategy.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.contract.topics import BASKET_ADDS, CATALOG, CLICKS, DETAIL_VIEWS, SERVED

VIEWS = (CLICKS, DETAIL_VIEWS)
ENGAGEMENT = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)
HALF_LIFE_MS = 60_000  # popular's
ORDER_REFRESH_MS = 1_000


@dataclass(eq=False)  # hashed by identity: sessions index other sessions
class Session:
    basket: set[str] = field(default_factory=set)
    last_viewed: str | None = None
    viewed: dict[str, None] = field(default_factory=dict)  # distinct items, oldest first
    clicked_last: bool = False  # the last view was a click (its detail view is the same visit)


class Contender:
    """What every baseline knows: the catalog's available items and each session's basket
    and viewed items, from the records the world emits."""

    name = "contender"

    def __init__(self, seed: int, size: int) -> None:
        self.rng = random.Random(f"{seed}:{self.name}")
        self.size = size
        self.available: dict[str, dict[str, bool]] = {}  # site -> item -> available
        self.sessions: dict[tuple[str, str], Session] = {}
        self._pools: dict[str, list[str]] = {}  # site -> its available items

    def observe(self, topic: str, value: dict[str, Any]) -> None:
        site = value["site_id"]
        if topic == CATALOG:
            self.available.setdefault(site, {})[value["item_id"]] = value["available"]
            self._pools.pop(site, None)
            return
        session = self.sessions.setdefault((site, value["session_id"]), Session())
        if topic == SERVED:
            return
        item = value["item_id"]
        self.learn(site, session, topic, item, value["ts"])
        if topic == BASKET_ADDS:
            session.basket.add(item)
        if topic in VIEWS:
            session.viewed.pop(item, None)
            session.viewed[item] = None
            session.last_viewed = item
            session.clicked_last = topic == CLICKS

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        """Update the contender's model with one reaction, before the session's state."""

    def candidates(self, site: str, session: Session) -> list[str]:
        pool = self._pools.get(site)
        if pool is None:
            pool = self._pools[site] = [item for item, ok in self.available.get(site, {}).items()
                                        if ok]
        return [item for item in pool if item not in session.basket] if session.basket \
            else pool

    def rank(self, site: str, session: Session) -> list[str]:
        raise NotImplementedError

    def ranking(self, site: str, session_id: str, ts: int, number: int) -> dict[str, Any]:
        """A ``reco.rankings`` record for the session, as the engine would publish it."""
        items = self.rank(site, self.sessions[(site, session_id)])
        return {"ranking_id": f"{self.name}-{number}", "site_id": site,
                "session_id": session_id, "ts": ts, "arm": self.name, "propensity": 1.0,
                "items": [{"item_id": item, "score": float(len(items) - n)}
                          for n, item in enumerate(items)],
                "model_version": str(number), "context": {}}

    def usable(self, site: str, session: Session, items: Iterable[str]) -> list[str]:
        """``items`` without unknown-unavailable ones and the session's basket, in order."""
        available = self.available.get(site, {})
        return [item for item in items
                if available.get(item, True) and item not in session.basket]


class RandomItems(Contender):
    name = "random"

    def rank(self, site: str, session: Session) -> list[str]:
        pool = self.candidates(site, session)
        return self.rng.sample(pool, min(self.size, len(pool)))


class Popular(Contender):
    """The most engaged items (clicks, detail views and basket adds alike), decayed with a
    half-life of ``HALF_LIFE_MS`` of event time, as a shop's own best-seller block follows
    the recent past. Its order is refreshed once per second of event time."""

    name = "popular"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        # Forward decay: an event at ts adds 2 ** (ts / half-life), so the order of the sums
        # is the order of the decayed counts at any later time.
        self.counts: dict[str, Counter[str]] = {}
        self.ref_ts: int | None = None
        self.now = 0
        self._order: dict[str, tuple[int, list[str]]] = {}  # site -> (ts, items best first)

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        if topic in ENGAGEMENT:
            if self.ref_ts is None or ts - self.ref_ts > 500 * HALF_LIFE_MS:
                self._rebase(ts)
            weight = 2.0 ** ((ts - self.ref_ts) / HALF_LIFE_MS)
            self.counts.setdefault(site, Counter())[item] += weight
            self.now = ts

    def _rebase(self, ts: int) -> None:
        """Move the reference time to ``ts``, far from float overflow."""
        factor = 2.0 ** ((ts - self.ref_ts) / HALF_LIFE_MS) if self.ref_ts is not None else 1.0
        for counts in self.counts.values():
            for item in counts:
                counts[item] /= factor
        self.ref_ts = ts

    def order(self, site: str) -> list[str]:
        """Every available item, the most engaged first (ties by catalog order)."""
        now = self.now
        cached = self._order.get(site)
        if cached is None or now - cached[0] >= ORDER_REFRESH_MS:
            counts = self.counts.get(site, Counter())
            available = [item for item, ok in self.available.get(site, {}).items() if ok]
            cached = self._order[site] = (now, sorted(available, key=lambda i: -counts[i]))
        return cached[1]

    def rank(self, site: str, session: Session) -> list[str]:
        return self.popular(site, session, frozenset())

    def popular(self, site: str, session: Session, leave_out: Container[str]) -> list[str]:
        picked: list[str] = []
        for item in self.order(site):
            if item not in leave_out and item not in session.basket:
                picked.append(item)
                if len(picked) == self.size:
                    break
        return picked

    def filled(self, site: str, session: Session, ranked: list[str]) -> list[str]:
        """``ranked`` cut to the list's size, or filled with the most popular items."""
        ranked = ranked[:self.size]
        if len(ranked) < self.size:
            ranked += self.popular(site, session, frozenset(ranked))[:self.size - len(ranked)]
        return ranked


class CoView(Popular):
    """Co-view counts: ``follows[site][a][b]`` is how often a view of ``b`` came right after
    a view of ``a`` in a session; ``a`` follows itself when a visitor views it again. A view
    is a click, or a detail view that is not the one right after the click of its item (the
    same visit)."""

    name = "coview"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        self.follows: dict[str, dict[str, Counter[str]]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        super().learn(site, session, topic, item, ts)
        last = session.last_viewed
        same_visit = topic == DETAIL_VIEWS and item == last and session.clicked_last
        if topic in VIEWS and last is not None and not same_visit:
            self.follows.setdefault(site, {}).setdefault(last, Counter())[item] += 1

    def rank(self, site: str, session: Session) -> list[str]:
        last = session.last_viewed
        after = self.follows.get(site, {}).get(last, Counter()) if last else Counter()
        ranked = sorted(after, key=lambda item: -after[item])  # ties: first counted first
        return self.filled(site, session, self.usable(site, session, ranked))


class Recent(Popular):
    """The session's viewed items, the latest view first; filled with the most popular."""

    name = "recent"

    def rank(self, site: str, session: Session) -> list[str]:
        return self.filled(site, session,
                           self.usable(site, session, reversed(session.viewed)))


class SessionKnn(Popular):
    """A plain session kNN (Jannach and Ludewig's SKNN): the ``neighbours`` past sessions
    most similar to this one (cosine over the sets of items viewed), each voting its
    similarity for every item it viewed; unbounded memory. Filled with the most popular."""

    name = "sknn"
    neighbours = 100

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        # (site, item) -> the sessions that viewed it, in order (dict keys: reproducible ties)
        self.sessions_of: dict[tuple[str, str], dict[Session, None]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        super().learn(site, session, topic, item, ts)
        if topic in VIEWS:
            self.sessions_of.setdefault((site, item), {})[session] = None

    def scores(self, site: str, session: Session) -> dict[str, float]:
        """Each item's vote: the summed similarity of the neighbours that viewed it."""
        mine = session.viewed.keys()
        overlap: Counter[Session] = Counter()
        for item in mine:
            overlap.update(self.sessions_of.get((site, item), {}).keys())
        overlap.pop(session, None)
        size = len(mine)
        similar = heapq.nlargest(
            self.neighbours, overlap,
            key=lambda other: overlap[other] / math.sqrt(size * len(other.viewed)))
        votes: dict[str, float] = {}
        for other in similar:
            weight = overlap[other] / math.sqrt(size * len(other.viewed))
            for item in other.viewed:
                votes[item] = votes.get(item, 0.0) + weight
        return votes

    def rank(self, site: str, session: Session) -> list[str]:
        votes = self.scores(site, session) if session.viewed else {}
        ranked = sorted(votes, key=lambda item: -votes[item])
        return self.filled(site, session, self.usable(site, session, ranked))


CONTENDERS: dict[str, Callable[[int, int], Contender]] = {
    c.name: c for c in (RandomItems, Popular, CoView, Recent, SessionKnn)}
