"""The engine: what one input event does to a partition's state, and what it emits.

Pure and synchronous: state comes in through a :class:`Store` (a partition's RocksDB state
in the worker, a dict in unit tests), the bandits through :class:`Policies`, and time only
from the events themselves. The worker's processor (:mod:`app.stream.processor`) decodes,
calls :meth:`Engine.handle`, and stages what to send.

Stream time is a per-partition *watermark*: the largest event time read on each input topic
of the partition (displays, clicks, detail views, basket adds), and the smallest of those.
Before the watermark every topic has been read (a record at the watermark's own millisecond
may still be unread on a slower topic), so a join decided behind it does not depend
on how fast each topic happened to be read (a worker catching up on a backlog reads them at
different paces). A topic that has not moved for ``idle_close_s`` worth of ticks while others
did is left out (a site may send no basket adds at all), unless the worker says it still has
records to read (:meth:`Engine.note_unread`: a backlog comes one topic's fetch after
another's); when none moves, stream time follows the wall clock carried in by the worker's
tick events (closes labelled ``idle``).

Sessions with something due register in one-second *wake-up buckets*, so advancing stream
time visits only the sessions that are due, never the whole partition.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass, field, replace
from typing import Protocol

from app.core import join
from app.core.arms import ARMS, uses_item_model
from app.core.candidates import ItemSignals, arm_items
from app.core.catalog import CatalogView
from app.core.events import Apprentice, ClosedDecision, Context, Ranking, Reaction, Served, Tick
from app.core.experiment import MAIN_VARIANT, NOTHING, Variant, model_key
from app.core.join import JoinResult, JoinRules, PendingDisplay
from app.core.keys import escape, state_key
from app.core.policy import ContextualBandit
from app.core.ranker import POSITIONS_LEARNED
from app.core.session import IssuedRanking, Session
from app.core.sites import Defaults, SiteSettings
from app.core.stats import Engagement, SiteStats, learn_engagement
from app.core.store import Store

BUCKET_MS = 1_000
SEGMENTS_KEPT_PER_SITE = 20
DEFAULT_SESSION_ID = "*"
# Session expiry is not urgent: coarser buckets keep the bucket index small.
EXPIRY_BUCKET_MS = 60_000
# Each bucket's sessions are spread over this many keys, so registering one session
# rewrites a small record, not the list of every session due in the same minute.
WAKE_SHARDS = 32
CLOCK_KEY = "clock"
JOIN_RULES_CACHED = 1_000
# The watermark's inputs: one per join input topic.
INPUT_KINDS = ("served", "click", "detail_view", "basket_add")


class JoinPart(Protocol):
    @property
    def idle_close_s(self) -> float: ...
    @property
    def tick_interval_s(self) -> float: ...
    @property
    def session_timeout_s(self) -> float: ...


class RankingPart(Protocol):
    @property
    def ranking_size(self) -> int: ...
    @property
    def default_ranking_interval_s(self) -> float: ...
    @property
    def site_idle_s(self) -> float: ...


class BanditPart(Protocol):
    @property
    def seed(self) -> int: ...


class EngineSettings(Defaults, Protocol):
    """What the engine reads of the worker's settings' sections; :class:`app.settings.Settings`
    is one. A protocol rather than an import keeps the core free of the settings layer."""

    @property
    def join(self) -> JoinPart: ...
    @property
    def ranking(self) -> RankingPart: ...
    @property
    def bandit(self) -> BanditPart: ...


class Policies(Protocol):
    def current(self, key: str) -> tuple[ContextualBandit, int]:
        """The bandit of a site (or of a site's experiment variant: ``key`` is a
        :func:`app.core.experiment.model_key`) and its model version (read only: learning
        happens elsewhere)."""
        ...


# A session's place in its site's experiment: the experiment's name and the variant; both
# None when the site runs none.
Placement = tuple[str | None, Variant | None]
NO_EXPERIMENT: Placement = (None, None)


@dataclass
class Segment:
    """A context segment a site's sessions were seen in, and the last event time they were."""

    context: Context
    seen_ts: int


