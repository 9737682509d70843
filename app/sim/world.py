"""A simulated shop and its shoppers, to play against a running engine (``recoloop simulate``).

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
attribution rule (:func:`app.core.join.covers`, latest display wins) and reward table, so the
simulator's reward per decision is what the engine's ``reco.rewards`` would report. The
*oracle* is the expected reward of the hidden table's best arm in each decision's context;
*regret* is the oracle minus the expected reward of the arm the engine chose.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, NamedTuple

from app.contract.decode import catalog_key
from app.contract.topics import CATALOG, REACTION_TOPIC_BY_TYPE, SERVED
from app.core.engine import DEFAULT_SESSION_ID, segment_key
from app.core.events import Reaction, Served
from app.core.join import covers
from app.settings import DEFAULT_ARMS, DEFAULT_REWARDS

CATEGORIES = ("shoes", "bags", "coats", "hats", "watches", "toys")
# The visible context besides the page category, with how often each value occurs.
CONTEXT_WEIGHTS: dict[str, dict[str, float]] = {
    "season": {"regular": 0.7, "sale": 0.3},
    "region": {"eu": 0.45, "us": 0.35, "apac": 0.2},
    "device": {"mobile": 0.55, "desktop": 0.35, "tablet": 0.1},
}
# Sales convert better on a big screen; the bandit sees the device, so this stays learnable.
BUY_BY_DEVICE = {"mobile": 0.8, "desktop": 1.25, "tablet": 1.0}
# A reaction to a display is a chain: click, then (usually) a detail view, then (sometimes)
# a basket add. The reward of a display is the best reaction inside the window.
CHAIN = ("click", "detail_view", "basket_add")
GROUPS = ("engine", "control", "fallback")
# Every top-level field of the summary (documented in the README's "Simulator" section).
SUMMARY_FIELDS = ("run", "events", "sessions", "rankings", "decisions", "reward_per_decision",
                  "uplift_vs_control", "regret", "arm_share", "per_site", "timeline")


@dataclass(frozen=True)
class Delays:
    """Reaction delays after a display, in ms: log-normal click and basket-add delays.

    With the defaults about 3 % of clicks and a fifth of basket adds fall beyond 20 s.
    """

    click_median_ms: float = 3_000.0
    click_sigma: float = 1.0
    view_after_click_ms: tuple[float, float] = (300.0, 1_500.0)
    basket_median_ms: float = 9_000.0  # after the detail view
    basket_sigma: float = 0.7

    def click(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.click_median_ms), self.click_sigma)

    def view(self, rng: random.Random) -> float:
        return rng.uniform(*self.view_after_click_ms)

    def basket(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.basket_median_ms), self.basket_sigma)


def window_shares(delays: Delays, window_ms: float, steps: int = 200) -> tuple[float, ...]:
    """The probability that each reaction of :data:`CHAIN`, once it happens, falls inside
    the window: exact for the click, by quadrature over the later delays for the others."""
    click = NormalDist(math.log(delays.click_median_ms), delays.click_sigma)

    def click_cdf(ms: float) -> float:
        return click.cdf(math.log(ms)) if ms > 0 else 0.0

    low, high = delays.view_after_click_ms
    views = [low + (high - low) * (i + 0.5) / 20 for i in range(20)]
    basket = NormalDist(math.log(delays.basket_median_ms), delays.basket_sigma)
    baskets = [math.exp(basket.inv_cdf((i + 0.5) / steps)) for i in range(steps)]
    view_share = sum(click_cdf(window_ms - v) for v in views) / len(views)
    basket_share = sum(click_cdf(window_ms - v - b) for v in views for b in baskets) / (
        len(views) * len(baskets))
    return click_cdf(window_ms), view_share, basket_share


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
        """E[reward]: each reaction adds what it raises the best reward so far by, times the
        probability that it happens inside the window."""
        expected, best = 0.0, 0.0
        for kind, p, share in zip(CHAIN, self.chain_probabilities(arm, context), self.shares,
                                  strict=True):
            gain = max(0.0, self.rewards.get(kind, 0.0) - best)
            expected += p * share * gain
            best += gain
        return expected

    def best_arm(self, context: Mapping[str, str]) -> str:
        return max(self.arms, key=lambda arm: self.expected_reward(arm, context))

    def oracle(self, context: Mapping[str, str]) -> float:
        return self.expected_reward(self.best_arm(context), context)


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price: float
    popularity: float
    available: bool


@dataclass
class SimConfig:
    """What to simulate. ``arms`` maps a site to its arms (all five when it is missing)."""

    sites: tuple[str, ...] = ("shop-1",)
    rate: float = 50.0  # target events per second over all sites (approximate)
    control_share: float = 0.2
    window_ms: int = 20_000
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    arms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    run_tag: str = "sim"  # prefix of session and event ids, unique per run
    items_per_category: int = 40
    display_size: int = 6
    mean_pages: float = 6.0  # about; see Simulator.expected_pages
    page_gap_median_ms: float = 12_000.0  # between pages, unless a reco was opened
    page_gap_sigma: float = 0.6
    browse_share: float = 0.4  # page views followed by a browsing click
    browse_buy_share: float = 0.1
    no_served_id_share: float = 0.1  # reco reactions the site cannot tie to their display
    interest_on_page_share: float = 0.7  # sessions whose page category is their interest
    bucket_ms: int = 10_000
    delays: Delays = field(default_factory=Delays)

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("simulate at least one site")
        if not 0.0 <= self.control_share <= 1.0:
            raise ValueError("control_share must be within 0..1")
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.mean_pages <= 1:
            raise ValueError("mean_pages must be above 1")

    def arms_for(self, site_id: str) -> tuple[str, ...]:
        return tuple(self.arms.get(site_id, DEFAULT_ARMS))


class Outgoing(NamedTuple):
    """One record to produce: the logical topic (no prefix), its key and its value."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass
