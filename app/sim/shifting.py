"""The shifting-taste world (``recoloop simulate --world shifting``): what shoppers want
changes during the run, as in a sale or a new season.

The item world (:mod:`app.sim.items`) where time moves the fit. The run is cut into seasons
of ``season_ms`` (event time from the start); each season, ``hot_items`` items of each site,
drawn anew from the seed, the site and the season, add ``hot_boost`` to every shopper's fit.
Every live shopper's tastes change with the season at once (a sale starts for everyone).
Organic browsing and reactions are
the item world's, so both follow the season: the hot items are viewed more, viewed after
other items more (co-views drift), clicked more and bought more. The page's own item is
never clicked.

Assumptions about shoppers: a season's hot items draw most shoppers, whatever their own
taste; what was hot last season is not any more, even for a shopper who viewed it then.

Best simple strategy: ``popular``, the most engaged items of the last minutes (decayed,
half-life one minute): after a change it turns to the new hot items within a minute or two.
Co-view counts and session kNN over the whole run keep pointing at last season's items, and
a session's own earlier views (``recent``) go stale at each change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.sim.items import ItemConfig, ItemShopper, ItemWorld
from app.sim.shoppers import Outgoing, Shopper

BEST_BASELINE = "popular"


@dataclass
class ShiftingConfig(ItemConfig):
    """The item world's parameters and the seasons'; see the module docstring."""

    season_ms: int = 150_000
    hot_items: int = 25
    hot_boost: float = 1.5


class ShiftingWorld(ItemWorld):
    """The shifting-taste world; see the module docstring."""

    config: ShiftingConfig

    def season(self, now: int) -> int:
        return max(0, now - self.start_ms) // self.config.season_ms

    def hot(self, site_id: str, season: int) -> list[int]:
        """Positions of the season's hot items in the site's catalog."""
        items = self.models[site_id].items
        rng = random.Random(f"{self.seed}:season:{site_id}:{season}")
        return rng.sample(range(len(items)), min(self.config.hot_items, len(items)))

    def _new_shopper(self, now: int, number: int) -> ItemShopper:
        shopper = super()._new_shopper(now, number)
        self._follow_season(shopper, now)
        return shopper

    def _due(self, what: str, shopper: Shopper, now: int) -> Outgoing | None:
        assert isinstance(shopper, ItemShopper), shopper
        self._follow_season(shopper, now)
        return super()._due(what, shopper, now)

    def _follow_season(self, shopper: ItemShopper, now: int) -> None:
        """The fits of the season at ``now``: the shopper's own plus the hot items' boost."""
        season = self.season(now)
        if shopper.period == season and shopper.fit is not shopper.own_fit:
            return
        shopper.period = season
        fits = list(shopper.own_fit)
        for n in self.hot(shopper.site_id, season):
            fits[n] += self.config.hot_boost
        self.set_fits(shopper, fits)