@dataclass
class SiteDefaults:
    """A site's default rankings, kept by its home partition: the context segments its
    sessions were seen in (forgotten after ``site_idle_s`` without traffic), and when each
    segment's default ranking was last published: (wall ms, model version)."""

    segments: dict[str, Segment] = field(default_factory=dict)
    published: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class PartitionClock:
    stream_time: int | None = None
    swept_bucket: int = 0  # wake-up buckets below this one have been visited
    buckets: set[int] = field(default_factory=set)  # buckets with sessions registered
    pending_displays: int = 0  # open displays on this partition
    # The sites seen on this partition and their latest event time; a site leaves after
    # ``site_idle_s`` without traffic (its defaults are under defaults_key(site)).
    sites: dict[str, int] = field(default_factory=dict)
    partition: int = 0
    partitions: int = 0  # 0 until the first tick says how many there are
    wall_ms: int = 0  # the last tick's wall clock
    # The watermark's inputs: per input kind, its largest event time, that time at the last
    # tick, and for how many ticks it has not moved (see Engine._on_tick).
    kind_times: dict[str, int] = field(default_factory=dict)
    kind_times_at_tick: dict[str, int] = field(default_factory=dict)
    kind_quiet_ticks: dict[str, int] = field(default_factory=dict)
    # Wall-clock fallback once every kind is quiet.
    idle_base_time: int | None = None
    idle_since_wall_ms: int | None = None


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


@functools.lru_cache(maxsize=4_096)
def wake_keys(bucket: int) -> tuple[str, ...]:
    """The keys of a wake-up bucket's shards (every sweep reads them all)."""
    return tuple(state_key("wake", bucket, shard) for shard in range(WAKE_SHARDS))


def defaults_key(site_id: str) -> str:
    return state_key("defaults", site_id)


def segment_key(context: Context) -> str:
    """``"device=mobile|region=eu"``: a context segment as sorted key=value pairs, each key
    and value escaped (:mod:`app.core.keys`, and ``=``) so two contexts never share one.

    >>> segment_key({"region": "eu", "device": "m"}), segment_key({"device": "m|region=eu"})
    ('device=m|region=eu', 'device=m%7Cregion%3Deu')
    """
    return "|".join(f"{escape(str(key), equals=True)}={escape(str(value), equals=True)}"
                    for key, value in sorted(context.items()))


def home_partition(site_id: str, partitions: int) -> int:
    """The one partition that publishes a site's default rankings."""
    return zlib.crc32(site_id.encode()) % partitions