class Shopper:
    """One live session, as the simulator knows it (hidden interest included)."""

    site_id: str
    session_id: str
    interest: str
    context: dict[str, str]
    group: str  # "engine" or "control"
    pages_left: int
    engaged: Counter[str] = field(default_factory=Counter)  # categories engaged with
    basket: set[str] = field(default_factory=set)
    last_item: Item | None = None
    displays: list[Served] = field(default_factory=list)  # recent, for attribution
    reactions: list[Reaction] = field(default_factory=list)  # recent, for attribution
    scheduled: int = 0  # pending timeline entries; the session has ended at 0 and no pages


@dataclass
class Display:
    """A served display waiting for its window to pass."""

    served: Served
    shopper: Shopper
    group: str  # "engine", "control" or "fallback"
    arm: str
    source: str  # "session" or "default" ranking, "control" or "fallback"
    expected: float  # E[reward] of the arm shown in this context
    oracle: float  # E[reward] of the best arm in this context
    best_arm: str


@dataclass
class Tally:
    decisions: int = 0
    reward: float = 0.0
    expected: float = 0.0
    oracle: float = 0.0

    def add(self, display: Display, reward: float) -> None:
        self.decisions += 1
        self.reward += reward
        self.expected += display.expected
        self.oracle += display.oracle

    def per_decision(self, total: float) -> float | None:
        return round(total / self.decisions, 4) if self.decisions else None


