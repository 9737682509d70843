"""The engine: what one input event does to a partition's state, and what it emits.

Pure and synchronous: state comes in through a :class:`Store` (a partition's RocksDB state
in the worker, a dict in unit tests), the bandits through :class:`Policies`, and time only
from the events themselves. The worker's processor (:mod:`app.stream.processor`) decodes,
calls :meth:`Engine.handle`, and stages what to send.

The engine handles the session events itself (the session, the reward join, the
statistics); :mod:`app.core.stream_time` moves the partition's stream time and settles the
sessions due behind it, :mod:`app.core.issuing` issues each ranking and
:mod:`app.core.default_rankings` publishes the rankings of sessions with no history.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from app.core import join
from app.core.arms import uses_item_model
from app.core.candidates import ItemSignals
from app.core.catalog import CatalogView
from app.core.default_rankings import DefaultRankings, default_placement
from app.core.events import ClosedDecision, Ranking, Reaction, Served, Tick
from app.core.issuing import (
    NO_EXPERIMENT,
    BanditPart,
    Placement,
    Policies,
    RankingIssuer,
    RankingPart,
    model_of,
)
from app.core.join import JoinResult, JoinRules, PendingDisplay
from app.core.keys import state_key
from app.core.ranker import POSITIONS_LEARNED
from app.core.session import Session
from app.core.sites import Defaults, SiteSettings
from app.core.stats import Engagement, SiteStats, learn_engagement
from app.core.store import Store
from app.core.stream_time import CLOCK_KEY, PartitionClock, StreamTime

JOIN_RULES_CACHED = 1_000


class JoinPart(Protocol):
    """What the engine reads of the settings' join section."""

    @property
    def idle_close_s(self) -> float: ...
    @property
    def tick_interval_s(self) -> float: ...
    @property
    def session_timeout_s(self) -> float: ...


class EngineSettings(Defaults, Protocol):
    """What the engine reads of the worker's settings' sections; :class:`app.settings.Settings`
    is one. A protocol rather than an import keeps the core free of the settings layer."""

    @property
    def join(self) -> JoinPart: ...
    @property
    def ranking(self) -> RankingPart: ...
    @property
    def bandit(self) -> BanditPart: ...


@dataclass
class Effects:
    """What handling one event produced, for the agent to send and count."""

    rewards: list[ClosedDecision] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    late: list[Reaction] = field(default_factory=list)
    unattributed: list[Reaction] = field(default_factory=list)
    # For the site's learner, when statistics are shared (see Engine): one per reaction.
    engagements: list[Engagement] = field(default_factory=list)
    attributed: int = 0
    traced: list[tuple[Served, Reaction]] = field(default_factory=list)  # JoinResult.traced
    duplicate: bool = False
    pending_displays: int = 0  # open displays on the event's partition after it

    def absorb(self, result: JoinResult) -> None:
        self.rewards += result.closed
        self.late += result.late
        self.unattributed += result.unattributed
        self.attributed += result.attributed
        self.traced += result.traced


def session_key(site_id: str, session_id: str) -> str:
    return state_key("session", site_id, session_id)


