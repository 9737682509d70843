"""What the simulated worlds share: shoppers' timeline, the engine's rankings, the contract's
settlement of displays and the summary.

:mod:`app.sim.arm_table` (a hidden reward table per arm and context) and :mod:`app.sim.items`
(items with latent vectors, shoppers with latent tastes) are both a :class:`World`: they draw
shoppers and what they do, and this module plays the rest the same way for both. Pure and
synchronous: no Kafka, no I/O. Time comes from an injected clock (milliseconds).

- **Timeline.** Everything a world will emit is scheduled on one heap by event time; a
  world's own entries (pages, displays) are handled by :meth:`World._due`, reactions are
  emitted as scheduled. Shoppers arrive as a Poisson process sized to the requested rate.
- **Rankings.** :meth:`World.on_ranking` keeps each live session's latest ``reco.rankings``
  record and each segment's default ranking; an engine session shows its own, else its
  segment's default, else the site-wide default (:meth:`World._engine_display`).
- **Settlement.** Each display is settled once its reward window has passed, with the
  contract's attribution rule (:func:`app.core.join.covers`, the latest covering display wins)
  and reward table, so a world's reward per display is what ``reco.rewards`` would report.
  Besides the reward, a display records whether the shopper clicked one of its items (the
  world knows which reactions answer which display), the expected reward of what it showed
  and the oracle's. *Organic* reactions (ones that answer no display, sent with
  ``"source": "organic"``) are never credited, as the contract says; ``organic`` in the
  summary (what they would earn a display if they were) is therefore 0.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, NamedTuple

from app.contract.decode import catalog_key
from app.contract.topics import CATALOG, REACTION_TOPIC_BY_TYPE, SERVED
from app.core.default_rankings import DEFAULT_SESSION_ID, segment_key
from app.core.events import Reaction, Served
from app.core.join import covers
from app.settings import DEFAULT_ARMS, DEFAULT_REWARDS

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
# Every top-level field of the summary (documented in docs/simulator.md, "The summary").
SUMMARY_FIELDS = ("run", "events", "sessions", "rankings", "decisions", "reward_per_decision",
                  "uplift_vs_control", "regret", "arm_share", "per_site", "timeline", "ctr",
                  "by_fifth", "standard_error")
FIFTHS = 5
ORGANIC = "organic"  # the value of a reaction's "source" when it answers no display


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


def chain_value(probabilities: Sequence[float], shares: Sequence[float],
                rewards: Mapping[str, float]) -> float:
    """E[reward] of a reaction chain: each reaction of :data:`CHAIN` adds what it raises the
    best reward so far by, times the probability that it happens (``probabilities``) and
    falls inside the window (``shares``, see :func:`window_shares`).

    >>> chain_value((0.5, 0.25, 0.1), (1.0, 1.0, 0.5), {"click": 1, "detail_view": 1,
    ...                                                  "basket_add": 3})
    0.6
    """
    expected, best = 0.0, 0.0
    for kind, p, share in zip(CHAIN, probabilities, shares, strict=True):
        gain = max(0.0, rewards.get(kind, 0.0) - best)
        expected += p * share * gain
        best += gain
    return expected


def draw_context(rng: random.Random, category: str) -> dict[str, str]:
    """A visible context: the page ``category`` and a season, region and device drawn with
    :data:`CONTEXT_WEIGHTS`."""
    context = {"category": category}
    for dim, weights in CONTEXT_WEIGHTS.items():
        context[dim] = rng.choices(list(weights), list(weights.values()))[0]
    return context


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price: float
    available: bool


@dataclass
class WorldConfig:
    """What every world simulates. ``arms`` maps a site to its arms (all five when missing):
    what the engine chooses from, and what a display the simulator fills itself divides its
    propensity by."""

    sites: tuple[str, ...] = ("shop-1",)
    rate: float = 50.0  # target events per second over all sites (approximate)
    control_share: float = 0.2
    window_ms: int = 20_000
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    arms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    run_tag: str = "sim"  # prefix of session and event ids, unique per run
    display_size: int = 6
    mean_pages: float = 6.0  # about; see expected_pages
    page_gap_median_ms: float = 12_000.0
    page_gap_sigma: float = 0.6
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
        if self.display_size < 1:
            raise ValueError("display_size must be at least 1")

    def arms_for(self, site_id: str) -> tuple[str, ...]:
        return tuple(self.arms.get(site_id, DEFAULT_ARMS))

    def draw_pages(self, rng: random.Random) -> int:
        """Pages of a new session: one, plus the floor of an exponential."""
        return 1 + int(rng.expovariate(1.0 / (self.mean_pages - 1)))

    def expected_pages(self) -> float:
        """E[:meth:`draw_pages`]."""
        return 1.0 + 1.0 / math.expm1(1.0 / (self.mean_pages - 1))

    def page_gap(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.page_gap_median_ms), self.page_gap_sigma)

    def mean_page_gap_ms(self) -> float:
        return self.page_gap_median_ms * math.exp(self.page_gap_sigma ** 2 / 2)


class Outgoing(NamedTuple):
    """One record to produce: the logical topic (no prefix), its key and its value."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass
