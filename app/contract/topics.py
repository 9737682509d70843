"""Every topic's name, in one place: the contract's logical names, and :class:`Topics`, the
real names of one deployment (its topic prefix in front of each).

The contract's topics come from ``app/contract/topic_specs/`` (``recoloop topics apply``).
The worker's own topics, named after the app id, are created by the worker itself
(:func:`app.kafka.topic_admin.internal_topics` gives their layout):

- ``<app_id>-decisions``: closed decisions and engagements keyed by site, so one worker
  learns each site's bandit and statistics;
- ``<app_id>-engine-state-changelog``: every change of a partition's engine state, the
  source the local RocksDB copy is rebuilt from (compacted);
- ``<app_id>-bandit-models``: each site's current bandit, read by every worker (compacted);
- ``<app_id>-site-statistics``: each site's item statistics, one record per statistic, read
  by every worker (compacted; :mod:`app.stream.site_stats`);
- ``<app_id>-api-keys``: the rank service's API keys (compacted; :mod:`app.serve.keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SERVED = "reco.served"
CLICKS = "reco.clicks"
DETAIL_VIEWS = "reco.detail-views"
BASKET_ADDS = "reco.basket-adds"
CATALOG = "reco.catalog"
RANKINGS = "reco.rankings"
REWARDS = "reco.rewards"
DEAD_LETTER = "reco.dead-letter"
REACTION_TOPICS = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)
# The topics the join reads; they must be co-partitioned (same partition count).
JOIN_INPUT_TOPICS = (SERVED, *REACTION_TOPICS)
# The reaction type each reaction topic carries; reward tables are keyed by type.
REACTION_TYPE_BY_TOPIC = {CLICKS: "click", DETAIL_VIEWS: "detail_view", BASKET_ADDS: "basket_add"}
REACTION_TOPIC_BY_TYPE = {kind: topic for topic, kind in REACTION_TYPE_BY_TOPIC.items()}
SITE_CONFIG = "reco.site-config"


def real_name(prefix: str, logical_name: str) -> str:
    """A contract topic's name on the broker, under the deployment's topic prefix."""
    return f"{prefix}{logical_name}"


def app_id_of(prefix: str) -> str:
    """The deployment's consumer group and the namespace of the worker's own topics."""
    return f"{prefix}recoloop"


class Prefixed(Protocol):
    @property
    def topic_prefix(self) -> str: ...


class Deployment(Protocol):
    """What names a deployment's topics (:class:`app.settings.Settings` is one)."""

    @property
    def kafka(self) -> Prefixed: ...


@dataclass(frozen=True)
class Topics:
    join_inputs: tuple[str, ...]  # reco.served and the reaction topics
    catalog: str
    site_config: str
    rankings: str
    rewards: str
    dead_letter: str
    decisions: str
    changelog: str
    models: str
    site_stats: str
    api_keys: str  # the rank service's keys (app.serve.keys)
    logical: dict[str, str]  # real topic name -> the contract's name
    input_kinds: dict[str, str]  # a join input's real name -> its kind (served, click, ...)

    @classmethod
    def of(cls, deployment: Deployment) -> Topics:
        prefix = deployment.kafka.topic_prefix
        own = app_id_of(prefix)

        def real(logical_name: str) -> str:
            return real_name(prefix, logical_name)

        return cls(
            join_inputs=tuple(real(t) for t in JOIN_INPUT_TOPICS),
            catalog=real(CATALOG),
            site_config=real(SITE_CONFIG),
            rankings=real(RANKINGS),
            rewards=real(REWARDS),
            dead_letter=real(DEAD_LETTER),
            decisions=f"{own}-decisions",
            changelog=f"{own}-engine-state-changelog",
            models=f"{own}-bandit-models",
            site_stats=f"{own}-site-statistics",
            api_keys=f"{own}-api-keys",
            logical={real(t): t for t in (*JOIN_INPUT_TOPICS, CATALOG)},
            input_kinds={real(t): kind for t, kind in (
                (SERVED, "served"), *REACTION_TYPE_BY_TOPIC.items())},
        )
