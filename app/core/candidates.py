"""Candidate generation: the ranked item list behind each arm, and the site statistics it uses.

Site statistics live in the partition's state under keys that start with the site id, so one
site never reads another's. Each partition keeps statistics of the sessions it owns, which
is a uniform sample of the site's traffic because sessions are spread by key.

Every arm falls back, in this order, when its own list is short: the arm's own items,
then the site's bestsellers, then its most engaged items (long window), then available items
from the catalog. Items in the session's basket and items the catalog marks unavailable are
never recommended; items the catalog does not know are assumed available.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from app.core.catalog import CatalogView
from app.core.decay import DecayedScores
from app.core.events import Reaction
from app.core.keys import state_key
from app.core.knn import SessionIndex
from app.core.session import ENGAGEMENT_WEIGHT, RECENT_ITEMS_KEPT, Session

HOUR_MS = 3_600_000
# name: (half-life, capacity)
STAT_SHAPES = {
    "sales": (7 * 24 * HOUR_MS, 300),  # basket adds: bestsellers
    "popular": (24 * HOUR_MS, 500),  # all engagement, long window: baseline and fallback
    "recent": (HOUR_MS // 6, 500),  # all engagement, short window: trending
    "category": (24 * HOUR_MS, 50),  # engagement within one category
    "cooc": (24 * HOUR_MS, 20),  # items engaged in the same sessions as one item
}
# Trending compares the short window with the long one; smoothing keeps one click on a
# brand-new item from topping the list.
TRENDING_SMOOTHING = 1.0
TRENDING_POOL = 64
SIMILAR_NEIGHBOURS = 5

Getter = Callable[[str], Any]
Setter = Callable[[str, Any], None]


def stat_key(site_id: str, name: str, part: str = "") -> str:
    return state_key("stat", site_id, name, part)


class SiteStats:
    """Read-through, write-back access to one site's statistics in a partition's state."""

    def __init__(self, site_id: str, get: Getter, put: Setter) -> None:
        self.site_id = site_id
        self._get = get
        self._put = put
        self._loaded: dict[str, DecayedScores] = {}
        self._dirty: set[str] = set()
        self._sessions: SessionIndex | None = None
        self._sessions_changed = False

    def sessions(self) -> SessionIndex:
        """The site's recent sessions by their items, for session kNN."""
        if self._sessions is None:
            self._sessions = self._get(state_key("knn", self.site_id)) or SessionIndex()
        return self._sessions

    def observe_session(self, session_id: str, items: list[str]) -> None:
        self.sessions().observe(session_id, items)
        self._sessions_changed = True

    def scores(self, name: str, part: str = "") -> DecayedScores:
        key = stat_key(self.site_id, name, part)
        scores = self._loaded.get(key)
        if scores is None:
            scores = self._get(key)
            if scores is None:
                half_life, capacity = STAT_SHAPES[name]
                scores = DecayedScores(half_life, capacity)
            self._loaded[key] = scores
        return scores

    def add(self, name: str, part: str, item_id: str, weight: float, ts: int) -> None:
        self.scores(name, part).add(item_id, weight, ts)
        self._dirty.add(stat_key(self.site_id, name, part))

    def flush(self) -> None:
        for key in self._dirty:
            self._put(key, self._loaded[key])
        self._dirty.clear()
        if self._sessions_changed:
            self._put(state_key("knn", self.site_id), self._sessions)
            self._sessions_changed = False


