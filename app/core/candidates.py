"""Candidate generation: the ranked item list behind each arm, under the site's rules.

Each arm's own items come from the registry (:mod:`app.core.arms`); the ``learned`` arm ranks
the union of the other arms' leading items with the site's item model
(:class:`ItemSignals`, :mod:`app.core.ranker`).

Every arm falls back, in this order, when its own list is short: the arm's own items,
then the site's bestsellers, then its most engaged items (long window), then available items
from the catalog, then the session's own items. A fill-in is a generic list, so it leaves out
the item on the page (an arm that shows it, such as ``recent`` or ``coview``, chooses to),
unless nothing else is known. Items in the session's basket and items the catalog marks
unavailable are never recommended; items the catalog does not know are assumed available.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence

from app.core.arms import ARMS, ITEM_MODEL_ARMS, similar_votes
from app.core.catalog import CatalogItem, CatalogView
from app.core.decay import DecayedScores
from app.core.ranker import ItemRanker
from app.core.rules import NO_RULES, Rules
from app.core.session import Session
from app.core.stats import SiteStats

FILL_INS = ("sales", "popular")
NEXT_POOL = 20
KNN_POOL = 20


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
    item_model = arm in ITEM_MODEL_ARMS  # not a registered arm: a control's fixed list
    if item_model and signals is None:
        signals = ItemSignals(session, stats, catalog, ts)
    # The learned arm has looked its candidates up already: its lookups are reused.
    lookup = signals.known if signals is not None else catalog.item
    ruled = rules is not NO_RULES
    viewed = rules.hidden(session.recent_items)

    def can_show(item: str) -> bool:
        if item in session.basket or (viewed is not None and item in viewed):
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
    if signals is not None and item_model:
        candidates = signals.candidates(stats, size + len(session.basket))
        take((ranker or ItemRanker()).rank((item, signals.of(item)) for item in candidates),
             arm)
    elif fixed:
        take(((item, 0.0) for item in fixed), arm)
    else:
        take(ARMS[arm].items(session, stats, ts, wanted), arm)
    if len(picked) < size:
        _fill(session, stats, catalog, ts, wanted, take)
    if not rules.promotes:
        return picked
    return _promoted(picked, size, rules, placed_by,
                     lambda item: can_show(item) and lookup(session.site_id, item) is not None)


def _promoted(picked: list[tuple[str, float]], size: int, rules: Rules,
              placed_by: dict[str, str] | None, can_pin: Callable[[str], bool]
              ) -> list[tuple[str, float]]:
    """``picked`` under the site's promotions. A pinned item comes from a config, not from
    what shoppers engaged: ``can_pin`` requires the catalog to know it (a typo or a deleted
    item is not pinned to every ranking)."""
    promoted = rules.promote(picked, size, can_pin)
    if placed_by is not None:
        for item, _ in promoted[:rules.promoted_places_max]:
            if item in rules.pinned:
                placed_by[item] = "pinned"
            elif item in rules.boosted:
                placed_by[item] = "boosted"
    return promoted


def _fill(session: Session, stats: SiteStats, catalog: CatalogView, ts: int, wanted: int,
          take: Callable[[Iterable[tuple[str, float]], str], None]) -> None:
    """Fill a short list: bestsellers, popular items, the catalog, without the page's item;
    the session's own items last, the page's item included (a brand-new site knows no
    other)."""
    page = session.recent_items[-1:]
    for fallback in FILL_INS:
        take(((item, 0.0) for item, _ in stats.scores(fallback).top(wanted, ts)
              if item not in page), fallback)
    take(((item, 0.0) for item in catalog.site_items(session.site_id) if item not in page),
         "catalog")
    take(((item, 0.0) for item in reversed(session.recent_items)), "session")


class ItemSignals:
    """What the item model (:mod:`app.core.ranker`) knows of an item for one session at one
    moment (:data:`app.core.ranker.SIGNALS`), each scaled to [0, 1]: the session's interest
    in its category, co-engagement votes of the session's recent items, its popularity and
    trend, whether it shares the page's category, how recently the session viewed it,
    whether it is the page's item, how often visitors viewed it right after the page's item,
    and the votes of sessions like this one."""

    def __init__(self, session: Session, stats: SiteStats, catalog: CatalogView,
                 ts: int) -> None:
        self.session, self.catalog, self.ts = session, catalog, ts
        self.votes = similar_votes(session, stats, ts)
        self.popular, self.recent = stats.scores("popular"), stats.scores("recent")
        categories = session.categories.top(20, ts)
        self.categories = dict(categories)
        recent_items = session.recent_items
        self.page = recent_items[-1] if recent_items else None
        self.next = stats.scores("next", self.page).top(NEXT_POOL, ts) if self.page else []
        self.knn = stats.knn_votes(session.session_id, recent_items, ts, KNN_POOL) \
            if recent_items else []
        # Each signal as a share of the best item's: decayed values share one decay factor,
        # so stored (undecayed) values give the same shares.
        self._votes = _shares(self.votes)
        self._popular = _shares(self.popular.raw, _raw_top(self.popular))
        self._recent = _shares(self.recent.raw, _raw_top(self.recent))
        self._category_share = _shares(self.categories)
        self._next = _shares(dict(self.next))
        self._knn = _shares(dict(self.knn))
        self._viewed = {item: 1.0 / (1 + age) for age, item in enumerate(reversed(recent_items))}
        self._known: dict[str, CatalogItem | None] = {}
        self._page_category = self._category(self.page) if self.page else None

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
            self._viewed.get(item_id, 0.0),
            1.0 if item_id == self.page else 0.0,
            self._next(item_id),
            self._knn(item_id),
        )

    def candidates(self, stats: SiteStats, n: int) -> list[str]:
        """The pool the learned arm ranks: every arm's leading items (``n`` of the session's
        top category, co-engagement, "viewed next", sessions like this one and the session's
        own items, half as many of the rest)."""
        pool: dict[str, None] = {}
        for rank, category in enumerate(list(self.categories)[:2]):
            leaders = stats.scores("category", category).top(n >> rank, self.ts)
            pool.update((item, None) for item, _ in leaders)
        votes = self.votes
        pool.update((item, None) for item in heapq.nlargest(n, votes, key=votes.__getitem__))
        pool.update((item, None) for item, _ in self.next[:n])
        pool.update((item, None) for item, _ in self.knn[:n])
        pool.update((item, None) for item in reversed(self.session.recent_items[-n:]))
        pool.update((item, None) for item, _ in self.popular.top(n // 2, self.ts))
        pool.update((item, None) for item, _ in self.recent.top(n // 4, self.ts))
        return list(pool)


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