def stable_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``key``: replays draw the same arm."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


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
        self._idle_ms = int(settings.join.idle_close_s * 1000)
        join = settings.join
        self._quiet_ticks = max(1, round(join.idle_close_s / join.tick_interval_s))
        self._session_timeout_ms = int(settings.join.session_timeout_s * 1000)

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
            if event.ts > clock.kind_times.get(kind, -1):
                clock.kind_times[kind] = event.ts
                clock.kind_quiet_ticks[kind] = 0
            self._advance(store, clock, self._watermark(clock), "window", effects)
            self._on_session_event(store, clock, event, effects)
        clock.pending_displays -= len(effects.rewards)
        effects.pending_displays = clock.pending_displays
        store.set(CLOCK_KEY, clock)
        return effects

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
            if uses_item_model(self.sites.arms_for(session.site_id, _model_of(placement[1]))):
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
        ranking = self._rank(session, stats, f"rk-{event.event_id}", event.ts, placement,
                             trigger_event_id=event.event_id, signals=signals)
        if ranking is not None:
            effects.rankings.append(ranking)
        self._note_site(store, clock, session, effects)
        stats.flush()
        self._register(store, clock, key, session)
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
            names = _default_placement(served.ranking_id) or (
                experiment, None if variant is None else variant.name)
        display.experiment, display.variant = names
        current = self.sites.experiment_for(session.site_id)
        own = current.variant(names[1]) if current is not None and current.name == names[0] \
            else None
        if own is not None and own.apprentice:
            display.apprentice = self._apprentice(session, stats, served, display.arm)
        if signals is not None:
            display.signals = tuple(signals.of(item) for item in served.items[:POSITIONS_LEARNED])
        return display

    def _apprentice(self, session: Session, stats: SiteStats, served: Served,
                    shown_arm: str | None) -> Apprentice:
        """What the site's engine would have shown instead of an apprentice control's list."""
        policy = self.policies.current(model_key(session.site_id, None))[0]
        probabilities = policy.probabilities(session.context)
        arm, propensity = policy.pick(probabilities, stable_uniform(self.settings.bandit.seed,
                                                                    served.event_id))
        items = arm_items(arm, session, stats, self.catalog, served.ts,
                          self.settings.ranking.ranking_size, policy.ranker,
                          rules=self.sites.rules_for(session.site_id))
        return Apprentice(arm, propensity, probabilities.get(shown_arm or "", 0.0),
                          tuple(item for item, _ in items))

    def _rank(self, session: Session, stats: SiteStats, ranking_id: str, ts: int,
              placement: Placement, segment: str | None = None,
              trigger_event_id: str | None = None,
              signals: ItemSignals | None = None) -> Ranking | None:
        """The session's next ranking under its variant; None under a control that shows
        ``nothing`` (the site shows its own list)."""
        experiment, variant = placement
        variant_name = None if variant is None else variant.name
        if variant is not None and variant.control:
            return self._baseline(session, stats, ranking_id, ts, placement, segment,
                                  trigger_event_id)
        policy, version = self.policies.current(model_key(session.site_id, variant_name))
        context = dict(session.context)
        estimates = policy.estimates(context)
        # An arm with no items of its own for this session would show only fill-ins: the
        # bandit chooses among the others (the propensity is over those, exact).
        eligible = {arm: value for arm, value in estimates.items()
                    if arm not in ARMS or ARMS[arm].has_items(session, stats)}
        probabilities = policy.spread(eligible or estimates)
        arm, propensity = policy.pick(probabilities, stable_uniform(self.settings.bandit.seed,
                                                                    ranking_id))
        placed_by: dict[str, str] = {}
        items = arm_items(arm, session, stats, self.catalog, ts, self.settings.ranking.ranking_size,
                          policy.ranker, signals, self.sites.rules_for(session.site_id),
                          placed_by)
        # Why: what the bandit knew of every arm in this context, and what placed each item.
        explain = {"arms": {a: {"estimate": estimates[a],
                                "probability": probabilities.get(a, 0.0)}
                            for a in policy.arms},
                   "placed_by": [placed_by.get(item, arm) for item, _ in items]}
        self._remember(session, ranking_id, IssuedRanking(arm, propensity, context, version, ts,
                                                          experiment, variant_name))
        return Ranking(ranking_id, session.site_id, session.session_id, ts, arm, propensity,
                       tuple(items), version, context, segment, trigger_event_id, explain,
                       experiment, variant_name)

    def _baseline(self, session: Session, stats: SiteStats, ranking_id: str, ts: int,
                  placement: Placement, segment: str | None,
                  trigger_event_id: str | None) -> Ranking | None:
        """A control variant's fixed list: an arm's, or the site's own; shown for sure."""
        experiment, variant = placement
        assert variant is not None and variant.baseline is not None
        if variant.baseline == NOTHING:
            return None
        placed_by: dict[str, str] = {}
        items = arm_items(variant.baseline, session, stats, self.catalog, ts,
                          self.settings.ranking.ranking_size,
                          rules=self.sites.rules_for(session.site_id),
                          placed_by=placed_by, fixed=variant.items)
        context = dict(session.context)
        self._remember(session, ranking_id, IssuedRanking(variant.baseline, 1.0, context, 0, ts,
                                                          experiment, variant.name))
        explain = {"arms": {}, "placed_by": [placed_by.get(item, variant.baseline)
                                             for item, _ in items]}
        return Ranking(ranking_id, session.site_id, session.session_id, ts, variant.baseline,
                       1.0, tuple(items), 0, context, segment, trigger_event_id, explain,
                       experiment, variant.name)

    def _remember(self, session: Session, ranking_id: str, issued: IssuedRanking) -> None:
        rules = self.rules_for(session.site_id)
        session.remember_ranking(ranking_id, issued, keep_ms=rules.window_ms + rules.grace_ms)

    # -- default rankings -----------------------------------------------------------------

    def _note_site(self, store: Store, clock: PartitionClock, session: Session,
                   effects: Effects) -> None:
        """Remember the site, and at its home the session's segment for default rankings. A
        site this partition has not seen gets its site-wide default at once, not a tick later
        (from whichever partition sees it first)."""
        site_id = session.site_id
        first = site_id not in clock.sites
        clock.sites[site_id] = max(session.last_ts, clock.sites.get(site_id, session.last_ts))
        home = not clock.partitions or home_partition(site_id, clock.partitions) == \
            clock.partition
        defaults: SiteDefaults | None = None
        if home:
            defaults = store.get(defaults_key(site_id)) or SiteDefaults()
            segment = segment_key(session.context)
            defaults.segments.pop(segment, None)
            defaults.segments[segment] = Segment(dict(session.context), session.last_ts)
            while len(defaults.segments) > SEGMENTS_KEPT_PER_SITE:
                dropped = next(iter(defaults.segments))
                del defaults.segments[dropped]
                _forget_published(defaults, dropped)
        if first:
            stats = self._stats(store, site_id)
            for placement in self._default_placements(site_id):
                self._default(site_id, "", {}, stats, clock, defaults, placement, effects)
        if defaults is not None:
            store.set(defaults_key(site_id), defaults)

    def _default_placements(self, site_id: str) -> list[Placement]:
        """Whose default rankings a site has: its engine's, and each experiment variant's
        that ranks otherwise (not a control showing ``nothing``)."""
        experiment = self.sites.experiment_for(site_id)
        if experiment is None:
            return [NO_EXPERIMENT]
        return [NO_EXPERIMENT, *((experiment.name, variant) for variant in experiment.variants
                                 if variant.name != MAIN_VARIANT and variant.baseline != NOTHING)]

    def _default_version(self, site_id: str, placement: Placement) -> int:
        variant = placement[1]
        if variant is not None and variant.control:
            return 0
        return self.policies.current(model_key(site_id, _model_of(variant)))[1]

    def _default(self, site_id: str, segment: str, context: Context, stats: SiteStats,
                 clock: PartitionClock, defaults: SiteDefaults | None, placement: Placement,
                 effects: Effects) -> None:
        """The default ranking of a site's segment (of an experiment variant), noted as
        published in ``defaults``."""
        variant = placement[1]
        if defaults is not None:
            defaults.published[_published_key(segment, variant)] = (
                clock.wall_ms, self._default_version(site_id, placement))
        blank = Session(site_id, DEFAULT_SESSION_ID, context=dict(context))
        # The segment as a digest: a ranking id stays short enough to echo in a display.
        digest = hashlib.blake2b(_published_key(segment, variant).encode(),
                                 digest_size=8).hexdigest()
        ranking_id = f"default:{escape(site_id)}:{digest}:{clock.wall_ms}"
        experiment = self.sites.experiment_for(site_id)
        if experiment is not None:  # which variant a display of it belongs to
            ranking_id += f":{experiment.name}:{MAIN_VARIANT if variant is None else variant.name}"
        now = max(clock.kind_times.values())  # the latest event time read here
        ranking = self._rank(blank, stats, ranking_id, now, placement, segment)
        if ranking is not None:
            effects.rankings.append(ranking)

    def _publish_defaults(self, store: Store, clock: PartitionClock, tick: Tick,
                          effects: Effects) -> None:
        """Rankings for sessions with no history, per site and segment, from its home; sites
        and segments without traffic for ``site_idle_s`` are forgotten (a thousand one-visit
        sites must not be ranked forever). Time is the stream time, which follows the wall
        clock when the partition is quiet."""
        interval_ms = self.settings.ranking.default_ranking_interval_s * 1000
        now = max(max(clock.kind_times.values()), clock.stream_time or 0)
        for site_id, seen_ts in list(clock.sites.items()):
            home = home_partition(site_id, clock.partitions) == clock.partition
            if now - seen_ts > self._site_idle_ms:
                del clock.sites[site_id]
                if home:
                    store.delete(defaults_key(site_id))
                continue
            if not home:
                continue  # noted before the first tick told this partition who it is
            defaults = store.get(defaults_key(site_id))
            if defaults is None:
                continue
            for segment in [k for k, s in defaults.segments.items()
                            if now - s.seen_ts > self._site_idle_ms]:
                del defaults.segments[segment]
                _forget_published(defaults, segment)
            stats = self._stats(store, site_id)
            placements = self._default_placements(site_id)
            ranked = {"" if v is None else v.name for _, v in placements}
            for key in [k for k in defaults.published if _published_variant(k) not in ranked]:
                del defaults.published[key]  # a variant the experiment no longer has
            for placement in placements:
                version = self._default_version(site_id, placement)
                for segment, context in [("", {}), *((k, s.context)
                                                    for k, s in defaults.segments.items())]:
                    published = defaults.published.get(_published_key(segment, placement[1]))
                    if published is None or published[1] != version \
                            or tick.wall_ms - published[0] >= interval_ms:
                        self._default(site_id, segment, context, stats, clock, defaults,
                                      placement, effects)
            store.set(defaults_key(site_id), defaults)

    # -- time -----------------------------------------------------------------------------

    def _watermark(self, clock: PartitionClock) -> int | None:
        """The smallest latest-event-time over the input kinds still moving; None while a
        moving kind has not been read at all yet (it may hold anything)."""
        moving = [kind for kind in INPUT_KINDS
                  if clock.kind_quiet_ticks.get(kind, 0) < self._quiet_ticks]
        if not moving or any(kind not in clock.kind_times for kind in moving):
            return None
        return min(clock.kind_times[kind] for kind in moving)

    def note_unread(self, store: Store, kinds: frozenset[str]) -> None:
        """Input kinds with records on the broker not read yet, said before each batch: their
        event times stand still while a backlog is read, but they are not quiet (also not
        when the partition's previous owner had counted them so)."""
        clock: PartitionClock | None = store.get(CLOCK_KEY)
        if clock is None or not any(clock.kind_quiet_ticks.get(kind) for kind in kinds):
            return
        for kind in kinds:
            clock.kind_quiet_ticks[kind] = 0
        store.set(CLOCK_KEY, clock)

    def _on_tick(self, store: Store, clock: PartitionClock, tick: Tick,
                 effects: Effects) -> None:
        """Count how long each input kind has been quiet, and fall back on the wall clock.

        A kind that has not moved for ``idle_close_s`` worth of ticks leaves the watermark.
        When every kind is quiet, stream time becomes the time it had when the partition
        went quiet plus the wall time elapsed since.
        """
        clock.partition, clock.partitions = tick.partition, tick.partitions
        clock.wall_ms = tick.wall_ms
        if not clock.kind_times:
            return
        self._publish_defaults(store, clock, tick, effects)
        for kind in INPUT_KINDS:
            moved = clock.kind_times.get(kind) != clock.kind_times_at_tick.get(kind)
            clock.kind_quiet_ticks[kind] = 0 if moved else clock.kind_quiet_ticks.get(kind, 0) + 1
        clock.kind_times_at_tick = dict(clock.kind_times)
        if any(quiet < self._quiet_ticks for quiet in clock.kind_quiet_ticks.values()):
            clock.idle_since_wall_ms = None
            self._advance(store, clock, self._watermark(clock), "window", effects)
            return
        if clock.idle_since_wall_ms is None:
            clock.idle_base_time = (clock.stream_time if clock.stream_time is not None
                                    else max(clock.kind_times.values()))
            clock.idle_since_wall_ms = tick.wall_ms
            return
        assert clock.idle_base_time is not None
        idle_for = tick.wall_ms - clock.idle_since_wall_ms
        # Never past the wall clock: event times a little ahead of it (within the skew
        # allowed) would otherwise carry stream time ahead of every event that follows.
        self._advance(store, clock, min(clock.idle_base_time + self._idle_ms + idle_for,
                                        tick.wall_ms), "idle", effects)

    def _advance(self, store: Store, clock: PartitionClock, ts: int | None, closed_by: str,
                 effects: Effects) -> None:
        """Move stream time forward to ``ts`` and settle the sessions due before it."""
        if ts is None or (clock.stream_time is not None and ts <= clock.stream_time):
            return
        clock.stream_time = ts
        due = sorted(b for b in clock.buckets if b < ts // BUCKET_MS)
        for bucket in due:
            self._sweep(store, clock, bucket, closed_by, effects)
        clock.swept_bucket = ts // BUCKET_MS

    def _sweep(self, store: Store, clock: PartitionClock, bucket: int, closed_by: str,
               effects: Effects) -> None:
        assert clock.stream_time is not None
        shards = {key: store.get(key) for key in wake_keys(bucket)}
        keys = {key: None for registered in shards.values() if registered for key in registered}
        for key in keys:
            session: Session | None = store.get(key)
            if session is None or session.wake_bucket != bucket:
                continue  # deleted, or registered for an earlier wake-up since
            session.wake_bucket = None
            effects.absorb(join.advance(session.join, clock.stream_time,
                                        self.rules_for(session.site_id), closed_by))
            if self._expired(session, clock.stream_time):
                store.delete(key)
            else:
                self._register(store, clock, key, session)
                store.set(key, session)
        # Only now: had a session above failed, the bucket would still hold them all.
        for shard_key, registered in shards.items():
            if registered:  # deleting absent keys would still write changelog tombstones
                store.delete(shard_key)
        clock.buckets.discard(bucket)

    def _expired(self, session: Session, stream_time: int) -> bool:
        idle_for = stream_time - session.last_ts
        return idle_for > self._session_timeout_ms and not session.join.pending \
            and not session.join.waiting

    def _register(self, store: Store, clock: PartitionClock, key: str,
                  session: Session) -> None:
        """Make sure the session is visited when its next deadline passes."""
        expiry = session.last_ts + self._session_timeout_ms
        bucket = (expiry // EXPIRY_BUCKET_MS + 1) * EXPIRY_BUCKET_MS // BUCKET_MS
        stream_time = -1 if clock.stream_time is None else clock.stream_time
        due = session.join.next_due(self.rules_for(session.site_id), stream_time)
        if due is not None:
            bucket = min(bucket, due // BUCKET_MS)
        bucket = max(bucket, clock.swept_bucket)
        if session.wake_bucket is not None and clock.swept_bucket <= session.wake_bucket <= bucket:
            return  # registered in a bucket still to come that is early enough
        wake_key = wake_keys(bucket)[zlib.crc32(key.encode()) % WAKE_SHARDS]
        keys = store.get(wake_key) or {}
        keys[key] = None
        store.set(wake_key, keys)
        clock.buckets.add(bucket)
        session.wake_bucket = bucket


def _read_only(key: str, value: object) -> None:
    raise AssertionError(f"shared site statistics are learned by the site's learner ({key})")


def _model_of(variant: Variant | None) -> str | None:
    """The variant whose model ``variant`` ranks with (None: the site's own)."""
    return None if variant is None else variant.model


def _default_placement(ranking_id: str | None) -> tuple[str | None, str | None] | None:
    """The (experiment, variant) a default ranking's id names ((None, None): published
    outside any experiment); None for any other id. Ids are
    ``default:site:digest:ms[:experiment:variant]``, the site escaped, names without ``:``."""
    if ranking_id is None or not ranking_id.startswith("default:"):
        return None
    parts = ranking_id.split(":")
    return (parts[4], parts[5]) if len(parts) == 6 else (None, None)


def _published_key(segment: str, variant: Variant | None) -> str:
    """Where SiteDefaults.published notes a segment's default (a variant's: ``|@variant``;
    a segment's parts all hold ``=``, so the two never meet)."""
    return segment if variant is None else f"{segment}|@{variant.name}"


def _published_variant(key: str) -> str:
    """The variant a :func:`_published_key` names ("": the site's engine)."""
    _, sep, tail = key.rpartition("|@")
    return tail if sep and "=" not in tail else ""


def _forget_published(defaults: SiteDefaults, segment: str) -> None:
    for key in [k for k in defaults.published
                if k == segment or k.startswith(f"{segment}|@")]:
        del defaults.published[key]
