"""What the simulated worlds share: shoppers' timeline, the engine's rankings and the
contract's settlement of displays.

:mod:`app.sim.arm_table` (a hidden reward table per arm and context) and :mod:`app.sim.items`
(items with latent vectors, shoppers with latent tastes) are both a :class:`World`: they draw
shoppers and what they do, and this module plays the rest the same way for both. What a world
is made of is in :mod:`app.sim.shoppers`, what it measures in :mod:`app.sim.figures`. Pure and
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
import random
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from app.contract.decode import catalog_key
from app.contract.topics import CATALOG, REACTION_TOPIC_BY_TYPE, SERVED
from app.core.default_rankings import DEFAULT_SESSION_ID, segment_key
from app.core.events import Reaction, Served
from app.core.join import covers
from app.sim.figures import Scoreboard, Settled, events_produced
from app.sim.shoppers import ORGANIC, Display, Item, Outgoing, Shopper, WorldConfig


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
        self.scores = Scoreboard(self.start_ms, config.bucket_ms)
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
        self.scores.add(record, display.arm, display.best_arm)
        if display.group == "engine" and display.source == "default":
            self.counts["engine_from_default"] += 1

    @property
    def settled(self) -> list[Settled]:
        """Every display settled so far, in settlement order."""
        return self.scores.settled

    def progress(self) -> dict[str, Any]:
        """A cheap snapshot for live progress: counts so far, and reward per decision and
        the engine's arm shares over the last minute of settled displays."""
        return {"elapsed_s": (self.clock() - self.start_ms) / 1000.0,
                "events": self.events_produced(), **self.scores.progress()}

    def events_produced(self) -> int:
        """Displays and reactions emitted so far (the catalog not included)."""
        return events_produced(self.counts)

    def summary(self) -> dict[str, Any]:
        """Everything measured so far; :data:`app.sim.figures.SUMMARY_FIELDS` are its keys,
        documented in docs/simulator.md, "The summary"."""
        return self.scores.summary(self.config, self.counts, self.clock() - self.start_ms,
                                   self.unsettled)


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
