"""The arm-table world (``recoloop simulate --world arms``): shops whose shoppers reward each arm
per context, whatever items it shows.

Pure and synchronous: no Kafka here. Randomness comes from an injected ``random.Random`` and
time from an injected clock (milliseconds), so a seed replays a run and tests need no sleeps.
:mod:`app.sim.runner` moves the records this model emits to and from the real topics.

The model, per site:

- A catalog of items in a few categories, with a hidden popularity.
- Shoppers arrive as a Poisson process sized to the requested event rate. A session has a
  hidden *interest* (a category) and a visible *context* (page ``category``, ``season``,
  ``region``, ``device``); it views a few pages and ends.
- Every page view shows one block of recommendations (a ``reco.served`` display). An engine
  session shows the latest ranking the engine published for it, else its segment's default
  ranking, else the site-wide default; when the engine has published nothing usable yet, a
  uniformly random arm is shown and counted apart (``fallback``). A share of the sessions
  (``control_share``) is a control group that always sees a uniformly random arm.
- A hidden table gives, per context and arm, the probability that the shopper engages with
  the block: a click on one of its items, then usually a detail view, then sometimes a basket
  add, after log-normal delays, some of them beyond the reward window. The table is additive
  in the context's values, like the engine's bandit, and its differences are exaggerated so
  the engine can find them within minutes.
- Shoppers also browse without recommendations (clicks, detail views and basket adds with no
  ``served_id``, on listing items that were not in their recent displays).

Every display is settled once its reward window has passed, with the contract's own
attribution rule and reward table (:mod:`app.sim.common`, shared with the item world), so the
simulator's reward per decision is what the engine's ``reco.rewards`` would report. The
*oracle* is the expected reward of the hidden table's best arm in each decision's context;
*regret* is the oracle minus the expected reward of the arm the engine chose.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.settings import DEFAULT_REWARDS
from app.sim.common import World
from app.sim.shoppers import (
    BUY_BY_DEVICE,
    CHAIN,
    CONTEXT_WEIGHTS,
    Display,
    Item,
    Outgoing,
    Shopper,
    WorldConfig,
    chain_value,
    draw_context,
    window_shares,
)

CATEGORIES = ("shoes", "bags", "coats", "hats", "watches", "toys")


def all_contexts(categories: Sequence[str] = CATEGORIES) -> list[dict[str, str]]:
    """Every visible context, each with its probability under uniform interests."""
    contexts: list[dict[str, str]] = [{"category": c} for c in categories]
    for dim, values in CONTEXT_WEIGHTS.items():
        contexts = [{**ctx, dim: value} for ctx in contexts for value in values]
    return contexts


def context_weight(context: Mapping[str, str], categories: Sequence[str] = CATEGORIES) -> float:
    weight = 1.0 / len(categories)
    for dim, values in CONTEXT_WEIGHTS.items():
        weight *= values[context[dim]]
    return weight


@dataclass(frozen=True)
class HiddenModel:
    """One site's hidden truth: how likely a shopper engages with each arm, per context.

    The engagement probability is a base per arm plus a lift per (arm, context key, value),
    clipped to [0.01, 0.9]; the basket-add probability (after a detail view) depends on the
    arm and the device.
    """

    arms: tuple[str, ...]
    base: Mapping[str, float]
    lift: Mapping[tuple[str, str, str], float]
    p_view: float
    p_buy: Mapping[str, float]
    shares: tuple[float, ...]  # window_shares() of the run's delays and window
    rewards: Mapping[str, float]

    @classmethod
    def draw(cls, rng: random.Random, arms: Sequence[str], shares: tuple[float, ...],
             rewards: Mapping[str, float] = DEFAULT_REWARDS,
             categories: Sequence[str] = CATEGORIES) -> HiddenModel:
        """A random hidden model in which the best arm differs by category and device.

        Each category has a favourite arm with a big lift and a runner-up; each device,
        region and season a favourite with a smaller one.
        """
        arms = tuple(arms)
        base = {arm: rng.uniform(0.04, 0.10) for arm in arms}
        lift: dict[tuple[str, str, str], float] = {}
        for category in categories:
            first, *rest = rng.sample(arms, min(2, len(arms)))
            lift[(first, "category", category)] = rng.uniform(0.25, 0.35)
            for second in rest:
                lift[(second, "category", category)] = rng.uniform(0.08, 0.15)
        strength = {"device": (0.12, 0.20), "region": (0.04, 0.08), "season": (0.04, 0.08)}
        for dim, values in CONTEXT_WEIGHTS.items():
            for value in values:
                lift[(rng.choice(arms), dim, value)] = rng.uniform(*strength[dim])
        p_buy = {arm: rng.uniform(0.2, 0.4) for arm in arms}
        return cls(arms, base, lift, 0.85, p_buy, shares, dict(rewards))

    def engage_probability(self, arm: str, context: Mapping[str, str]) -> float:
        p = self.base[arm] + sum(self.lift.get((arm, k, v), 0.0) for k, v in context.items())
        return min(0.9, max(0.01, p))

    def chain_probabilities(self, arm: str, context: Mapping[str, str]) -> tuple[float, ...]:
        """P(click), P(click and detail view), P(click, view and basket add)."""
        engage = self.engage_probability(arm, context)
        buy = min(1.0, self.p_buy[arm] * BUY_BY_DEVICE.get(context.get("device", ""), 1.0))
        return engage, engage * self.p_view, engage * self.p_view * buy

    def expected_reward(self, arm: str, context: Mapping[str, str]) -> float:
        """E[reward]: the chain's expected best reaction inside the window."""
        return chain_value(self.chain_probabilities(arm, context), self.shares, self.rewards)

    def best_arm(self, context: Mapping[str, str]) -> str:
        return max(self.arms, key=lambda arm: self.expected_reward(arm, context))

    def oracle(self, context: Mapping[str, str]) -> float:
        return self.expected_reward(self.best_arm(context), context)