class Engine:
    """Handles one partition's events at a time (any number of partitions, one store each).

    ``site_stats``: where each site's item statistics are read, shared by every partition and
    learned elsewhere from the :attr:`Effects.engagements` the engine emits (the worker's
    site learner, :mod:`app.stream.site_stats`): every arm then ranks from the whole site's
    traffic. Without it each partition learns statistics in its own state from the sessions
    it owns, at once (a sample of the site: tools and unit tests).
    """

    def __init__(self, settings: EngineSettings, policies: Policies, catalog: CatalogView,
                 site_stats: Store | None = None, sites: SiteSettings | None = None) -> None:
        self.settings = settings
        # Per-site settings and rules (the worker's follow the site-config topic).
        self.sites = SiteSettings(settings) if sites is None else sites
        self.policies = policies
        self.catalog = catalog
        self.site_stats = site_stats
        self._rules: dict[tuple[float, float, tuple[tuple[str, float], ...]], JoinRules] = {}
        self._site_rules: dict[str, tuple[object, JoinRules]] = {}
        self._site_idle_ms = int(settings.ranking.site_idle_s * 1000)
        windows = settings.join
        self._idle_ms = int(windows.idle_close_s * 1000)
        self._quiet_ticks = max(1, round(windows.idle_close_s / windows.tick_interval_s))
        self._session_timeout_ms = int(windows.session_timeout_s * 1000)
        self.time = StreamTime(self._quiet_ticks, self._idle_ms, self._session_timeout_ms,
                               self.rules_for)
        self.issuer = RankingIssuer(settings, policies, catalog, self.sites, self.rules_for)
        self.defaults = DefaultRankings(settings, policies, self.sites, self.issuer, self._stats,
                                        self._site_idle_ms)

    def rules_for(self, site_id: str) -> JoinRules:
        """The site's join rules: the settings, with the site's overrides (one object per
        distinct set of rules, the cache bounded by :data:`JOIN_RULES_CACHED`)."""
        join = self.sites.join_for(site_id)
        known = self._site_rules.get(site_id)
        if known is not None and known[0] is join:  # the site's config has not changed
            return known[1]
        window_s, grace_s, rewards = join
        key = (window_s, grace_s, tuple(sorted(rewards.items())))
        rules = self._rules.get(key)
        if rules is None:
            if len(self._rules) >= JOIN_RULES_CACHED:  # site configs may each differ
                self._rules.clear()
            rules = self._rules[key] = JoinRules(int(window_s * 1000), int(grace_s * 1000),
                                                 rewards)
        if len(self._site_rules) >= JOIN_RULES_CACHED:
            self._site_rules.clear()
        self._site_rules[site_id] = (join, rules)
        return rules

    def handle(self, store: Store, event: Served | Reaction | Tick) -> Effects:
        effects = Effects()
        clock: PartitionClock = store.get(CLOCK_KEY) or PartitionClock()
        if isinstance(event, Tick):
            self._on_tick(store, clock, event, effects)
        else:
            kind = "served" if isinstance(event, Served) else event.type
            self.time.on_event(store, clock, kind, event.ts, effects.absorb)
            self._on_session_event(store, clock, event, effects)
        clock.pending_displays -= len(effects.rewards)
        effects.pending_displays = clock.pending_displays
        store.set(CLOCK_KEY, clock)
        return effects

    def note_unread(self, store: Store, kinds: frozenset[str]) -> None:
        """Input kinds with records on the broker not read yet (see
        :meth:`app.core.stream_time.StreamTime.note_unread`)."""
        self.time.note_unread(store, kinds)

    def _on_tick(self, store: Store, clock: PartitionClock, tick: Tick,
                 effects: Effects) -> None:
        """Note the partition and the wall clock, publish the default rankings that are due,
        and move stream time."""
        clock.partition, clock.partitions = tick.partition, tick.partitions
        clock.wall_ms = tick.wall_ms
        if not clock.kind_times:
            return
        self.defaults.publish(store, clock, tick, effects.rankings)
        self.time.on_tick(store, clock, tick, effects.absorb)

    # -- session events -------------------------------------------------------------------

    def _on_session_event(self, store: Store, clock: PartitionClock,
                          event: Served | Reaction, effects: Effects) -> None:
        key = session_key(event.site_id, event.session_id)
        session: Session = store.get(key) or Session(event.site_id, event.session_id)
        if not session.first_sight(event.event_id):
            effects.duplicate = True
            return
        stats = self._stats(store, event.site_id)
        signals: ItemSignals | None = None
        placement = self._placement(event.site_id, event.session_id)
        if isinstance(event, Served):
            clock.pending_displays += 1
            if uses_item_model(self.sites.arms_for(session.site_id, model_of(placement[1]))):
                # A display changes neither the session's items nor the statistics: the
                # signals it is learned with also serve the ranking it triggers.
                signals = ItemSignals(session, stats, self.catalog, event.ts)
            effects.absorb(join.add_display(session.join, self._display(
                session, stats, event, signals, placement)))
        else:
            event = self._with_category(event)
            if not event.organic:  # organic views feed the session and statistics only
                effects.absorb(join.add_reaction(session.join, event))
            engagement = Engagement.of(session, event, self.sites.indexes_sessions(event.site_id))
            if self.site_stats is None:
                learn_engagement(stats, engagement)
            else:
                effects.engagements.append(engagement)
            session.engage(event)
        if clock.stream_time is not None:
            effects.absorb(join.advance(session.join, clock.stream_time,
                                        self.rules_for(session.site_id)))
        session.touch(event.ts, event.context)
        ranking = self.issuer.rank(session, stats, f"rk-{event.event_id}", event.ts,
                                   placement, trigger_event_id=event.event_id, signals=signals)
        if ranking is not None:
            effects.rankings.append(ranking)
        self.defaults.note_site(store, clock, session, effects.rankings)
        stats.flush()
        self.time.register(store, clock, key, session)
        store.set(key, session)

    def _stats(self, store: Store, site_id: str) -> SiteStats:
        if self.site_stats is None:
            return SiteStats(site_id, store.get, store.set)
        return SiteStats(site_id, self.site_stats.get, _read_only)

    def _with_category(self, reaction: Reaction) -> Reaction:
        """Sites may leave ``category`` out of reactions; the catalog knows it then."""
        if reaction.category is not None:
            return reaction
        known = self.catalog.item(reaction.site_id, reaction.item_id)
        return reaction if known is None else replace(reaction, category=known.category)

    def _placement(self, site_id: str, session_id: str) -> Placement:
        found = self.sites.variant_for(site_id, session_id)
        return NO_EXPERIMENT if found is None else found

    def _display(self, session: Session, stats: SiteStats, served: Served,
                 signals: ItemSignals | None, placement: Placement) -> PendingDisplay:
        issued = session.issued.get(served.ranking_id) if served.ranking_id else None
        # A display belongs to the experiment and variant of the ranking it shows, whatever
        # the site's config says by now (a control's list never teaches the engine); a list
        # of the site's own to the session's variant now.
        if issued is not None:  # the engine's own record of the ranking is authoritative
            display = PendingDisplay(served, issued.arm, issued.propensity, issued.context)
            names = (issued.experiment, issued.variant)
        else:
            display = PendingDisplay(served, served.arm, served.propensity, served.context)
            experiment, variant = placement
            names = default_placement(served.ranking_id) or (
                experiment, None if variant is None else variant.name)
        display.experiment, display.variant = names
        current = self.sites.experiment_for(session.site_id)
        own = current.variant(names[1]) if current is not None and current.name == names[0] \
            else None
        if own is not None and own.apprentice:
            display.apprentice = self.issuer.apprentice(session, stats, served, display.arm)
        if signals is not None:
            display.signals = tuple(signals.of(item) for item in served.items[:POSITIONS_LEARNED])
        return display


def _read_only(key: str, value: object) -> None:
    raise AssertionError(f"shared site statistics are learned by the site's learner ({key})")


