"""The long-tail world (``recoloop simulate --world longtail``): thousands of items, most of
them viewed a handful of times, and short sessions.

The item world (:mod:`app.sim.items`) with a big catalog of narrow categories and browsing
that follows the shopper's intent rather than the page:

- **Items.** ``len(categories) * items_per_category`` items (2,000 by default: 100 narrow
  categories of 20) in a space of ``dim`` = 16 dimensions, so categories rarely overlap.
- **Shoppers.** Each session is about one category (its favourite) and views about
  ``mean_pages`` = 4 pages.
- **Organic browsing.** The session's mission is the category of the item it likes best.
  Each page is, with probability ``mission_share``, one of the mission's available items,
  else any available item, drawn with weight ``exp(taste_weight * f_uj)`` (the current
  item left out): near the session's intent, not near the page (``near_weight`` = 0). At
  50 events/s an item is viewed a handful of times in twenty minutes, so counts per item
  stay thin.
- **Reactions.** As in the item world (the page's own item is never clicked).

Assumptions about shoppers: each visit has a mission (one narrow kind of item); the pages a
session viewed tell the mission better than its last page alone, and the catalog is too big
for a best-seller list to hit it.

Best simple strategy: ``sknn``, a session kNN: sessions that viewed the same items had the
same mission, and between them they viewed most of its items. A co-view counter from the
last item sees only that item's few followers; ``popular`` and ``recent`` fill most of the
list with items of other missions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.sim.items import ItemConfig, ItemShopper, ItemWorld, SiteModel

BEST_BASELINE = "sknn"
LONGTAIL_CATEGORIES = tuple(f"kind{n:03d}" for n in range(100))


@dataclass
class LongTailConfig(ItemConfig):
    """The item world's parameters, set for a long tail; see the module docstring."""

    mean_pages: float = 4.0
    categories: tuple[str, ...] = LONGTAIL_CATEGORIES
    items_per_category: int = 20
    dim: int = 16
    item_spread: float = 0.15
    attraction_threshold: float = 1.2
    near_weight: float = 0.0
    taste_weight: float = 2.5
    taste_noise: float = 0.15
    mission_share: float = 0.85
    attraction_slope: float = 3.0


class LongTailWorld(ItemWorld):
    """The long-tail world; see the module docstring."""

    config: LongTailConfig

    def __init__(self, config: LongTailConfig, seed: int, clock: Callable[[], int]) -> None:
        super().__init__(config, seed, clock)
        self.missions = {site: _by_category(model) for site, model in self.models.items()}

    def _next_item(self, shopper: ItemShopper) -> int:
        model = self.models[shopper.site_id]
        stay = shopper.walk_rng.random() < self.config.mission_share  # drawn on every page
        mission = model.items[shopper.by_fit[0]].category
        pool = self.missions[shopper.site_id][mission] if stay else model.available
        weights = [shopper.taste_weights[n] if n != shopper.current else 0.0 for n in pool]
        if not any(weights):
            pool, weights = list(model.available), [1.0] * len(model.available)
        return shopper.walk_rng.choices(pool, weights)[0]


def _by_category(model: SiteModel) -> dict[str, list[int]]:
    """The available items of each category, by position in the catalog."""
    pools: dict[str, list[int]] = {}
    for n in model.available:
        pools.setdefault(model.items[n].category, []).append(n)
    return pools
