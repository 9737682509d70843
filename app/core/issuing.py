"""Issuing a ranking: the bandit picks an arm and the arm its items, or a control shows its
fixed list; the session remembers what it was issued, so a display of it is learned with the
arm and propensity the engine chose.

Draws are fixed by the seed and the ranking's id (:func:`stable_uniform`): a replay issues
the same rankings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from app.core.arms import ARMS
from app.core.candidates import ItemSignals, arm_items
from app.core.catalog import CatalogView
from app.core.events import Apprentice, Ranking, Served
from app.core.experiment import NOTHING, Variant, model_key
from app.core.join import JoinRules
from app.core.policy import ContextualBandit
from app.core.session import IssuedRanking, Session
from app.core.sites import SiteSettings
from app.core.stats import SiteStats


class RankingPart(Protocol):
    """What the core reads of the settings' ranking section."""

    @property
    def ranking_size(self) -> int: ...
    @property
    def default_ranking_interval_s(self) -> float: ...
    @property
    def site_idle_s(self) -> float: ...


class BanditPart(Protocol):
    @property
    def seed(self) -> int: ...


class IssuerSettings(Protocol):
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


def stable_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``key``: replays draw the same arm."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def model_of(variant: Variant | None) -> str | None:
    """The variant whose model ``variant`` ranks with (None: the site's own)."""
    return None if variant is None else variant.model


class RankingIssuer:
    """Issues sessions their rankings under their site's settings, rules and experiment."""

    def __init__(self, settings: IssuerSettings, policies: Policies, catalog: CatalogView,
                 sites: SiteSettings, rules_for: Callable[[str], JoinRules]) -> None:
        self.settings = settings
        self.policies = policies
        self.catalog = catalog
        self.sites = sites
        self.rules_for = rules_for

    def rank(self, session: Session, stats: SiteStats, ranking_id: str, ts: int,
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

    def apprentice(self, session: Session, stats: SiteStats, served: Served,
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

    def _remember(self, session: Session, ranking_id: str, issued: IssuedRanking) -> None:
        rules = self.rules_for(session.site_id)
        session.remember_ranking(ranking_id, issued, keep_ms=rules.window_ms + rules.grace_ms)
