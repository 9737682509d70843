"""Candidate generation: the ranked item list behind each arm, and the site statistics it uses.

Site statistics live under keys that start with the site id, so one site never reads
another's. Each reaction becomes an :class:`Engagement`, learned by :func:`learn_engagement`:
in the worker by the site's learner, into statistics every partition reads (the whole site's
traffic, :mod:`app.stream.site_stats`); in tools and unit tests, at once, into the store of
the partition that saw it (see :class:`app.core.engine.Engine`).

Every arm falls back, in this order, when its own list is short: the arm's own items,
then the site's bestsellers, then its most engaged items (long window), then available items
from the catalog. Items in the session's basket and items the catalog marks unavailable are
never recommended; items the catalog does not know are assumed available.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.core.catalog import CatalogItem, CatalogView
from app.core.decay import DecayedScores
from app.core.events import Reaction
from app.core.keys import state_key
from app.core.knn import SessionIndex
from app.core.ranker import ItemRanker
from app.core.rules import NO_RULES, Rules
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


@dataclass(frozen=True)
class Engagement:
    """What one reaction teaches the site's statistics, as its session saw it: the session's
    previous item (co-views), its region (regional bestsellers) and, for session kNN, its
    recent items. Small and plain, so it can travel to the site's learner on the decisions
    topic (:mod:`app.stream.site_stats`)."""

    site_id: str
    session_id: str
    item_id: str
    type: str
    ts: int
    category: str | None = None
    previous_item: str | None = None
    region: str | None = None
    session_items: tuple[str, ...] | None = None  # set when the site ranks with session_knn

    @classmethod
    def of(cls, session: Session, reaction: Reaction, sessions_index: bool) -> Engagement:
        """The engagement of ``reaction`` (call before ``session.engage``)."""
        item = reaction.item_id
        previous = session.recent_items[-1] if session.recent_items else None
        items = None
        if sessions_index and item != previous:  # as engage will have them
            kept = [i for i in session.recent_items if i != item][-(RECENT_ITEMS_KEPT - 1):]
            items = (*kept, item)
        region = session.context.get("region")
        return cls(reaction.site_id, reaction.session_id, item, reaction.type, reaction.ts,
                   reaction.category, previous, None if region is None else str(region), items)

    def to_value(self) -> dict[str, Any]:
        return {"kind": "engagement", **asdict(self)}

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Engagement:
        """An engagement read back; KeyError or ValueError unless every field has its type."""
        items = value.get("session_items")
        if items is not None and not isinstance(items, list | tuple):
            raise ValueError("session_items must be a list")
        engagement = cls(value["site_id"], value["session_id"], value["item_id"],
                         value["type"], value["ts"], value.get("category"),
                         value.get("previous_item"), value.get("region"),
                         None if items is None else tuple(items))
        strings = (engagement.site_id, engagement.session_id, engagement.item_id,
                   engagement.type)
        optional = (engagement.category, engagement.previous_item, engagement.region)
        if not all(isinstance(v, str) for v in strings) \
                or not all(v is None or isinstance(v, str) for v in optional) \
                or type(engagement.ts) is not int \
                or not all(isinstance(i, str) for i in engagement.session_items or ()) \
                or len(engagement.session_items or ()) > RECENT_ITEMS_KEPT:
            raise ValueError("an engagement needs string ids, an integer ts and at most "
                             f"{RECENT_ITEMS_KEPT} session items")
        return engagement


def learn_engagement(stats: SiteStats, engagement: Engagement) -> None:
    """Teach the site's statistics one engagement."""
    e = engagement
    weight = ENGAGEMENT_WEIGHT.get(e.type, 1.0)
    stats.add("popular", "", e.item_id, weight, e.ts)
    stats.add("recent", "", e.item_id, weight, e.ts)
    if e.type == "basket_add":
        stats.add("sales", "", e.item_id, 1.0, e.ts)
        if e.region is not None:
            stats.add("sales", f"region={e.region}", e.item_id, 1.0, e.ts)
    if e.category:
        stats.add("category", e.category, e.item_id, weight, e.ts)
    # Co-occurrence both ways with the session's latest item: "sessions like this one".
    if e.previous_item is not None and e.previous_item != e.item_id:
        stats.add("cooc", e.item_id, e.previous_item, weight, e.ts)
        stats.add("cooc", e.previous_item, e.item_id, weight, e.ts)
    if e.session_items is not None:
        stats.observe_session(e.session_id, list(e.session_items))