class Shopper:
    """One live session, as the simulator knows it."""

    site_id: str
    session_id: str
    context: dict[str, str]
    group: str  # "engine" or "control"
    pages_left: int
    basket: set[str] = field(default_factory=set)
    displays: list[Served] = field(default_factory=list)  # recent, for attribution
    reactions: list[Reaction] = field(default_factory=list)  # recent, for attribution
    organic: set[str] = field(default_factory=set)  # event ids of reactions to no display
    scheduled: int = 0  # pending timeline entries; the session has ended at 0 and no pages


@dataclass
class Display:
    """A served display waiting for its window to pass."""

    served: Served
    shopper: Shopper
    group: str  # "engine", "control" or "fallback"
    arm: str
    source: str  # "session" or "default" ranking, "control" or "fallback"
    expected: float  # E[reward] of what was shown
    oracle: float  # E[reward] of the best the world allows
    best_arm: str | None = None  # the oracle's arm, in a world of arms
    clicked: bool = False  # the shopper clicked one of its items (whether in time or not)


class Settled(NamedTuple):
    """One settled display, as the figures need it."""

    served_id: str
    ts: int
    site_id: str
    session_id: str
    group: str
    reward: float  # the contract's
    clicked: bool
    expected: float
    oracle: float
    organic: float  # the part of ``reward`` that organic reactions earned it


@dataclass
class Tally:
    decisions: int = 0
    reward: float = 0.0
    expected: float = 0.0
    oracle: float = 0.0
    clicks: int = 0
    organic: float = 0.0

    def add(self, settled: Settled) -> None:
        self.decisions += 1
        self.reward += settled.reward
        self.expected += settled.expected
        self.oracle += settled.oracle
        self.clicks += settled.clicked
        self.organic += settled.organic

    def per_decision(self, total: float) -> float | None:
        return round(total / self.decisions, 4) if self.decisions else None


def ratio_se(pairs: Iterable[tuple[float, float]]) -> float | None:
    """Standard error of sum(y) / sum(n) over independent clusters given as (y, n) pairs
    (the delta method); None with fewer than two clusters.

    >>> ratio_se([(1, 2), (0, 2), (1, 2), (0, 2)])
    0.1443
    """
    clusters = list(pairs)
    if len(clusters) < 2:
        return None
    total_y, total_n = sum(y for y, _ in clusters), sum(n for _, n in clusters)
    if total_n == 0:
        return None
    mean = total_y / total_n
    spread = sum((y - mean * n) ** 2 for y, n in clusters)
    k = len(clusters)
    return round(math.sqrt(k / (k - 1) * spread) / total_n, 4)


def figures(records: Iterable[Settled]) -> dict[str, Any]:
    """Decisions, sessions, CTR and reward per decision (each with its standard error over
    sessions: one shopper's displays are not independent), the expected and the oracle's
    reward per decision, and the reward organic reactions earned, per decision."""
    tally = Tally()
    per_session: dict[tuple[str, str], list[float]] = {}
    for record in records:
        tally.add(record)
        sums = per_session.setdefault((record.site_id, record.session_id), [0.0, 0.0, 0.0])
        sums[0] += 1
        sums[1] += record.clicked
        sums[2] += record.reward
    return {"decisions": tally.decisions, "sessions": len(per_session),
            "ctr": tally.per_decision(tally.clicks),
            "ctr_se": ratio_se((s[1], s[0]) for s in per_session.values()),
            "reward": tally.per_decision(tally.reward),
            "reward_se": ratio_se((s[2], s[0]) for s in per_session.values()),
            "expected": tally.per_decision(tally.expected),
            "oracle": tally.per_decision(tally.oracle),
            "organic": tally.per_decision(tally.organic)}


