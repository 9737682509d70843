"""What the worlds built on the item world share: an oracle for any click model.

The item world's oracle takes the items with the highest fit, which is right while the
attraction and the worth of a click both rise with the fit alone. A world whose click model
also depends on the session (what it viewed, the page it is on) or on the time ranks by what
a click is expected to earn instead: by the rearrangement inequality, the items with the
highest ``s_uj * V_uj`` in that order make the best list.
"""

from __future__ import annotations

import heapq

from app.sim.items import ItemShopper, ItemWorld


class ItemVariant(ItemWorld):
    """An item world whose :meth:`attraction` may depend on more than the fit."""

    def best_list(self, shopper: ItemShopper) -> list[str]:
        """The items the shopper can take with the highest ``s_uj * V_uj``, best first."""
        model = self.models[shopper.site_id]
        takeable = (n for n in model.available
                    if model.items[n].item_id not in shopper.basket)
        best = heapq.nlargest(self.config.display_size, takeable,
                              key=lambda n: self.attraction(shopper, n) * shopper.worth[n])
        return [model.items[n].item_id for n in best]