def learn_into(get: Getter, put: Setter, engagement: Engagement) -> None:
    """Teach the statistics behind ``get`` and ``put`` one engagement, written back at once."""
    stats = SiteStats(engagement.site_id, get, put)
    learn_engagement(stats, engagement)
    stats.flush()


def record_reaction(stats: SiteStats, session: Session, reaction: Reaction,
                    sessions_index: bool = True) -> None:
    """Teach the site statistics one reaction at once (call before ``session.engage``); the
    session index only when ``sessions_index`` (the site ranks with ``session_knn``)."""
    learn_engagement(stats, Engagement.of(session, reaction, sessions_index))


def arm_items(arm: str, session: Session, stats: SiteStats, catalog: CatalogView, ts: int,
              size: int, ranker: ItemRanker | None = None,
              signals: ItemSignals | None = None, rules: Rules = NO_RULES,
              placed_by: dict[str, str] | None = None,
              fixed: Sequence[str] = ()) -> list[tuple[str, float]]:
    """The ranked items ``arm`` would show this session, filled up by the fallbacks
    (``ranker``: the site's item model, for the ``learned`` arm; ``signals``: the session's
    :class:`ItemSignals` at ``ts`` when the caller has them already), under the site's
    business ``rules`` (``fixed``: a control variant's fixed list, :mod:`app.core.experiment`).
    ``placed_by``, when given, gets what placed each item: the arm, a fallback (``sales``,
    ``popular``, ``catalog``) or a promotion (``pinned``, ``boosted``)."""
    picked: list[tuple[str, float]] = []
    seen: set[str] = set()
    if arm == "learned" and signals is None:
        signals = ItemSignals(session, stats, catalog, ts)
    # The learned arm has looked its candidates up already: its lookups are reused.
    lookup = signals.known if signals is not None else catalog.item
    ruled = rules is not NO_RULES

    def can_show(item: str) -> bool:
        if item in session.basket:
            return False
        known = lookup(session.site_id, item)
        return (known is None or known.available) and (not ruled or rules.allows(item, known))

    def take(candidates: Iterable[tuple[str, float]], by: str) -> None:
        for item, score in candidates:
            if len(picked) >= size:
                return
            if item in seen:
                continue
            seen.add(item)
            if can_show(item):
                picked.append((item, score))
                if placed_by is not None:
                    placed_by[item] = by

    # Ask for more than needed: some candidates are in the basket or unavailable.
    wanted = 2 * size + len(session.basket)
    if signals is not None and arm == "learned":
        candidates = signals.candidates(stats, size + len(session.basket))
        take((ranker or ItemRanker()).rank((item, signals.of(item)) for item in candidates),
             arm)
    elif fixed:
        take(((item, 0.0) for item in fixed), arm)
    else:
        take(_own_items(arm, session, stats, ts, wanted), arm)
    for fallback in ("sales", "popular"):
        if len(picked) < size:
            take(((item, 0.0) for item, _ in stats.scores(fallback).top(wanted, ts)), fallback)
    if len(picked) < size:
        take(((item, 0.0) for item in catalog.site_items(session.site_id)), "catalog")
    if not rules.promotes:
        return picked
    def can_pin(item: str) -> bool:
        """A pinned item comes from a config, not from what shoppers engaged: the catalog
        must know it (a typo or a deleted item is not pinned to every ranking)."""
        return can_show(item) and lookup(session.site_id, item) is not None

    promoted = rules.promote(picked, size, can_pin)
    if placed_by is not None:
        for item, _ in promoted[:rules.promoted_places_max]:
            if item in rules.pinned:
                placed_by[item] = "pinned"
            elif item in rules.boosted:
                placed_by[item] = "boosted"
    return promoted


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
    return sorted(_similar_votes(session, stats, ts).items(), key=lambda kv: kv[1],
                  reverse=True)[:size]


