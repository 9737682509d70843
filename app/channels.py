"""Every Kafka topic and table the worker uses, declared in one place.

Input and output topics carry raw bytes: the agents decode and validate inputs themselves so
nothing unusable is dropped silently (it goes to the dead-letter topic with its bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TableT, TopicT

from app.settings import CATALOG, DEAD_LETTER, JOIN_INPUT_TOPICS, RANKINGS, REWARDS, Settings


@dataclass(frozen=True)
class Channels:
    join_inputs: TopicT  # reco.served and the reaction topics, plus the worker's ticks
    ticks: TopicT
    decisions: TopicT  # closed decisions keyed by site, for the learner
    rankings: TopicT
    rewards: TopicT
    dead_letter: TopicT
    engine_state: TableT  # sessions, site statistics, stream time: per partition
    bandit_models: TableT  # one River bandit per site, on every worker
    catalog: TopicT
    catalog_items: TableT  # the catalog, on every worker

    def logical_name(self, settings: Settings, topic: str) -> str:
        return topic[len(settings.topic_prefix):]


def internal_topics(settings: Settings) -> dict[str, int]:
    """The worker's own topics with their retention in ms; the worker creates them."""
    return {f"{settings.app_id}-ticks": 3_600_000, f"{settings.app_id}-decisions": 86_400_000}


def declare(app: faust.App, settings: Settings, partitions: int) -> Channels:
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    ticks_name, decisions_name = internal_topics(settings)
    ticks = app.topic(ticks_name, partitions=partitions, internal=True, **raw)
    join_inputs = app.topic(*(settings.topic(t) for t in JOIN_INPUT_TOPICS), ticks.get_topic_name(),
                            **raw)
    return Channels(
        join_inputs=join_inputs,
        ticks=ticks,
        decisions=app.topic(decisions_name, partitions=partitions, internal=True, **raw),
        rankings=app.topic(settings.topic(RANKINGS), **raw),
        rewards=app.topic(settings.topic(REWARDS), **raw),
        dead_letter=app.topic(settings.topic(DEAD_LETTER), **raw),
        engine_state=app.Table("engine-state", default=None, partitions=partitions,
                               key_type=bytes, value_type=bytes),
        bandit_models=_global_table(app, "bandit-models"),
        catalog=app.topic(settings.topic(CATALOG), **raw),
        catalog_items=_global_table(app, "catalog"),
    )


def _global_table(app: faust.App, name: str) -> TableT:
    """A table every worker holds whole, written by whichever worker owns the input.

    One partition and recovery_buffer_size=1: Faust's advice against global tables stuck in
    recovery when several workers run (faust.tables.globaltable).
    """
    return app.GlobalTable(name, default=None, partitions=1, recovery_buffer_size=1,
                           use_partitioner=True, key_type=bytes, value_type=bytes)