def record_reaction(stats: SiteStats, session: Session, reaction: Reaction,
                    sessions_index: bool = True) -> None:
    """Teach the site statistics one reaction (call before ``session.engage``); the session
    index only when ``sessions_index`` (the site ranks with ``session_knn``)."""
    weight = ENGAGEMENT_WEIGHT.get(reaction.type, 1.0)
    item, ts = reaction.item_id, reaction.ts
    stats.add("popular", "", item, weight, ts)
    stats.add("recent", "", item, weight, ts)
    if reaction.type == "basket_add":
        stats.add("sales", "", item, 1.0, ts)
        region = session.context.get("region")
        if region is not None:
            stats.add("sales", f"region={region}", item, 1.0, ts)
    if reaction.category:
        stats.add("category", reaction.category, item, weight, ts)
    # Co-occurrence both ways with the session's latest item: "sessions like this one".
    if session.recent_items and session.recent_items[-1] != item:
        previous = session.recent_items[-1]
        stats.add("cooc", item, previous, weight, ts)
        stats.add("cooc", previous, item, weight, ts)
    if sessions_index and item not in session.recent_items[-1:]:  # as engage will have them
        items = [i for i in session.recent_items if i != item][-(RECENT_ITEMS_KEPT - 1):]
        stats.observe_session(session.session_id, [*items, item])


def arm_items(arm: str, session: Session, stats: SiteStats, catalog: CatalogView, ts: int,
              size: int) -> list[tuple[str, float]]:
    """The ranked items ``arm`` would show this session, filled up by the fallbacks."""
    picked: list[tuple[str, float]] = []
    seen: set[str] = set()

    def take(candidates: Iterable[tuple[str, float]]) -> None:
        for item, score in candidates:
            if len(picked) >= size:
                return
            if item in seen or item in session.basket:
                continue
            seen.add(item)
            known = catalog.item(session.site_id, item)
            if known is None or known.available:
                picked.append((item, score))

    # Ask for more than needed: some candidates are in the basket or unavailable.
    wanted = 2 * size + len(session.basket)
    take(_own_items(arm, session, stats, ts, wanted))
    for fallback in ("sales", "popular"):
        if len(picked) < size:
            take((item, 0.0) for item, _ in stats.scores(fallback).top(wanted, ts))
    if len(picked) < size:
        take((item, 0.0) for item in catalog.site_items(session.site_id))
    return picked


def _own_items(arm: str, session: Session, stats: SiteStats, ts: int,
               n: int) -> list[tuple[str, float]]:
    if arm in ("category1", "category2"):
        categories = session.top_categories(2)
        rank = 0 if arm == "category1" else 1
        if len(categories) <= rank:
            return []
        return stats.scores("category", categories[rank]).top(n, ts)
    if arm == "bestsellers":
        region = session.context.get("region")
        regional = stats.scores("sales", f"region={region}").top(n, ts) if region else []
        return regional + stats.scores("sales").top(n, ts)
    if arm == "trending":
        return _trending(stats, ts, n)
    if arm == "similar":
        return _similar(session, stats, ts, n)
    if arm == "session_knn":
        return stats.sessions().vote(session.recent_items, n, session.session_id)
    raise ValueError(f"unknown arm {arm!r}")


def _trending(stats: SiteStats, ts: int, size: int) -> list[tuple[str, float]]:
    """Lift of the short window over the item's own long-window baseline, among the items
    with the most recent engagement (an item cannot trend without any)."""
    recent, popular = stats.scores("recent"), stats.scores("popular")
    lift = {item: value / (popular.value(item, ts) + TRENDING_SMOOTHING)
            for item, value in recent.top(TRENDING_POOL, ts)}
    return heapq.nlargest(size, lift.items(), key=lambda kv: kv[1])


def _similar(session: Session, stats: SiteStats, ts: int, size: int) -> list[tuple[str, float]]:
    """Weighted voting: each recent item's neighbours vote, newer items with more weight."""
    votes: dict[str, float] = {}
    recent = session.recent_items[-SIMILAR_NEIGHBOURS:]
    for age, item in enumerate(reversed(recent)):
        for neighbour, weight in stats.scores("cooc", item).top(20, ts):
            if neighbour not in recent:
                votes[neighbour] = votes.get(neighbour, 0.0) + weight / (1 + age)
    return sorted(votes.items(), key=lambda kv: kv[1], reverse=True)[:size]