def by_fifth(records: Sequence[Settled], start_ms: int, elapsed_ms: float,
             groups: Sequence[str] = GROUPS) -> list[dict[str, Any]]:
    """:func:`figures` per group for each fifth of the run (by display time)."""
    span = max(elapsed_ms, 1.0) / FIFTHS
    rows: list[dict[str, Any]] = []
    for fifth in range(FIFTHS):
        low, high = start_ms + fifth * span, start_ms + (fifth + 1) * span
        inside = [r for r in records if low <= r.ts < high or (fifth == FIFTHS - 1
                                                              and r.ts >= high)]
        rows.append({"from_s": round(fifth * span / 1000, 1),
                     "to_s": round((fifth + 1) * span / 1000, 1),
                     **{g: figures(r for r in inside if r.group == g) for g in groups}})
    return rows


class World:
    """The part of a simulated world that does not depend on its model; see the module
    docstring. A world subclasses it and provides :meth:`_new_shopper`, :meth:`_due` (its own
    timeline entries) and :meth:`events_per_session`, sets :attr:`catalogs` with
    :meth:`_set_catalogs` and then calls :meth:`_start_arrivals`.

    Parameters
    ----------
    config
        What to simulate.
    clock
        Current time in ms since the epoch; event times (``ts``) are taken from it.
    """

    def __init__(self, config: WorldConfig, clock: Callable[[], int]) -> None:
        self.config = config
        self.clock = clock
        self.start_ms = clock()
        self.catalogs: dict[str, list[Item]] = {}
        self._items: dict[str, dict[str, Item]] = {}
        self._timeline: list[tuple[int, int, str, Any]] = []  # (ts, seq, what, payload)
        self._seq = 0
        self._ids = itertools.count(1)
        self._display_ids = itertools.count(1)
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
        self.settled: list[Settled] = []
        self._arrival_rng = random.Random(0)
        self._arrival_ms = 1.0

    # -- what a world provides --------------------------------------------------------------

    def events_per_session(self) -> float:
        """Expected events of one session, to size the arrival rate."""
        raise NotImplementedError

    def _new_shopper(self, now: int, number: int) -> Shopper:
        """The ``number``-th shopper (from 1), arriving at ``now``; its first timeline entry
        is a ``page``."""
        raise NotImplementedError

    def _due(self, what: str, shopper: Shopper, now: int) -> Outgoing | None:
        """Handle one of the world's own timeline entries; the record it emits, if any."""
        raise NotImplementedError

    def _reacted(self, shopper: Shopper, kind: str, item: Item) -> None:
        """Called for every reaction a shopper is given (a world's own bookkeeping)."""

    # -- the catalog and arrivals -----------------------------------------------------------

    def _set_catalogs(self, catalogs: Mapping[str, Sequence[Item]]) -> None:
        self.catalogs = {site: list(items) for site, items in catalogs.items()}
        self._items = {site: {i.item_id: i for i in items} for site, items in catalogs.items()}

    def catalog_records(self) -> list[Outgoing]:
        """The sites' catalogs for ``reco.catalog`` (key ``site_id:item_id``)."""
        now = self.clock()
        self.counts["catalog"] += sum(len(items) for items in self.catalogs.values())
        return [Outgoing(CATALOG, catalog_key(site, i.item_id),
                         {"site_id": site, "item_id": i.item_id, "category": i.category,
                          "available": i.available, "price": i.price, "ts": now})
                for site, items in self.catalogs.items() for i in items]

    def _start_arrivals(self, rng: random.Random) -> None:
        """Schedule the Poisson arrivals (drawn from ``rng``) and a warm start: about the
        steady state's number of live sessions, spread over one page gap, so the rate is
        reached at once instead of after a session's lifetime."""
        self._arrival_rng = rng
        self._arrival_ms = 1000.0 * self.events_per_session() / self.config.rate
        self._schedule(self.start_ms, "arrival", True)
        gap_ms = self.config.mean_page_gap_ms()
        for _ in range(round((self.config.expected_pages() - 1) * gap_ms / self._arrival_ms)):
            self._schedule(self.start_ms + rng.uniform(0, gap_ms), "arrival", False)

    def _arrive(self, ts: int, recurring: bool) -> None:
        self.counts["sessions"] += 1
        shopper = self._new_shopper(ts, self.counts["sessions"])
        self.counts[f"sessions_{shopper.group}"] += 1
        self._shoppers[(shopper.site_id, shopper.session_id)] = shopper
        self._schedule(ts, "page", shopper, shopper)
        if recurring:
            self._schedule(ts + self._arrival_rng.expovariate(1.0 / self._arrival_ms),
                           "arrival", True)

    # -- the timeline -----------------------------------------------------------------------

    def _schedule(self, ts: float, what: str, payload: Any, shopper: Shopper | None = None
                  ) -> None:
        self._seq += 1
        heapq.heappush(self._timeline, (int(ts), self._seq, what, payload))
        if shopper is not None:
            shopper.scheduled += 1

    @property
    def unsettled(self) -> int:
        """Displays served whose window has not passed yet."""
        return len(self._open)

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
                self._arrive(ts, payload)
                continue
            record: Outgoing | None
            if what == "emit":
                shopper, record, (kind, tag) = payload
                shopper.scheduled -= 1
                self.counts[kind] += 1
                self.counts[tag] += 1
            else:
                shopper = payload
                shopper.scheduled -= 1
                record = self._due(what, shopper, ts)
            if record is not None:
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

    # -- displays and reactions -------------------------------------------------------------

    def _display_value(self, shopper: Shopper, now: int) -> dict[str, Any]:
        """A new ``reco.served`` value, without its items and arm yet."""
        return {"event_id": f"{self.config.run_tag}-d{next(self._display_ids)}",
                "site_id": shopper.site_id, "session_id": shopper.session_id, "ts": now,
                "context": dict(shopper.context)}

    def _engine_display(self, shopper: Shopper, value: dict[str, Any]
                        ) -> tuple[str, str, list[str]] | None:
        """(arm, source, items) of the engine's ranking an engine session shows, with
        ``ranking_id``, ``arm`` and ``propensity`` set on ``value``; None for a control
        session or when the engine has published nothing usable."""
        choice = self._engine_choice(shopper) if shopper.group == "engine" else None
        if choice is None:
            return None
        ranking, source = choice
        arm = ranking["arm"]
        # The engine's record of a default ranking belongs to no session, so arm and
        # propensity go along (app/contract/topic_specs/README.md); for a session's own they
        # are ignored.
        value.update(ranking_id=ranking["ranking_id"], arm=arm, propensity=ranking["propensity"])
        items = [entry["item_id"] for entry in ranking["items"]][:self.config.display_size]
        return arm, source, items

    def _serve(self, shopper: Shopper, value: dict[str, Any], group: str, arm: str,
               source: str, expected: float, oracle: float, best_arm: str | None = None
               ) -> tuple[Display, Outgoing]:
        """Record a display (``value`` complete, items included) until it settles."""
        served = Served.from_value(value)
        display = Display(served, shopper, group, arm, source, expected, oracle, best_arm)
        self._open.append(display)
        shopper.displays.append(served)
        self.counts[f"served_{group}"] += 1
        self.counts["served"] += 1
        self._forget_old(shopper, value["ts"])
        return display, Outgoing(SERVED, shopper.session_id, value)

    def _reaction(self, shopper: Shopper, kind: str, item_id: str, at: float,
                  answers: Display | None, served_id: str | None, tag: str) -> None:
        """Schedule one reaction. ``answers`` is the display it reacts to (None: organic,
        sent with ``"source": "organic"``), ``served_id`` what the site sends as such, and
        ``tag`` what it is for the counts: ``reactions_to_displays``,
        ``reactions_beyond_window`` or ``browsing``."""
        item = self._items[shopper.site_id][item_id]
        ts = int(at)
        value: dict[str, Any] = {
            "event_id": f"{self.config.run_tag}-r{next(self._ids)}",
            "site_id": shopper.site_id, "session_id": shopper.session_id, "ts": ts,
            "item_id": item_id, "category": item.category, "price": item.price,
            "context": dict(shopper.context)}
        if served_id is not None:
            value["served_id"] = served_id
        if answers is None:
            value["source"] = ORGANIC
            shopper.organic.add(value["event_id"])
        elif kind == "click":
            answers.clicked = True
        shopper.reactions.append(Reaction.from_value(kind, value))
        if kind == "basket_add":
            shopper.basket.add(item_id)
        self._reacted(shopper, kind, item)
        record = Outgoing(REACTION_TOPIC_BY_TYPE[kind], shopper.session_id, value)
        self._schedule(ts, "emit", (shopper, record, (kind, tag)), shopper)

    def _forget_old(self, shopper: Shopper, now: int) -> None:
        """Keep only what a future settlement can still need (two windows back)."""
        horizon = now - 2 * self.config.window_ms
        shopper.displays = [s for s in shopper.displays if s.ts >= horizon]
        shopper.reactions = [r for r in shopper.reactions if r.ts >= horizon]
        kept = {r.event_id for r in shopper.reactions}
        shopper.organic &= kept

    # -- settlement and figures -------------------------------------------------------------

    def _settle(self, now: int) -> None:
        while self._open and self._open[0].served.ts + self.config.window_ms < now:
            self._settle_one(self._open.popleft())

    def reward_of(self, display: Served, shopper: Shopper,
                  skip: Collection[str] = ()) -> float:
        """The contract's reward of a display: the best reaction attributed to it (by
        ``served_id``, or by item when it has none; the latest covering display wins).
        Reactions whose event id is in ``skip`` are left out."""
        best = 0.0
        for reaction in shopper.reactions:
            if reaction.event_id in shopper.organic or reaction.event_id in skip \
                    or not covers(display, reaction, self.config.window_ms):
                continue  # organic reactions are never attributed (the contract's source)
            winner = max((s for s in shopper.displays
                          if covers(s, reaction, self.config.window_ms)),
                         key=lambda s: (s.ts, s.event_id))
            if winner.event_id == display.event_id:
                best = max(best, self.config.rewards.get(reaction.type, 0.0))
        return best

    def _settle_one(self, display: Display) -> None:
        shopper, served = display.shopper, display.served
        reward = self.reward_of(served, shopper)
        organic = reward - self.reward_of(served, shopper, shopper.organic) if reward else 0.0
        record = Settled(served.event_id, served.ts, shopper.site_id, shopper.session_id,
                         display.group, reward, display.clicked, display.expected,
                         display.oracle, organic)
        self.settled.append(record)
        self.tallies[display.group].add(record)
        self.site_tallies.setdefault((shopper.site_id, display.group), Tally()).add(record)
        bucket = (served.ts - self.start_ms) // self.config.bucket_ms
        self.buckets.setdefault((bucket, display.group), Tally()).add(record)
        self.arm_counts[display.group][display.arm] += 1
        if display.group == "engine":
            if display.best_arm is not None:
                self.arm_counts["oracle"][display.best_arm] += 1
            if display.source == "default":
                self.counts["engine_from_default"] += 1
        self.recent.append((served.ts, display.group, reward, display.oracle, display.arm))
        while self.recent and self.recent[0][0] < served.ts - 60_000:
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
        docs/simulator.md, "The summary"."""
        elapsed_ms = self.clock() - self.start_ms
        elapsed_s = elapsed_ms / 1000.0
        total = self.events_produced()
        engine = self.tallies["engine"]
        rates = {g: self.tallies[g].per_decision(self.tallies[g].reward) for g in GROUPS}
        overall = {g: figures(r for r in self.settled if r.group == g) for g in GROUPS}
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
                          "unsettled": self.unsettled,
                          "served": {g: self.counts[f"served_{g}"] for g in GROUPS}},
            "reward_per_decision": {**rates, "oracle": engine.per_decision(engine.oracle),
                                    "engine_expected": engine.per_decision(engine.expected),
                                    "engine_from_organic": engine.per_decision(engine.organic)},
            "uplift_vs_control": (round(rates["engine"] / rates["control"] - 1, 4)
                                  if rates["engine"] is not None and rates["control"] else None),
            "regret": {"total": round(engine.oracle - engine.expected, 2),
                       "per_decision": engine.per_decision(engine.oracle - engine.expected)},
            "arm_share": {group: _shares(self.arm_counts[group])
                          for group in ("engine", "control", "oracle")},
            "per_site": {site: self._site_summary(site) for site in self.config.sites},
            "timeline": self._timeline_rows(),
            "ctr": {g: overall[g]["ctr"] for g in GROUPS},
            "by_fifth": by_fifth(self.settled, self.start_ms, elapsed_ms),
            "standard_error": {"over": "sessions",
                               "ctr": {g: overall[g]["ctr_se"] for g in GROUPS},
                               "reward_per_decision": {g: overall[g]["reward_se"]
                                                       for g in GROUPS}},
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



class SimClock:
    """Simulated time (ms) that :func:`run_simulated` moves: a world runs without waiting."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now


def run_simulated(world: World, clock: SimClock, until_ms: int,
                  respond: Callable[[list[Outgoing]], None]) -> None:
    """Run ``world`` on ``clock`` up to ``until_ms``: jump to each moment something is due
    and hand what the world emits then to ``respond``, which may answer with rankings
    (:meth:`World.on_ranking`) before the world goes on, as an engine does.

    >>> from app.sim.items import ItemConfig, ItemWorld
    >>> clock = SimClock(0)
    >>> world = ItemWorld(ItemConfig(rate=20), 1, clock)
    >>> emitted = []
    >>> run_simulated(world, clock, 60_000, emitted.extend)
    >>> clock.now, 600 < len(emitted) < 1_800
    (60000, True)
    """
    while (due := world.next_due_ms()) is not None and due <= until_ms:
        clock.now = due
        respond(world.advance())
    clock.now = until_ms
    respond(world.advance())


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {arm: round(n / total, 4) for arm, n in sorted(counts.items())} if total else {}
