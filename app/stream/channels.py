"""Every Kafka topic the worker uses, declared in one place.

The contract's topics come from ``app/contract/topic_specs/`` (and ``recoloop topics apply``);
the worker's own topics, named after the app id, are created by the worker itself:

- ``<app_id>-decisions``: closed decisions and engagements keyed by site, so one worker
  learns each site's bandit and statistics;
- ``<app_id>-engine-state-changelog``: every change of a partition's engine state, the
  source the local RocksDB copy is rebuilt from (compacted);
- ``<app_id>-bandit-models``: each site's current bandit, read by every worker (compacted);
- ``<app_id>-site-statistics``: each site's item statistics, one record per statistic, read
  by every worker (compacted; :mod:`app.stream.site_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.contract.topics import (
    CATALOG,
    DEAD_LETTER,
    JOIN_INPUT_TOPICS,
    RANKINGS,
    REACTION_TYPE_BY_TOPIC,
    REWARDS,
    SERVED,
    SITE_CONFIG,
)
from app.settings import Settings

DAY_MS = 86_400_000
# Compaction keeps a deleted key's tombstone this long; local state older than
# LOCAL_STATE_MAX_AGE_MS may have missed one, so it is rebuilt rather than caught up.
CHANGELOG_TOMBSTONE_RETENTION_MS = 7 * DAY_MS
LOCAL_STATE_MAX_AGE_MS = 6 * DAY_MS


@dataclass(frozen=True)
class InternalTopic:
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Channels:
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
    def of(cls, settings: Settings) -> Channels:
        app_id = settings.app_id
        return cls(
            join_inputs=tuple(settings.topic(t) for t in JOIN_INPUT_TOPICS),
            catalog=settings.topic(CATALOG),
            site_config=settings.topic(SITE_CONFIG),
            rankings=settings.topic(RANKINGS),
            rewards=settings.topic(REWARDS),
            dead_letter=settings.topic(DEAD_LETTER),
            decisions=f"{app_id}-decisions",
            changelog=f"{app_id}-engine-state-changelog",
            models=f"{app_id}-bandit-models",
            site_stats=f"{app_id}-site-statistics",
            api_keys=f"{app_id}-api-keys",
            logical={settings.topic(t): t for t in (*JOIN_INPUT_TOPICS, CATALOG)},
            input_kinds={settings.topic(t): kind for t, kind in (
                (SERVED, "served"), *REACTION_TYPE_BY_TOPIC.items())},
        )

    def internal_topics(self, partitions: int) -> dict[str, InternalTopic]:
        """The worker's own topics; ``partitions`` is the join inputs' partition count."""
        compacted = {"cleanup.policy": "compact"}
        return {
            self.decisions: InternalTopic(partitions, {"retention.ms": str(DAY_MS)}),
            self.changelog: InternalTopic(partitions, {
                **compacted, "delete.retention.ms": str(CHANGELOG_TOMBSTONE_RETENTION_MS)}),
            self.models: InternalTopic(1, compacted),
            self.site_stats: InternalTopic(1, compacted),
            self.api_keys: InternalTopic(1, compacted),
        }