class Simulator:
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

    def __init__(self, config: SimConfig, rng: random.Random, clock: Callable[[], int]) -> None:
        self.config = config
        self.rng = rng
        self.clock = clock
        self.start_ms = clock()
        shares = window_shares(config.delays, config.window_ms)
        self.models = {site: HiddenModel.draw(rng, config.arms_for(site), shares,
                                              config.rewards) for site in config.sites}
        self.catalogs = {site: self._draw_catalog(site) for site in config.sites}
        self._by_category = {site: {c: [i for i in items if i.available and i.category == c]
                                    for c in CATEGORIES} for site, items in self.catalogs.items()}
        self._items = {site: {i.item_id: i for i in items} for site, items in self.catalogs.items()}
        self._timeline: list[tuple[int, int, str, Any]] = []  # (ts, seq, what, payload)
        self._seq = 0
        self._ids = itertools.count(1)
        self._shoppers: dict[tuple[str, str], Shopper] = {}
        self._session_rankings: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._default_rankings: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._open: deque[Display] = deque()  # served, window still open, in time order
        self.counts: Counter[str] = Counter()
        self.tallies: dict[str, Tally] = {g: Tally() for g in GROUPS}
        self.site_tallies: dict[tuple[str, str], Tally] = {}
        self.buckets: dict[tuple[int, str], Tally] = {}
        self.arm_counts: dict[str, Counter[str]] = {g: Counter() for g in (*GROUPS, "oracle")}
        self.recent: deque[tuple[int, str, float, float, str]] = deque()  # settled, 60 s
        self._arrival_ms = 1000.0 * self.events_per_session() / config.rate
        self._schedule(self.start_ms, "arrival", True)
        # Warm start: about the steady state's number of live sessions, spread over one page
        # gap, so the rate is reached at once instead of after a session's lifetime.
        gap_ms = config.page_gap_median_ms * math.exp(config.page_gap_sigma ** 2 / 2)
        for _ in range(round((self.expected_pages() - 1) * gap_ms / self._arrival_ms)):
            self._schedule(self.start_ms + self.rng.uniform(0, gap_ms), "arrival", False)

    # -- the catalog and the traffic model --------------------------------------------------

    def _draw_catalog(self, site_id: str) -> list[Item]:
        items = []
        for c, category in enumerate(CATEGORIES):
            for n in range(self.config.items_per_category):
                items.append(Item(f"{site_id}-{c}{n:03d}", category,
                                  round(self.rng.lognormvariate(math.log(40), 0.6), 2),
                                  self.rng.paretovariate(1.2), self.rng.random() > 0.05))
        return items

    def catalog_records(self) -> list[Outgoing]:
        """The sites' catalogs for ``reco.catalog`` (key ``site_id:item_id``)."""
        now = self.clock()
        self.counts["catalog"] += sum(len(items) for items in self.catalogs.values())
        return [Outgoing(CATALOG, catalog_key(site, i.item_id),
                         {"site_id": site, "item_id": i.item_id, "category": i.category,
                          "available": i.available, "price": i.price, "ts": now})
                for site, items in self.catalogs.items() for i in items]

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
        return self.expected_pages() * (1 + reactions + browse)

    def expected_pages(self) -> float:
        """E[pages] of a session: one, plus the floor of an exponential (see _new_shopper)."""
        return 1.0 + 1.0 / math.expm1(1.0 / (self.config.mean_pages - 1))

    def _new_shopper(self, now: int) -> Shopper:
        site = self.rng.choice(self.config.sites)
        interest = self.rng.choice(CATEGORIES)
        page = interest if self.rng.random() < self.config.interest_on_page_share \
            else self.rng.choice(CATEGORIES)
        context = {"category": page}
        for dim, weights in CONTEXT_WEIGHTS.items():
            context[dim] = self.rng.choices(list(weights), list(weights.values()))[0]
        group = "control" if self.rng.random() < self.config.control_share else "engine"
        pages = 1 + int(self.rng.expovariate(1.0 / (self.config.mean_pages - 1)))
        self.counts["sessions"] += 1
        self.counts[f"sessions_{group}"] += 1
        return Shopper(site, f"{self.config.run_tag}-s{self.counts['sessions']}", interest,
                       context, group, pages)

    # -- the timeline -----------------------------------------------------------------------

    def _schedule(self, ts: float, what: str, payload: Any, shopper: Shopper | None = None
                  ) -> None:
        self._seq += 1
        heapq.heappush(self._timeline, (int(ts), self._seq, what, payload))
        if shopper is not None:
            shopper.scheduled += 1

    def next_due_ms(self) -> int | None:
        """When the next record is due (ms), or None when nothing is scheduled."""
        return self._timeline[0][0] if self._timeline else None

    def advance(self) -> list[Outgoing]:
        """Everything due up to now, in event-time order; settles displays whose window
        has passed."""
        now = self.clock()
        out: list[Outgoing] = []
        while self._timeline and self._timeline[0][0] <= now:
            ts, _, what, payload = heapq.heappop(self._timeline)
            if what == "arrival":  # payload: whether it is the recurring Poisson arrival
                shopper = self._new_shopper(ts)
                self._shoppers[(shopper.site_id, shopper.session_id)] = shopper
                self._schedule(ts, "page", shopper, shopper)
                if payload:
                    self._schedule(ts + self.rng.expovariate(1.0 / self._arrival_ms),
                                   "arrival", True)
                continue
            if what == "page":
                shopper = payload
                shopper.scheduled -= 1
                out.append(self._page(shopper, ts))
            else:
                shopper, record, (kind, tag) = payload
                shopper.scheduled -= 1
                self.counts[kind] += 1
                self.counts[tag] += 1
                out.append(record)
            if shopper.scheduled == 0 and shopper.pages_left == 0:
                self._end(shopper)
        self._settle(now)
        return out

    def _end(self, shopper: Shopper) -> None:
        key = (shopper.site_id, shopper.session_id)
        del self._shoppers[key]
        self._session_rankings.pop(key, None)
        self.counts["sessions_ended"] += 1

    # -- rankings ---------------------------------------------------------------------------

    def on_ranking(self, value: Mapping[str, Any]) -> None:
        """Take one ``reco.rankings`` record: a live session's latest ranking, or a default
        ranking for a segment (``session_id`` ``"*"``); others are ignored."""
        self.counts["rankings_read"] += 1
        key = (str(value.get("site_id")), str(value.get("session_id")))
        if key[1] == DEFAULT_SESSION_ID:
            self._default_rankings[(key[0], str(value.get("segment", "")))] = value
            self.counts["rankings_default"] += 1
        elif key in self._shoppers:
            self._session_rankings[key] = value
            self.counts["rankings_session"] += 1

    def _engine_choice(self, shopper: Shopper) -> tuple[Mapping[str, Any], str] | None:
        """The ranking an engine session shows: its own latest, else its segment's default,
        else the site-wide default; None when the engine has published none of these."""
        site = shopper.site_id
        for ranking, source in ((self._session_rankings.get((site, shopper.session_id)),
                                 "session"),
                                (self._default_rankings.get((site, segment_key(shopper.context))),
                                 "default"),
                                (self._default_rankings.get((site, "")), "default")):
            if ranking is not None and ranking.get("items"):
                return ranking, source
        return None

    # -- one page view ----------------------------------------------------------------------

    def _page(self, shopper: Shopper, now: int) -> Outgoing:
        """Show a display, draw the shopper's reactions to it and the next page."""
        self.counts["pages"] += 1
        shopper.pages_left -= 1
        site, model = shopper.site_id, self.models[shopper.site_id]
        arms = model.arms
        event_id = f"{self.config.run_tag}-d{self.counts['pages']}"
        value: dict[str, Any] = {"event_id": event_id, "site_id": site,
                                 "session_id": shopper.session_id, "ts": now,
                                 "context": dict(shopper.context)}
        choice = self._engine_choice(shopper) if shopper.group == "engine" else None
        if choice is not None:
            ranking, source = choice
            group, arm = "engine", ranking["arm"]
            items = [entry["item_id"] for entry in ranking["items"]][:self.config.display_size]
            # The engine's record of a default ranking belongs to no session, so arm and
            # propensity go along (topics/README.md); for a session's own they are ignored.
            value.update(ranking_id=ranking["ranking_id"], arm=arm,
                         propensity=ranking["propensity"])
        else:
            group = shopper.group if shopper.group == "control" else "fallback"
            source, arm = group, self.rng.choice(arms)
            items = self._compose(shopper, arm)
            value.update(arm=arm, propensity=1.0 / len(arms))
        value["items"] = items
        served = Served.from_value(value)
        best = model.best_arm(shopper.context)
        display = Display(served, shopper, group, arm, source,
                          model.expected_reward(arm, shopper.context) if arm in arms else 0.0,
                          model.expected_reward(best, shopper.context), best)
        self._open.append(display)
        shopper.displays.append(served)
        self.counts[f"served_{group}"] += 1
        self._forget_old(shopper, now)
        view_at = self._react(shopper, display, model)
        if self.rng.random() < self.config.browse_share:
            self._browse(shopper, now)
        if shopper.pages_left > 0:
            # A shopper who opened a recommended item sees the next block on its page.
            gap = self.rng.lognormvariate(math.log(self.config.page_gap_median_ms),
                                          self.config.page_gap_sigma)
            next_page = view_at + self.rng.uniform(500, 1_500) if view_at else now + gap
            self._schedule(next_page, "page", shopper, shopper)
        self.counts["served"] += 1
        return Outgoing(SERVED, shopper.session_id, value)

    def _react(self, shopper: Shopper, display: Display, model: HiddenModel) -> float | None:
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
            self._reaction(shopper, kind, item, at, served_id,
                           "reactions_beyond_window" if late else "reactions_to_displays")
        return view_at

    def _browse(self, shopper: Shopper, now: int) -> None:
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
        self._reaction(shopper, "click", item.item_id, at, None, "browsing")
        at += self.config.delays.view(self.rng)
        self._reaction(shopper, "detail_view", item.item_id, at, None, "browsing")
        if self.rng.random() < self.config.browse_buy_share:
            at += self.config.delays.basket(self.rng)
            self._reaction(shopper, "basket_add", item.item_id, at, None, "browsing")

    def _reaction(self, shopper: Shopper, kind: str, item_id: str, at: float,
                  served_id: str | None, tag: str) -> None:
        """Schedule one reaction; ``tag`` says what it is for the counts: one of
        ``reactions_to_displays``, ``reactions_beyond_window`` or ``browsing``."""
        item = self._items[shopper.site_id][item_id]
        ts = int(at)
        value: dict[str, Any] = {
            "event_id": f"{self.config.run_tag}-r{next(self._ids)}",
            "site_id": shopper.site_id, "session_id": shopper.session_id, "ts": ts,
            "item_id": item_id, "category": item.category, "price": item.price,
            "context": dict(shopper.context)}
        if served_id is not None:
            value["served_id"] = served_id
        shopper.reactions.append(Reaction.from_value(kind, value))
        shopper.engaged[item.category] += 1
        shopper.last_item = item
        if kind == "basket_add":
            shopper.basket.add(item_id)
        record = Outgoing(REACTION_TOPIC_BY_TYPE[kind], shopper.session_id, value)
        self._schedule(ts, "emit", (shopper, record, (kind, tag)), shopper)

    def _pick(self, shopper: Shopper, items: Iterable[str]) -> str | None:
        """The displayed item a shopper reacts to (items of their interest draw more);
        None when the simulator knows none of them."""
        catalog = self._items[shopper.site_id]
        known = [catalog[item] for item in items if item in catalog]
        if not known:
            return None
        weights = [3.0 if i.category == shopper.interest else 1.0 for i in known]
        return self.rng.choices(known, weights)[0].item_id

    def _compose(self, shopper: Shopper, arm: str) -> list[str]:
        """Items for an arm the simulator shows itself (control and fallback displays), by
        simple versions of the engine's arms over the simulator's own knowledge."""
        site = shopper.site_id
        ranked = shopper.engaged.most_common(2)
        if arm in ("category1", "category2"):
            rank = 0 if arm == "category1" else 1
            category = ranked[rank][0] if len(ranked) > rank else shopper.context["category"]
            pool = self._by_category[site][category]
        elif arm == "similar" and shopper.last_item is not None:
            pool = self._by_category[site][shopper.last_item.category]
        elif arm == "trending":
            pool = [i for i in self.catalogs[site] if i.available]
            pool = self.rng.sample(pool, min(len(pool), 30))
        else:  # bestsellers, and similar with nothing engaged yet
            pool = [i for i in self.catalogs[site] if i.available]
        pool = sorted(pool, key=lambda i: i.popularity, reverse=True)
        return [i.item_id for i in pool if i.item_id not in shopper.basket
                ][:self.config.display_size]

    def _forget_old(self, shopper: Shopper, now: int) -> None:
        """Keep only what a future settlement can still need (two windows back)."""
        horizon = now - 2 * self.config.window_ms
        shopper.displays = [s for s in shopper.displays if s.ts >= horizon]
        shopper.reactions = [r for r in shopper.reactions if r.ts >= horizon]

    # -- settlement and figures -------------------------------------------------------------

    def _settle(self, now: int) -> None:
        while self._open and self._open[0].served.ts + self.config.window_ms < now:
            self._settle_one(self._open.popleft())

    def reward_of(self, display: Served, shopper: Shopper) -> float:
        """The contract's reward of a display: the best reaction attributed to it (by
        ``served_id``, or by item when it has none; the latest covering display wins)."""
        best = 0.0
        for reaction in shopper.reactions:
            if not covers(display, reaction, self.config.window_ms):
                continue
            winner = max((s for s in shopper.displays
                          if covers(s, reaction, self.config.window_ms)),
                         key=lambda s: (s.ts, s.event_id))
            if winner.event_id == display.event_id:
                best = max(best, self.config.rewards.get(reaction.type, 0.0))
        return best

    def _settle_one(self, display: Display) -> None:
        reward = self.reward_of(display.served, display.shopper)
        self.tallies[display.group].add(display, reward)
        site = display.shopper.site_id
        self.site_tallies.setdefault((site, display.group), Tally()).add(display, reward)
        bucket = (display.served.ts - self.start_ms) // self.config.bucket_ms
        self.buckets.setdefault((bucket, display.group), Tally()).add(display, reward)
        self.arm_counts[display.group][display.arm] += 1
        if display.group == "engine":
            self.arm_counts["oracle"][display.best_arm] += 1
            if display.source == "default":
                self.counts["engine_from_default"] += 1
        self.recent.append((display.served.ts, display.group, reward, display.oracle,
                            display.arm))
        while self.recent and self.recent[0][0] < display.served.ts - 60_000:
            self.recent.popleft()

    def progress(self) -> dict[str, Any]:
        """A cheap snapshot for live progress: counts so far, and reward per decision and
        the engine's arm shares over the last minute of settled displays."""
        rewards: dict[str, list[float]] = {g: [] for g in GROUPS}
        oracle: list[float] = []
        arms: Counter[str] = Counter()
        for _, group, reward, best, arm in self.recent:
            rewards[group].append(reward)
            if group == "engine":
                oracle.append(best)
                arms[arm] += 1
        return {
            "elapsed_s": (self.clock() - self.start_ms) / 1000.0,
            "events": self.events_produced(),
            "decisions": sum(t.decisions for t in self.tallies.values()),
            "engine": _mean(rewards["engine"]), "control": _mean(rewards["control"]),
            "oracle": _mean(oracle), "arm_share": _shares(arms),
        }

    def events_produced(self) -> int:
        """Displays and reactions emitted so far (the catalog not included)."""
        return self.counts["served"] + sum(self.counts[kind] for kind in CHAIN)

    def summary(self) -> dict[str, Any]:
        """Everything measured so far; :data:`SUMMARY_FIELDS` are its keys, documented in
        the README's "Simulator" section."""
        elapsed_s = (self.clock() - self.start_ms) / 1000.0
        total = self.events_produced()
        engine = self.tallies["engine"]
        rates = {g: self.tallies[g].per_decision(self.tallies[g].reward) for g in GROUPS}
        return {
            "run": {"sites": list(self.config.sites), "rate": self.config.rate,
                    "control_share": self.config.control_share,
                    "reward_window_s": self.config.window_ms / 1000,
                    "rewards": dict(self.config.rewards),
                    "bucket_s": self.config.bucket_ms / 1000,
                    "started_ms": self.start_ms, "elapsed_s": round(elapsed_s, 1)},
            "events": {"total": total, "served": self.counts["served"],
                       **{kind: self.counts[kind] for kind in CHAIN},
                       "per_s": round(total / elapsed_s, 1) if elapsed_s > 0 else None,
                       "catalog": self.counts["catalog"],
                       **{tag: self.counts[tag] for tag in (
                           "reactions_to_displays", "reactions_beyond_window", "browsing")}},
            "sessions": {"started": self.counts["sessions"],
                         "engine": self.counts["sessions_engine"],
                         "control": self.counts["sessions_control"],
                         "ended": self.counts["sessions_ended"]},
            "rankings": {"read": self.counts["rankings_read"],
                         "session": self.counts["rankings_session"],
                         "default": self.counts["rankings_default"]},
            "decisions": {"total": sum(t.decisions for t in self.tallies.values()),
                          **{g: self.tallies[g].decisions for g in GROUPS},
                          "engine_from_default": self.counts["engine_from_default"],
                          "unsettled": len(self._open),
                          "served": {g: self.counts[f"served_{g}"] for g in GROUPS}},
            "reward_per_decision": {**rates, "oracle": engine.per_decision(engine.oracle),
                                    "engine_expected": engine.per_decision(engine.expected)},
            "uplift_vs_control": (round(rates["engine"] / rates["control"] - 1, 4)
                                  if rates["engine"] is not None and rates["control"] else None),
            "regret": {"total": round(engine.oracle - engine.expected, 2),
                       "per_decision": engine.per_decision(engine.oracle - engine.expected)},
            "arm_share": {group: _shares(self.arm_counts[group])
                          for group in ("engine", "control", "oracle")},
            "per_site": {site: self._site_summary(site) for site in self.config.sites},
            "timeline": self._timeline_rows(),
        }

    def _site_summary(self, site: str) -> dict[str, Any]:
        tallies = {g: self.site_tallies.get((site, g), Tally()) for g in GROUPS}
        return {"decisions": {g: t.decisions for g, t in tallies.items()},
                "reward_per_decision": {**{g: t.per_decision(t.reward)
                                           for g, t in tallies.items()},
                                        "oracle": tallies["engine"].per_decision(
                                            tallies["engine"].oracle)}}

    def _timeline_rows(self) -> list[dict[str, Any]]:
        """Per time bucket (by display time): decisions and reward per decision of the
        engine and the control, the oracle's, and the engine's regret."""
        rows = []
        cumulative = 0.0
        last = max((bucket for bucket, _ in self.buckets), default=-1)
        for bucket in range(last + 1):
            engine = self.buckets.get((bucket, "engine"), Tally())
            control = self.buckets.get((bucket, "control"), Tally())
            regret = engine.oracle - engine.expected
            cumulative += regret
            rows.append({"t_s": bucket * self.config.bucket_ms / 1000,
                         "engine_decisions": engine.decisions,
                         "control_decisions": control.decisions,
                         "engine": engine.per_decision(engine.reward),
                         "control": control.per_decision(control.reward),
                         "oracle": engine.per_decision(engine.oracle),
                         "engine_expected": engine.per_decision(engine.expected),
                         "regret": round(regret, 3), "cumulative_regret": round(cumulative, 3)})
        return rows


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {arm: round(n / total, 4) for arm, n in sorted(counts.items())} if total else {}
