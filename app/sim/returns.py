"""The return-visit world (``recoloop simulate --world returns``): shoppers go back to what
they viewed earlier in the session, and a block that shows it again gets the clicks.

The item world (:mod:`app.sim.items`) with two changes, both about items the session has
viewed (the page's own item included):

- **Organic browsing.** Before each page after the first, with probability
  ``return_share`` the shopper goes back to an item it viewed earlier in the session (one
  other than the current page's), the ``k``-th latest drawn with weight ``return_decay **
  k``; otherwise it browses on as in the item world. Both draws are made on every page.
- **Reactions.** A viewed item's attraction is lifted toward its most, the more the more
  recently it was viewed: ``s' = s + return_lift * return_decay ** k * (attraction_max -
  s)``, ``k`` = 0 for the latest viewed item. **The page's own item can be clicked** (it is
  the latest viewed): shoppers click a block's copy of what they are looking at, as they
  do a "recently viewed" strip. Everything else is the item world's.

Assumptions about shoppers: they compare, so they return to items they viewed; an item
they viewed a moment ago is the likeliest to be clicked again, older ones less so.

Best simple strategy: ``recent``, the session's viewed items, newest first, the page's
item included (``bench.baselines`` checks it against the others; ``tests/sim`` too). Re-showing
is the best single action here; strategies that leave out the page's item, or the
session's items, give up most of the reward.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.sim.items import ItemConfig, ItemShopper
from app.sim.variant import ItemVariant

BEST_BASELINE = "recent"


@dataclass
class ReturnsConfig(ItemConfig):
    """The item world's parameters and the return visits'; see the module docstring."""

    return_share: float = 0.35
    return_decay: float = 0.6
    return_lift: float = 0.6

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.return_share <= 1.0 or not 0.0 <= self.return_lift <= 1.0:
            raise ValueError("return_share and return_lift must be within 0..1")


class ReturnsWorld(ItemVariant):
    """The return-visit world; see the module docstring."""

    config: ReturnsConfig

    def _next_item(self, shopper: ItemShopper) -> int:
        c, rng = self.config, shopper.walk_rng
        back, pick = rng.random(), rng.random()  # both drawn on every page
        onward = super()._next_item(shopper)
        earlier = _latest_first(shopper)[1:] if shopper.current >= 0 else []
        if back >= c.return_share or not earlier:
            return onward
        weights = [c.return_decay ** k for k in range(len(earlier))]
        total, cumulative = sum(weights), 0.0
        for n, weight in zip(earlier, weights, strict=True):
            cumulative += weight
            if pick * total < cumulative:
                return n
        return earlier[-1]

    def attraction(self, shopper: ItemShopper, n: int) -> float:
        base = shopper.attraction[n]
        latest = _latest_first(shopper)
        if n not in latest:
            return base
        lift = self.config.return_lift * self.config.return_decay ** latest.index(n)
        return base + lift * (self.config.attraction_max - base)


def _latest_first(shopper: ItemShopper) -> list[int]:
    """The session's viewed items, each once, the latest view first."""
    seen: dict[int, None] = {}
    for n in reversed(shopper.viewed):
        seen.setdefault(n, None)
    return list(seen)
