"""The item world (``recoloop simulate --world items``, the default): shops where the items shown
decide the reward.

Pure and synchronous like :mod:`app.sim.arm_table`: no Kafka, no I/O; :mod:`app.sim.common` plays
the timeline, the engine's rankings and the contract's settlement the same way for both. The
model, per site (``D`` = ``dim``, ``sigma`` the logistic function):

- **Items.** Category ``c`` has a random unit centre ``m_c`` in R^D. Item ``j`` of category
  ``c`` has the latent vector ``v_j = unit(m_c + item_spread * e_j)``, ``e_j ~ N(0, I)``, and a
  quality ``q_j ~ N(0, quality_sd^2)``; a price, and 5 % of items unavailable. Each site sends
  its catalog to ``reco.catalog``.
- **Shoppers.** Shopper ``u`` has a favourite category ``c_u`` (uniform) and the taste
  ``t_u = taste_strength * m_{c_u} + taste_noise * n_u``, ``n_u ~ N(0, I)``. The *fit* of an
  item is ``f_uj = t_u . v_j + q_j``.
- **Organic browsing.** A session views about ``mean_pages`` pages. The first viewed item is
  drawn with weight ``exp(taste_weight * f_uj)``, each next one among the available items
  other than the current item ``i`` with weight ``exp(near_weight * v_i . v_j +
  taste_weight * f_uj)``: near the current item (what a co-view counter can learn) and near
  the shopper's taste (what a session-based model can learn better). Each view is a click
  and, after the view delay, a detail view, sometimes followed by a basket add (probability
  ``organic_buy_share * p_buy``), all sent with ``"source": "organic"`` and no ``served_id``.
- **Displays.** On a share ``display_share`` of the detail pages the site shows a block of
  ``display_size`` items a moment later: an engine session the engine's latest ranking for
  it (else its segment's default, else the site-wide default; ``fallback``, a random list,
  while the engine has published none), a control session (``control_share``) a uniformly
  random list of the items available to it, with ``arm`` ``"control"``.
- **Reactions.** The item at position ``p`` (from 0) is clicked with probability
  ``w_p * s_uj``: the position bias ``w_p = (1 + p)^-position_decay`` times the attraction
  ``s_uj = attraction_max * sigma(attraction_slope * (f_uj - attraction_threshold))``. Clicks
  exclude each other (one uniform draw picks the position, or none; ``attraction_max *
  sum_p w_p <= 1`` keeps that a distribution). An item the shopper cannot take (unknown,
  unavailable, in the basket, the one on the current page, or shown again lower down) has
  ``s = 0``. The click is
  followed by a detail view with probability ``p_view``, then a basket add with probability
  ``p_buy_uj = min(1, (buy_base + buy_range * sigma(attraction_slope * (f_uj -
  attraction_threshold))) * BUY_BY_DEVICE[device])``, after the log-normal delays of
  :class:`app.sim.shoppers.Delays` (some beyond the reward window). They carry ``served_id``.
- **Expected reward and the oracle.** A click on ``j`` is worth ``V_uj``, the chain's
  expected best reward inside the window (:func:`app.sim.shoppers.chain_value`), so a list
  ``L`` earns ``E[L] = sum_p w_p * s_{u L_p} * V_{u L_p}``. ``s`` and ``V`` rise with the
  fit and ``w`` falls with the position, so by the rearrangement inequality no list of the
  items the shopper can take beats the ``display_size`` of them with the highest fit, in fit
  order: the *oracle*, computed per display. The contract also credits a display with an
  organic reaction to an item it showed (no ``served_id``, inside its window), such as the
  basket add of the page's item a few seconds after the block appeared: the summary's
  ``engine_from_organic`` says how much; the oracle does not count it.

Assumptions about shoppers: each has a lasting taste around one category; it browses near
the page it is on and near its taste, and never clicks a block's copy of the page's item.
Best simple strategy: ``sknn`` (``bench.baselines``), a session kNN, which reads the taste
from the whole session; the co-view counter, which reads it from the last page, comes close.

**Same shoppers for every contender.** Shopper ``n`` (in arrival order) has random
generators of its own, seeded by the run's seed and ``n``: one for who it is and its organic
path (items, times, which pages show a block), one for its reactions (a fixed number of draws
per display, whatever is shown) and one for the random lists it is shown. Arrival times have
their own generator. So whatever a contender shows, the same shoppers arrive at the same
times, view the same items at the same times and see blocks at the same moments, with the
same random draws for their reactions. What is shown changes only the reactions, and these
change the path in one way: an item already in the basket gets no organic basket add (its
draw is made all the same).
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.sim.common import World
from app.sim.shoppers import (
    BUY_BY_DEVICE,
    Display,
    Item,
    Outgoing,
    Shopper,
    WorldConfig,
    chain_value,
    draw_context,
    window_shares,
)

ITEM_CATEGORIES = ("shoes", "bags", "coats", "hats", "watches", "toys", "books", "games",
                   "lamps", "plants")
BEST_BASELINE = "sknn"  # of bench.baselines' contenders; see the module docstring
CONTROL_ARM = "control"
FALLBACK_ARM = "fallback"
# Events a display draws, to size the arrival rate before anyone knows what will be shown:
# about a random list's clicks and an engine's; the rate is approximate anyway.
NOMINAL_CTR = 0.1
NOMINAL_BUY = 0.25


def position_bias(position: int, decay: float = 0.7) -> float:
    """How much less likely a shopper is to click position ``position`` (from 0) than the
    first: ``(1 + position) ** -decay``.

    >>> [round(position_bias(p), 3) for p in range(4)]
    [1.0, 0.616, 0.463, 0.379]
    """
    return (1.0 + position) ** -decay


def pick_position(draw: float, chances: Sequence[float]) -> int | None:
    """The position clicked when the uniform ``draw`` falls in its interval of [0, 1)
    (intervals of length ``chances``, end to end); None for no click.

    >>> [pick_position(d, [0.2, 0.0, 0.1]) for d in (0.1, 0.25, 0.35)]
    [0, 2, None]
    """
    cumulative = 0.0
    for position, chance in enumerate(chances):
        cumulative += chance
        if draw < cumulative:
            return position
    return None


def _unit(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return tuple(x / norm for x in vector)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(map(operator.mul, a, b))


@dataclass
class ItemConfig(WorldConfig):
    """What to simulate in the item world; the module docstring names each parameter."""

    mean_pages: float = 8.0
    page_gap_median_ms: float = 30_000.0
    categories: tuple[str, ...] = ITEM_CATEGORIES
    items_per_category: int = 30
    dim: int = 8
    item_spread: float = 0.5
    quality_sd: float = 0.1
    taste_strength: float = 1.5
    taste_noise: float = 0.5
    near_weight: float = 4.0
    taste_weight: float = 1.5
    display_share: float = 0.7
    attraction_max: float = 0.3
    attraction_slope: float = 2.0
    attraction_threshold: float = 1.8
    position_decay: float = 0.7
    p_view: float = 0.85
    buy_base: float = 0.1
    buy_range: float = 0.4
    organic_buy_share: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        total = sum(position_bias(p, self.position_decay) for p in range(self.display_size))
        if self.attraction_max * total > 1.0:
            raise ValueError(f"attraction_max * the position biases of {self.display_size} "
                             f"items is {self.attraction_max * total:.2f}: above 1, clicks "
                             "would not be a distribution")
        if not 0.0 <= self.display_share <= 1.0:
            raise ValueError("display_share must be within 0..1")


@dataclass(frozen=True)
class LatentItem(Item):
    vector: tuple[float, ...] = ()
    quality: float = 0.0


@dataclass(frozen=True)
class SiteModel:
    """One site's catalog and the organic browsing's item-to-item weights."""

    items: tuple[LatentItem, ...]
    centres: tuple[tuple[float, ...], ...]  # per category
    index: dict[str, int]  # item id -> position in items
    available: tuple[int, ...]  # positions of the available items
    near: tuple[tuple[float, ...], ...]  # exp(near_weight * v_i . v_j); () if near_weight is 0
    columns: tuple[tuple[float, ...], ...]  # per dimension, every item's coordinate

    @classmethod
    def draw(cls, rng: random.Random, site_id: str, config: ItemConfig) -> SiteModel:
        centres = tuple(_unit([rng.gauss(0, 1) for _ in range(config.dim)])
                        for _ in config.categories)
        items = []
        for c, category in enumerate(config.categories):
            for n in range(config.items_per_category):
                vector = _unit([m + config.item_spread * rng.gauss(0, 1) for m in centres[c]])
                items.append(LatentItem(
                    f"{site_id}-{c}{n:03d}", category,
                    round(rng.lognormvariate(math.log(40), 0.6), 2), rng.random() > 0.05,
                    vector, rng.gauss(0, config.quality_sd)))
        # No near weights at all when browsing ignores the current item (big catalogs).
        near = tuple(tuple(math.exp(config.near_weight * _dot(a.vector, b.vector))
                           for b in items) for a in items) if config.near_weight else ()
        return cls(tuple(items), centres, {item.item_id: n for n, item in enumerate(items)},
                   tuple(n for n, item in enumerate(items) if item.available), near,
                   tuple(zip(*(item.vector for item in items), strict=True)))


@dataclass
class ItemShopper(Shopper):
    """A session of the item world, with its hidden taste and its own random generators."""

    number: int = 0
    fit: list[float] = field(default_factory=list)  # per item of the site
    own_fit: list[float] = field(default_factory=list)  # the fit before any time-shift
    period: int = 0  # in a world whose tastes move, the period ``fit`` is for
    attraction: list[float] = field(default_factory=list)  # s_uj
    worth: list[float] = field(default_factory=list)  # V_uj: E[reward] of a click
    buy: list[float] = field(default_factory=list)  # p_buy_uj
    taste_weights: list[float] = field(default_factory=list)  # exp(taste_weight * f_uj)
    by_fit: list[int] = field(default_factory=list)  # item positions, best fit first
    current: int = -1  # position of the item of the current page
    viewed: list[int] = field(default_factory=list)  # the pages' items so far, in order
    pages_seen: int = 0
    walk_rng: random.Random = field(default_factory=random.Random)
    react_rng: random.Random = field(default_factory=random.Random)
    fill_rng: random.Random = field(default_factory=random.Random)


class ItemWorld(World):
    """The item world's shops and shoppers; see the module docstring.

    Parameters
    ----------
    config
        What to simulate.
    seed
        Seeds the catalogs, the arrivals and every shopper's generators: the same seed
        brings the same shoppers whatever is shown to them.
    clock
        Current time in ms since the epoch; event times (``ts``) are taken from it.

    Examples
    --------
    >>> now = [1_700_000_000_000]
    >>> world = ItemWorld(ItemConfig(rate=20), 1, lambda: now[0])
    >>> len(world.catalog_records()) == len(ITEM_CATEGORIES) * 30
    True
    >>> now[0] += 30_000
    >>> sorted({r.topic for r in world.advance()})
    ['reco.basket-adds', 'reco.clicks', 'reco.detail-views', 'reco.served']
    """

    config: ItemConfig

    def __init__(self, config: ItemConfig, seed: int, clock: Callable[[], int]) -> None:
        super().__init__(config, clock)
        self.seed = seed
        self.shares = window_shares(config.delays, config.window_ms)
        self.models = {site: SiteModel.draw(random.Random(f"{seed}:catalog:{site}"), site,
                                            config) for site in config.sites}
        self._set_catalogs({site: model.items for site, model in self.models.items()})
        self._bias = [position_bias(p, config.position_decay) for p in range(config.display_size)]
        # V_uj is linear in p_buy_uj: chain_value is linear in the chain's probabilities.
        never = chain_value((1.0, config.p_view, 0.0), self.shares, config.rewards)
        always = chain_value((1.0, config.p_view, config.p_view), self.shares, config.rewards)
        self._worth_never_buys, self._worth_per_buy = never, always - never
        self._start_arrivals(random.Random(f"{seed}:arrivals"))

    def events_per_session(self) -> float:
        """Expected events of one session, about: two organic events per page and its
        basket adds, and on some pages a display and its reactions."""
        c = self.config
        reactions = NOMINAL_CTR * (1 + c.p_view * (1 + NOMINAL_BUY))
        page = 2 + c.organic_buy_share * NOMINAL_BUY + c.display_share * (1 + reactions)
        return c.expected_pages() * page

    # -- shoppers ---------------------------------------------------------------------------

    def _new_shopper(self, now: int, number: int) -> ItemShopper:
        c = self.config
        rng = random.Random(f"{self.seed}:shopper:{number}")
        site = rng.choice(c.sites)
        model = self.models[site]
        centre = model.centres[rng.randrange(len(c.categories))]
        taste = [c.taste_strength * m + c.taste_noise * rng.gauss(0, 1) for m in centre]
        context = draw_context(rng, "")
        group = "control" if rng.random() < c.control_share else "engine"
        shopper = ItemShopper(site, f"{c.run_tag}-s{number}", context, group,
                              c.draw_pages(rng), number=number, walk_rng=rng,
                              react_rng=random.Random(f"{self.seed}:reactions:{number}"),
                              fill_rng=random.Random(f"{self.seed}:lists:{number}"))
        # t . v_j for every item at once, a dimension at a time (fast for big catalogs).
        dots = [0.0] * len(model.items)
        for t, column in zip(taste, model.columns, strict=True):
            dots = [d + t * x for d, x in zip(dots, column, strict=True)]
        shopper.own_fit = [d + item.quality for d, item in zip(dots, model.items, strict=True)]
        self.set_fits(shopper, shopper.own_fit)
        return shopper

    def set_fits(self, shopper: ItemShopper, fits: list[float]) -> None:
        """Give the shopper the fits ``fits`` and everything that follows from them."""
        c = self.config
        device = BUY_BY_DEVICE.get(shopper.context["device"], 1.0)
        slope, threshold, exp = c.attraction_slope, c.attraction_threshold, math.exp
        liking = [1.0 / (1.0 + exp(-slope * (f - threshold))) for f in fits]
        shopper.fit = fits
        shopper.attraction = [c.attraction_max * x for x in liking]
        shopper.buy = [min(1.0, (c.buy_base + c.buy_range * x) * device) for x in liking]
        shopper.worth = [self._worth_never_buys + b * self._worth_per_buy for b in shopper.buy]
        shopper.taste_weights = [exp(c.taste_weight * f) for f in fits]
        shopper.by_fit = sorted(range(len(fits)), key=lambda n: -fits[n])

    def _due(self, what: str, shopper: Shopper, now: int) -> Outgoing | None:
        assert isinstance(shopper, ItemShopper), shopper
        if what == "page":
            self._page(shopper, now)
            return None
        assert what == "display", what
        return self._display(shopper, now)

    def _next_item(self, shopper: ItemShopper) -> int:
        """The next organic view: the first near the taste, then near the current item too."""
        model = self.models[shopper.site_id]
        pool = model.available
        if shopper.current < 0 or not model.near:
            weights = [shopper.taste_weights[n] if n != shopper.current else 0.0 for n in pool]
        else:
            near = model.near[shopper.current]
            weights = [near[n] * shopper.taste_weights[n] if n != shopper.current else 0.0
                       for n in pool]
        return shopper.walk_rng.choices(pool, weights)[0]

    def _page(self, shopper: ItemShopper, now: int) -> None:
        """One organic page view: a click, a detail view, maybe a basket add, maybe a block
        of recommendations, and the next page. Every draw is made whatever happens."""
        c, rng = self.config, shopper.walk_rng
        shopper.current = self._next_item(shopper)
        shopper.viewed.append(shopper.current)
        shopper.pages_seen += 1
        shopper.pages_left -= 1
        view_after = c.delays.view(rng)
        buy_draw = rng.random()
        basket_after = c.delays.basket(rng)
        show_draw = rng.random()
        show_after = view_after + rng.uniform(200, 800)
        gap = c.page_gap(rng)
        item = self.models[shopper.site_id].items[shopper.current]
        shopper.context["category"] = item.category
        self._reaction(shopper, "click", item.item_id, now, None, None, "browsing")
        self._reaction(shopper, "detail_view", item.item_id, now + view_after, None, None,
                       "browsing")
        if (buy_draw < c.organic_buy_share * shopper.buy[shopper.current]
                and item.item_id not in shopper.basket):
            self._reaction(shopper, "basket_add", item.item_id, now + view_after + basket_after,
                           None, None, "browsing")
        if show_draw < c.display_share:
            self._schedule(now + show_after, "display", shopper, shopper)
        if shopper.pages_left > 0:
            # Never before this page's block: a block belongs to the page it is shown on.
            self._schedule(now + max(gap, show_after + 500), "page", shopper, shopper)

    # -- displays ---------------------------------------------------------------------------

    def click_chances(self, shopper: ItemShopper, items: Sequence[str]) -> list[float]:
        """P(the shopper clicks position p) for each position of ``items``: ``w_p * s_uj``,
        0 for an item the shopper cannot take (unknown, unavailable, in the basket, the one
        on the current page, shown again)."""
        model = self.models[shopper.site_id]
        seen: set[str] = set()
        chances = []
        for position, item_id in enumerate(items[:len(self._bias)]):
            n = model.index.get(item_id)
            usable = (n is not None and model.items[n].available
                      and item_id not in shopper.basket and item_id not in seen)
            seen.add(item_id)
            chances.append(self._bias[position] * self.attraction(shopper, n)
                           if usable and n is not None else 0.0)
        return chances

    def attraction(self, shopper: ItemShopper, n: int) -> float:
        """``s_uj`` of the item at position ``n`` of the catalog, an available one not in
        the basket: 0 for the current page's item."""
        return shopper.attraction[n] if n != shopper.current else 0.0

    def expected_reward(self, shopper: ItemShopper, items: Sequence[str]) -> float:
        """E[reward] of showing ``items`` to the shopper now (organic credit aside)."""
        model = self.models[shopper.site_id]
        return sum(chance * shopper.worth[model.index[item_id]] for item_id, chance
                   in zip(items, self.click_chances(shopper, items), strict=False) if chance)

    def best_list(self, shopper: ItemShopper) -> list[str]:
        """The oracle's list: the items the shopper can take (available, not in the basket,
        not the current page's) with the highest fit, in fit order."""
        items = self.models[shopper.site_id].items
        best: list[str] = []
        for n in shopper.by_fit:
            if items[n].available and items[n].item_id not in shopper.basket \
                    and n != shopper.current:
                best.append(items[n].item_id)
                if len(best) == self.config.display_size:
                    break
        return best

    def random_list(self, shopper: ItemShopper) -> list[str]:
        """A uniformly random list of the items available to the shopper."""
        model = self.models[shopper.site_id]
        pool = [model.items[n].item_id for n in model.available
                if model.items[n].item_id not in shopper.basket]
        return shopper.fill_rng.sample(pool, min(self.config.display_size, len(pool)))

    def _display(self, shopper: ItemShopper, now: int) -> Outgoing:
        value = self._display_value(shopper, now)
        shown = self._engine_display(shopper, value)
        if shown is not None:
            group = "engine"
            arm, source, items = shown
        else:
            group = "control" if shopper.group == "control" else "fallback"
            source = arm = CONTROL_ARM if group == "control" else FALLBACK_ARM
            items = self.random_list(shopper)
            # Today's convention for a list the site chose itself: one over the site's arms.
            value.update(arm=arm, propensity=1.0 / len(self.config.arms_for(shopper.site_id)))
        value["items"] = items
        display, record = self._serve(shopper, value, group, arm, source,
                                      self.expected_reward(shopper, items),
                                      self.expected_reward(shopper, self.best_list(shopper)))
        self._react(shopper, display)
        return record

    def _react(self, shopper: ItemShopper, display: Display) -> None:
        """At most one click on the display, and the chain after it; the same draws are
        made whatever the display holds, so contenders face the same luck."""
        c, rng = self.config, shopper.react_rng
        pick, view_draw, buy_draw = rng.random(), rng.random(), rng.random()
        click_after, view_after = c.delays.click(rng), c.delays.view(rng)
        basket_after = c.delays.basket(rng)
        served = display.served
        position = pick_position(pick, self.click_chances(shopper, served.items))
        if position is None:
            return
        item_id = served.items[position]
        n = self.models[shopper.site_id].index[item_id]
        chain = [("click", click_after)]
        if view_draw < c.p_view:
            chain.append(("detail_view", view_after))
            if buy_draw < shopper.buy[n]:
                chain.append(("basket_add", basket_after))
        at = float(served.ts)
        for kind, after in chain:
            at += after
            late = at - served.ts > c.window_ms
            self._reaction(shopper, kind, item_id, at, display, served.event_id,
                           "reactions_beyond_window" if late else "reactions_to_displays")
