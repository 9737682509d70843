"""A site's business rules: what its rankings may never hold, and its promotions.

Rules are deterministic and the same whichever arm was chosen, so the bandit's propensities
stay exact: they change which items an arm's list holds, never which arm is chosen.

- **Exclusions.** Items of an excluded category (as the catalog knows it), excluded items,
  and items the catalog prices outside ``[price_min, price_max]`` are skipped like
  unavailable ones: the arm's fallbacks fill their places. Items without a known price pass.
- **What the visitor viewed.** ``exclude_viewed``: ``"none"`` (the default: an arm may show
  what the session viewed, as a "recently viewed" block does), ``"page"`` (never the item on
  the page) or ``"session"`` (none of the session's recent items).
- **Promotions.** ``pinned`` items come first, in their order, whatever the arm chose;
  ``boosted`` items the arm's list holds move up behind them; together they take at most
  ``promoted_places_max`` places. A promotion that is excluded, unavailable or in the basket
  is left out, and so is a pinned item the catalog does not know (a typo, a deleted item).

>>> rules = Rules(exclude_items=frozenset({"x"}), pinned=("p",), boosted=("b",))
>>> rules.allows("x", None), rules.allows("y", None)
(False, True)
>>> rules.promote([("a", 0.9), ("b", 0.5), ("c", 0.1)], 3, lambda item: True)
[('p', 0.0), ('b', 0.5), ('a', 0.9)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.core.catalog import CatalogItem

PROMOTED_PLACES_DEFAULT = 3


@dataclass(frozen=True)
class Rules:
    exclude_categories: frozenset[str] = frozenset()
    exclude_items: frozenset[str] = frozenset()
    price_min: float | None = None
    price_max: float | None = None
    pinned: tuple[str, ...] = ()
    boosted: tuple[str, ...] = ()
    promoted_places_max: int = PROMOTED_PLACES_DEFAULT
    exclude_viewed: str = "none"  # "none", "page" (the page's own item) or "session"

    def hidden(self, recent_items: list[str]) -> set[str] | None:
        """The session's items these rules hide (``recent_items``, newest last), if any."""
        if self.exclude_viewed == "page":
            return set(recent_items[-1:])
        if self.exclude_viewed == "session":
            return set(recent_items)
        return None

    @property
    def promotes(self) -> bool:
        return bool(self.pinned or self.boosted) and self.promoted_places_max > 0

    def allows(self, item_id: str, known: CatalogItem | None) -> bool:
        """Whether the rules let ``item_id`` (with what the catalog knows of it) be shown."""
        if item_id in self.exclude_items:
            return False
        if known is None:
            return True
        if known.category in self.exclude_categories:
            return False
        price = known.price
        if price is not None and ((self.price_min is not None and price < self.price_min)
                                  or (self.price_max is not None and price > self.price_max)):
            return False
        return True

    def promote(self, items: list[tuple[str, float]], size: int,
                can_show: Callable[[str], bool]) -> list[tuple[str, float]]:
        """``items`` (already filtered) with the promotions in front, ``size`` at most;
        ``can_show(item)``: whether a pinned item may be shown (the arm has not vetted it)."""
        listed = dict(items)
        front: list[tuple[str, float]] = []
        for item in self.pinned:
            if len(front) >= self.promoted_places_max:
                break
            if item not in (i for i, _ in front) and (item in listed or can_show(item)):
                front.append((item, listed.get(item, 0.0)))
        for item in self.boosted:
            if len(front) >= self.promoted_places_max:
                break
            if item in listed and item not in (i for i, _ in front):
                front.append((item, listed[item]))
        placed = {item for item, _ in front}
        return (front + [(i, s) for i, s in items if i not in placed])[:size]


NO_RULES = Rules()