def _similar_votes(session: Session, stats: SiteStats, ts: int) -> dict[str, float]:
    """Weighted voting: each recent item's neighbours vote, newer items with more weight."""
    votes: dict[str, float] = {}
    recent = session.recent_items[-SIMILAR_NEIGHBOURS:]
    for age, item in enumerate(reversed(recent)):
        for neighbour, weight in stats.scores("cooc", item).top(20, ts):
            if neighbour not in recent:
                votes[neighbour] = votes.get(neighbour, 0.0) + weight / (1 + age)
    return votes


class ItemSignals:
    """What the item model (:mod:`app.core.ranker`) knows of an item for one session at one
    moment, each signal scaled to [0, 1] by the session's or the site's best item."""

    def __init__(self, session: Session, stats: SiteStats, catalog: CatalogView,
                 ts: int) -> None:
        self.session, self.catalog, self.ts = session, catalog, ts
        self.votes = _similar_votes(session, stats, ts)
        self.popular, self.recent = stats.scores("popular"), stats.scores("recent")
        categories = session.categories.top(20, ts)
        self.categories = dict(categories)
        # Each signal as a share of the best item's: decayed values share one decay factor,
        # so stored (undecayed) values give the same shares.
        self._votes = _shares(self.votes)
        self._popular = _shares(self.popular.raw, _raw_top(self.popular))
        self._recent = _shares(self.recent.raw, _raw_top(self.recent))
        self._category_share = _shares(self.categories)
        self._known: dict[str, CatalogItem | None] = {}
        last = session.recent_items[-1] if session.recent_items else None
        self._page_category = self._category(last) if last else None

    def known(self, site_id: str, item_id: str) -> CatalogItem | None:
        """What the catalog says of ``item_id`` (looked up once: the signals and the arm's
        availability check both ask)."""
        if item_id not in self._known:
            self._known[item_id] = self.catalog.item(site_id, item_id)
        return self._known[item_id]

    def _category(self, item_id: str) -> str | None:
        known = self.known(self.session.site_id, item_id)
        return None if known is None else known.category

    def of(self, item_id: str) -> tuple[float, ...]:
        category = self._category(item_id)
        return (
            self._category_share(category) if category is not None else 0.0,
            self._votes(item_id),
            self._popular(item_id),
            self._recent(item_id),
            1.0 if category is not None and category == self._page_category else 0.0,
        )

    def candidates(self, stats: SiteStats, n: int) -> list[str]:
        """The pool the learned arm ranks: the other arms' leading items (``n`` of the
        session's top category and of co-views, half as many of the rest)."""
        pool: dict[str, None] = {}
        for rank, category in enumerate(list(self.categories)[:2]):
            leaders = stats.scores("category", category).top(n >> rank, self.ts)
            pool.update((item, None) for item, _ in leaders)
        votes = self.votes
        pool.update((item, None) for item in heapq.nlargest(n, votes, key=votes.__getitem__))
        pool.update((item, None) for item, _ in self.popular.top(n // 2, self.ts))
        pool.update((item, None) for item, _ in self.recent.top(n // 4, self.ts))
        return [item for item in pool if item not in self.session.recent_items[-1:]]


def _raw_top(scores: DecayedScores) -> float:
    """The largest stored value: the first leader's (kept in order as values change)."""
    return scores.leaders[0][1] if scores.leaders else 0.0


def _shares(values: dict[str, float], top: float | None = None) -> Callable[[str], float]:
    """A key's value as a share of the largest, ``top`` when known (0 for keys not there)."""
    if top is None:
        top = max(values.values(), default=0.0)
    if top <= 0:
        return lambda key: 0.0
    scale, get = 1.0 / top, values.get
    return lambda key: get(key, 0.0) * scale
