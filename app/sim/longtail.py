"""The long-tail world (``recoloop simulate --world longtail``): thousands of items, most of
them viewed a handful of times, and short sessions.

The item world (:mod:`app.sim.items`) with a big catalog of narrow categories and browsing
that follows the shopper's intent rather than the page:

- **Items.** ``len(categories) * items_per_category`` items (2,000 by default: 100 narrow
  kinds of 20) in a space of ``dim`` = 16 dimensions, so kinds rarely overlap. The catalog
  names a coarser category, a department of ``kinds_per_department`` = 10 kinds (200
  items), as shops do: the kind is latent.
- **Shoppers.** Each session is about one kind (its favourite, its *mission*) and views
  about ``mean_pages`` = 4 pages.
- **Organic browsing.** The session's mission is the kind of the item it likes best.
  Each page is, with probability ``mission_share``, one of the mission's available items,
  else any available item, drawn with weight ``exp(taste_weight * f_uj)`` (the current
  item left out): near the session's intent, not near the page (``near_weight`` = 0). At
  50 events/s an item is viewed a handful of times in twenty minutes, so counts per item
  stay thin.
- **Reactions.** As in the item world (the page's own item is never clicked).

Assumptions about shoppers: each visit has a mission (one narrow kind of item, finer than
the shop's categories); the pages a session viewed tell the mission better than its last
page alone, and the catalog is too big for a best-seller list, even a category's, to hit it.

Best simple strategy: ``sknn``, a session kNN: sessions that viewed the same items had the
same mission, and between them they viewed most of its items. A co-view counter from the
last item sees only that item's few followers; ``popular`` and ``recent`` fill most of the
list with items of other missions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

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
    kinds_per_department: int = 10
    attraction_slope: float = 3.0


class LongTailWorld(ItemWorld):
    """The long-tail world; see the module docstring."""

    config: LongTailConfig

    def __init__(self, config: LongTailConfig, seed: int, clock: Callable[[], int]) -> None:
        super().__init__(config, seed, clock)
        self.missions = {site: _by_kind(model, config.items_per_category)
                         for site, model in self.models.items()}
        # The catalog names departments: the kinds stay latent.
        per_department = config.items_per_category * config.kinds_per_department
        self.models = {site: replace(model, items=tuple(
            replace(item, category=f"dept{n // per_department:02d}")
            for n, item in enumerate(model.items))) for site, model in self.models.items()}
        self._set_catalogs({site: model.items for site, model in self.models.items()})

    def _next_item(self, shopper: ItemShopper) -> int:
        model = self.models[shopper.site_id]
        stay = shopper.walk_rng.random() < self.config.mission_share  # drawn on every page
        mission = shopper.by_fit[0] // self.config.items_per_category
        pool = self.missions[shopper.site_id][mission] if stay else model.available
        weights = [shopper.taste_weights[n] if n != shopper.current else 0.0 for n in pool]
        if not any(weights):
            pool, weights = list(model.available), [1.0] * len(model.available)
        return shopper.walk_rng.choices(pool, weights)[0]


def _by_kind(model: SiteModel, per_kind: int) -> dict[int, list[int]]:
    """The available items of each kind (the catalog holds kinds in order), by position."""
    pools: dict[int, list[int]] = {}
    for n in model.available:
        pools.setdefault(n // per_kind, []).append(n)
    return pools
