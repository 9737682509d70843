"""Default rankings: what a session with no history of its own is shown.

Each site has one *home* partition (:func:`home_partition`) that publishes its defaults: one
site-wide, and one per context segment its sessions were seen in (the latest
:data:`SEGMENTS_KEPT_PER_SITE`), each again for every experiment variant that ranks otherwise
than the site's engine. A default is republished when the model's version changes or
``default_ranking_interval_s`` has passed; sites and segments without traffic for
``site_idle_s`` are forgotten. A default ranking's session id is :data:`DEFAULT_SESSION_ID`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.core.events import Context, Ranking, Tick
from app.core.experiment import MAIN_VARIANT, NOTHING, Variant, model_key
from app.core.issuing import (
    NO_EXPERIMENT,
    Placement,
    Policies,
    RankingIssuer,
    RankingPart,
    model_of,
)
from app.core.keys import escape, state_key
from app.core.session import Session
from app.core.sites import SiteSettings
from app.core.stats import SiteStats
from app.core.store import Store
from app.core.stream_time import PartitionClock

SEGMENTS_KEPT_PER_SITE = 20
DEFAULT_SESSION_ID = "*"


class DefaultsSettings(Protocol):
    @property
    def ranking(self) -> RankingPart: ...


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


def default_placement(ranking_id: str | None) -> tuple[str | None, str | None] | None:
    """The (experiment, variant) a default ranking's id names ((None, None): published
    outside any experiment); None for any other id. Ids are
    ``default:site:digest:ms[:experiment:variant]``, the site escaped, names without ``:``."""
    if ranking_id is None or not ranking_id.startswith("default:"):
        return None
    parts = ranking_id.split(":")
    return (parts[4], parts[5]) if len(parts) == 6 else (None, None)


class DefaultRankings:
    """Publishes the default rankings of the sites whose home is the partition at hand.

    ``stats``: a site's statistics as read from a partition's store; ``site_idle_ms``: how
    long a site or segment is kept without traffic.
    """

    def __init__(self, settings: DefaultsSettings, policies: Policies, sites: SiteSettings,
                 issuer: RankingIssuer, stats: Callable[[Store, str], SiteStats],
                 site_idle_ms: int) -> None:
        self.settings = settings
        self.policies = policies
        self.sites = sites
        self.issuer = issuer
        self.stats = stats
        self._site_idle_ms = site_idle_ms

    def note_site(self, store: Store, clock: PartitionClock, session: Session,
                  rankings: list[Ranking]) -> None:
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
            stats = self.stats(store, site_id)
            for placement in self._placements(site_id):
                self._default(site_id, "", {}, stats, clock, defaults, placement, rankings)
        if defaults is not None:
            store.set(defaults_key(site_id), defaults)

    def publish(self, store: Store, clock: PartitionClock, tick: Tick,
                rankings: list[Ranking]) -> None:
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
            self._publish_site(store, clock, tick, site_id, defaults, now, interval_ms,
                               rankings)
            store.set(defaults_key(site_id), defaults)

    def _publish_site(self, store: Store, clock: PartitionClock, tick: Tick, site_id: str,
                      defaults: SiteDefaults, now: int, interval_ms: float,
                      rankings: list[Ranking]) -> None:
        """A home site's defaults that are due: its idle segments and the variants its
        experiment no longer has forgotten first."""
        for segment in [k for k, s in defaults.segments.items()
                        if now - s.seen_ts > self._site_idle_ms]:
            del defaults.segments[segment]
            _forget_published(defaults, segment)
        stats = self.stats(store, site_id)
        placements = self._placements(site_id)
        ranked = {"" if v is None else v.name for _, v in placements}
        for key in [k for k in defaults.published if _published_variant(k) not in ranked]:
            del defaults.published[key]  # a variant the experiment no longer has
        for placement in placements:
            version = self._version(site_id, placement)
            for segment, context in [("", {}), *((k, s.context)
                                                for k, s in defaults.segments.items())]:
                published = defaults.published.get(_published_key(segment, placement[1]))
                if published is None or published[1] != version \
                        or tick.wall_ms - published[0] >= interval_ms:
                    self._default(site_id, segment, context, stats, clock, defaults,
                                  placement, rankings)

    def _placements(self, site_id: str) -> list[Placement]:
        """Whose default rankings a site has: its engine's, and each experiment variant's
        that ranks otherwise (not a control showing ``nothing``)."""
        experiment = self.sites.experiment_for(site_id)
        if experiment is None:
            return [NO_EXPERIMENT]
        return [NO_EXPERIMENT, *((experiment.name, variant) for variant in experiment.variants
                                 if variant.name != MAIN_VARIANT and variant.baseline != NOTHING)]

    def _version(self, site_id: str, placement: Placement) -> int:
        variant = placement[1]
        if variant is not None and variant.control:
            return 0
        return self.policies.current(model_key(site_id, model_of(variant)))[1]

    def _default(self, site_id: str, segment: str, context: Context, stats: SiteStats,
                 clock: PartitionClock, defaults: SiteDefaults | None, placement: Placement,
                 rankings: list[Ranking]) -> None:
        """The default ranking of a site's segment (of an experiment variant), noted as
        published in ``defaults``."""
        variant = placement[1]
        if defaults is not None:
            defaults.published[_published_key(segment, variant)] = (
                clock.wall_ms, self._version(site_id, placement))
        blank = Session(site_id, DEFAULT_SESSION_ID, context=dict(context))
        # The segment as a digest: a ranking id stays short enough to echo in a display.
        digest = hashlib.blake2b(_published_key(segment, variant).encode(),
                                 digest_size=8).hexdigest()
        ranking_id = f"default:{escape(site_id)}:{digest}:{clock.wall_ms}"
        experiment = self.sites.experiment_for(site_id)
        if experiment is not None:  # which variant a display of it belongs to
            ranking_id += f":{experiment.name}:{MAIN_VARIANT if variant is None else variant.name}"
        now = max(clock.kind_times.values())  # the latest event time read here
        ranking = self.issuer.rank(blank, stats, ranking_id, now, placement, segment)
        if ranking is not None:
            rankings.append(ranking)


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
