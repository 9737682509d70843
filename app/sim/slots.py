"""The one-item-slot world (``recoloop simulate --world slots``): a widget shows a single
item, so only the first place counts and position bias cannot help.

The item world (:mod:`app.sim.items`) with ``display_size`` = 1 and a click model tied to the
page:

- **Organic browsing.** As in the item world, nearer the current item (``near_weight`` = 6).
- **Reactions.** The one item shown is clicked with probability ``s = attraction_max *
  sigma(attraction_slope * (f_uj + complement * v_i . v_j - attraction_threshold))``,
  ``i`` the page's item: a shopper clicks what goes on from the page it is on (the next
  size, the matching piece). The page's own item is never clicked.

Assumptions about shoppers: one slot gets one look; what a shopper takes from it depends on
the page as much as on its taste.

Best simple strategy: ``coview``, the item most often viewed right after the page's item: it
is where shoppers go from this page. Strategies over the whole session (``sknn``) or the
whole site (``popular``) spend the only place on items that fit the session but not the
page; ``recent`` shows the page's own item.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from app.sim.items import ItemConfig, ItemShopper
from app.sim.variant import ItemVariant

BEST_BASELINE = "coview"


@dataclass
class SlotsConfig(ItemConfig):
    """The item world's parameters for one-item slots; see the module docstring."""

    display_size: int = 1
    near_weight: float = 6.0
    attraction_max: float = 0.6
    complement: float = 1.5
    attraction_threshold: float = 2.5


class SlotsWorld(ItemVariant):
    """The one-item-slot world; see the module docstring."""

    config: SlotsConfig

    def attraction(self, shopper: ItemShopper, n: int) -> float:
        if n == shopper.current or shopper.current < 0:
            return 0.0
        c = self.config
        items = self.models[shopper.site_id].items
        near = sum(map(operator.mul, items[n].vector, items[shopper.current].vector))
        x = c.attraction_slope * (shopper.fit[n] + c.complement * near - c.attraction_threshold)
        return c.attraction_max / (1.0 + math.exp(-x))