@dataclass(frozen=True)
class ShopItem(Item):
    popularity: float


@dataclass
class SimConfig(WorldConfig):
    """What to simulate in the arm-table world."""

    items_per_category: int = 40
    browse_share: float = 0.4  # page views followed by a browsing click
    browse_buy_share: float = 0.1
    no_served_id_share: float = 0.1  # reco reactions the site cannot tie to their display
    interest_on_page_share: float = 0.7  # sessions whose page category is their interest


@dataclass
class ArmShopper(Shopper):
    """A session of the arm-table world, with its hidden interest."""

    interest: str = ""
    engaged: Counter[str] = field(default_factory=Counter)  # categories engaged with
    last_item: Item | None = None


class Simulator(World):
    """The shops and their shoppers; see the module docstring.

    Parameters
    ----------
    config
        What to simulate.
    rng
        Every random draw comes from it: the same seed and the same rankings replay a run.
    clock
        Current time in ms since the epoch; event times (``ts``) are taken from it.

    Examples
    --------
    >>> now = [1_700_000_000_000]
    >>> sim = Simulator(SimConfig(rate=20), random.Random(1), lambda: now[0])
    >>> len(sim.catalog_records()) == len(CATEGORIES) * 40
    True
    >>> now[0] += 30_000
    >>> records = sim.advance()
    >>> sorted({r.topic for r in records} - {"reco.clicks", "reco.detail-views"})
    ['reco.basket-adds', 'reco.served']
    """

    config: SimConfig

    def __init__(self, config: SimConfig, rng: random.Random, clock: Callable[[], int]) -> None:
        super().__init__(config, clock)
        self.rng = rng
        shares = window_shares(config.delays, config.window_ms)
        self.models = {site: HiddenModel.draw(rng, config.arms_for(site), shares,
                                              config.rewards) for site in config.sites}
        self._shop_items = {site: self._draw_catalog(site) for site in config.sites}
        self._set_catalogs(self._shop_items)
        self._by_category = {site: {c: [i for i in items if i.available and i.category == c]
                                    for c in CATEGORIES}
                             for site, items in self._shop_items.items()}
        self._start_arrivals(rng)

    # -- the catalog and the traffic model --------------------------------------------------

    def _draw_catalog(self, site_id: str) -> list[ShopItem]:
        items = []
        for c, category in enumerate(CATEGORIES):
            for n in range(self.config.items_per_category):
                price = round(self.rng.lognormvariate(math.log(40), 0.6), 2)
                popularity = self.rng.paretovariate(1.2)
                items.append(ShopItem(f"{site_id}-{c}{n:03d}", category, price,
                                      available=self.rng.random() > 0.05,
                                      popularity=popularity))
        return items

    def events_per_session(self) -> float:
        """Expected events of one session (to size the arrival rate): each page is a
        display, a share of displays draws reactions, a share of pages a browse."""
        reactions = 0.0
        for model in self.models.values():
            for context in all_contexts():
                weight = context_weight(context)
                reactions += weight * sum(sum(model.chain_probabilities(a, context))
                                          for a in model.arms) / len(model.arms)
        reactions /= len(self.models)
        browse = self.config.browse_share * (2 + self.config.browse_buy_share)
        return self.config.expected_pages() * (1 + reactions + browse)

    def _new_shopper(self, now: int, number: int) -> ArmShopper:
        site = self.rng.choice(self.config.sites)
        interest = self.rng.choice(CATEGORIES)
        page = interest if self.rng.random() < self.config.interest_on_page_share \
            else self.rng.choice(CATEGORIES)
        context = draw_context(self.rng, page)
        group = "control" if self.rng.random() < self.config.control_share else "engine"
        return ArmShopper(site, f"{self.config.run_tag}-s{number}", context, group,
                          self.config.draw_pages(self.rng), interest=interest)

    def _due(self, what: str, shopper: Shopper, now: int) -> Outgoing | None:
        assert what == "page" and isinstance(shopper, ArmShopper), what
        return self._page(shopper, now)

    def _reacted(self, shopper: Shopper, kind: str, item: Item) -> None:
        assert isinstance(shopper, ArmShopper)
        shopper.engaged[item.category] += 1
        shopper.last_item = item

    # -- one page view ----------------------------------------------------------------------

    def _page(self, shopper: ArmShopper, now: int) -> Outgoing:
        """Show a display, draw the shopper's reactions to it and the next page."""
        shopper.pages_left -= 1
        model = self.models[shopper.site_id]
        arms = model.arms
        value = self._display_value(shopper, now)
        shown = self._engine_display(shopper, value)
        if shown is not None:
            group = "engine"
            arm, source, items = shown
        else:
            group = shopper.group if shopper.group == "control" else "fallback"
            source, arm = group, self.rng.choice(arms)
            items = self._compose(shopper, arm)
            value.update(arm=arm, propensity=1.0 / len(arms))
        value["items"] = items
        best = model.best_arm(shopper.context)
        display, record = self._serve(
            shopper, value, group, arm, source,
            model.expected_reward(arm, shopper.context) if arm in arms else 0.0,
            model.expected_reward(best, shopper.context), best)
        view_at = self._react(shopper, display, model)
        if self.rng.random() < self.config.browse_share:
            self._browse(shopper, now)
        if shopper.pages_left > 0:
            # A shopper who opened a recommended item sees the next block on its page.
            gap = self.config.page_gap(self.rng)
            next_page = view_at + self.rng.uniform(500, 1_500) if view_at else now + gap
            self._schedule(next_page, "page", shopper, shopper)
        return record

    def _react(self, shopper: ArmShopper, display: Display, model: HiddenModel
               ) -> float | None:
        """Draw the reaction chain to a display; returns when its detail view happens."""
        if display.arm not in model.arms:
            return None  # an arm the hidden model does not know earns nothing
        chance = model.chain_probabilities(display.arm, shopper.context)
        draw = self.rng.random()
        # The chain's probabilities only shrink, so one draw decides how far it goes.
        kinds = [kind for kind, p in zip(CHAIN, chance, strict=True) if draw < p]
        item = self._pick(shopper, display.served.items) if kinds else None
        if item is None:
            return None
        served_id = None if self.rng.random() < self.config.no_served_id_share \
            else display.served.event_id
        delays = self.config.delays
        at = display.served.ts + delays.click(self.rng)
        view_at = None
        for kind in kinds:
            if kind == "detail_view":
                at += delays.view(self.rng)
                view_at = at
            elif kind == "basket_add":
                at += delays.basket(self.rng)
            late = at - display.served.ts > self.config.window_ms
            self._reaction(shopper, kind, item, at, display, served_id,
                           "reactions_beyond_window" if late else "reactions_to_displays")
        return view_at

    def _browse(self, shopper: ArmShopper, now: int) -> None:
        """A click, a detail view and maybe a basket add on a listing item of the page's
        category or the shopper's interest; items of recent displays are avoided, so
        browsing is not mistaken for a reaction to a recommendation."""
        category = shopper.interest if self.rng.random() < 0.7 else shopper.context["category"]
        shown = {item for served in shopper.displays for item in served.items}
        pool = [i for i in self._by_category[shopper.site_id][category]
                if i.item_id not in shown and i.item_id not in shopper.basket]
        if not pool:
            return
        item = self.rng.choices(pool, [i.popularity for i in pool])[0]
        at = now + self.rng.uniform(2_000, 8_000)
        self._reaction(shopper, "click", item.item_id, at, None, None, "browsing")
        at += self.config.delays.view(self.rng)
        self._reaction(shopper, "detail_view", item.item_id, at, None, None, "browsing")
        if self.rng.random() < self.config.browse_buy_share:
            at += self.config.delays.basket(self.rng)
            self._reaction(shopper, "basket_add", item.item_id, at, None, None, "browsing")

    def _pick(self, shopper: ArmShopper, items: Iterable[str]) -> str | None:
        """The displayed item a shopper reacts to (items of their interest draw more);
        None when the simulator knows none of them."""
        catalog = self._items[shopper.site_id]
        known = [catalog[item] for item in items if item in catalog]
        if not known:
            return None
        weights = [3.0 if i.category == shopper.interest else 1.0 for i in known]
        return self.rng.choices(known, weights)[0].item_id

    def _compose(self, shopper: ArmShopper, arm: str) -> list[str]:
        """Items for an arm the simulator shows itself (control and fallback displays), by
        simple versions of the engine's arms over the simulator's own knowledge."""
        site = shopper.site_id
        ranked = shopper.engaged.most_common(2)
        pool: list[ShopItem]
        if arm in ("category1", "category2"):
            rank = 0 if arm == "category1" else 1
            category = ranked[rank][0] if len(ranked) > rank else shopper.context["category"]
            pool = self._by_category[site][category]
        elif arm == "similar" and shopper.last_item is not None:
            pool = self._by_category[site][shopper.last_item.category]
        elif arm == "trending":
            pool = [i for i in self._shop_items[site] if i.available]
            pool = self.rng.sample(pool, min(len(pool), 30))
        else:  # bestsellers, and similar with nothing engaged yet
            pool = [i for i in self._shop_items[site] if i.available]
        pool = sorted(pool, key=lambda i: i.popularity, reverse=True)
        return [i.item_id for i in pool if i.item_id not in shopper.basket
                ][:self.config.display_size]
