"""The engine's pure core as a contender of :mod:`bench.baselines`: no Kafka, simulated time.

The worker's engine (:class:`app.core.engine.Engine`) and bandit (:class:`ContextualBandit`)
play the item world in-process, partitioned as the worker partitions (sessions spread over
``partitions`` stores by the key's hash; ticks every simulated second), learning each closed
decision and each engagement (the site's shared statistics) at once. It is for trying arms
and settings in seconds; the figure that counts is the worker's through Kafka (``bench.suite --only
learning``), which adds only transport delays (the bandit there learns a batch later).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from app.contract.decode import InvalidInput, decode
from app.contract.topics import CATALOG
from app.core.catalog import StoreCatalog, apply_record
from app.core.engine import Engine
from app.core.events import Origin, Tick
from app.core.policy import ContextualBandit, learn_decision
from app.core.sites import SiteSettings
from app.core.stats import learn_into
from app.core.store import MemoryStore
from app.settings import Settings
from app.sim.shoppers import Outgoing

TICK_MS = 1_000


@dataclass
class SitePolicies:
    """Each site's bandit, learned in place (the worker's :class:`BanditModels`, minus Kafka)."""

    settings: Settings

    def __post_init__(self) -> None:
        self.bandits: dict[str, ContextualBandit] = {}

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        bandit = self.bandits.get(site_id)
        if bandit is None:
            sites = SiteSettings(self.settings)
            rule, epsilon, gamma = sites.exploration_for(site_id)
            bandit = self.bandits[site_id] = ContextualBandit(
                sites.arms_for(site_id), epsilon=epsilon, seed=self.settings.bandit.seed,
                rule=rule, squarecb_gamma=gamma)
        return bandit, bandit.n_updates


class InProcessEngine:
    """Feeds the world's records to the engine and answers with the engine's rankings."""

    def __init__(self, settings: Settings, partitions: int = 8) -> None:
        self.settings = settings
        self.partitions = partitions
        self.policies = SitePolicies(settings)
        self.catalog_store = MemoryStore()
        self.site_stats = MemoryStore()  # learned at once, as the site's learner would
        self.engine = Engine(settings, self.policies, StoreCatalog(self.catalog_store),
                             self.site_stats)
        self.stores = [MemoryStore() for _ in range(partitions)]
        self.next_tick_ms: int | None = None
        self.rejected: dict[str, int] = {}
        self.offset = 0
        # Each closed decision's reco.rewards value, for whoever logs them.
        self.on_decision: Callable[[dict[str, Any]], None] = lambda decision: None

    def respond(self, records: list[Outgoing], now_ms: int) -> list[dict[str, Any]]:
        """Everything the engine publishes after ``records`` (and the ticks due by ``now_ms``)."""
        rankings: list[dict[str, Any]] = []
        if self.next_tick_ms is None:
            self.next_tick_ms = now_ms
        while self.next_tick_ms <= now_ms:
            for partition, store in enumerate(self.stores):
                self._apply(self.engine.handle(
                    store, Tick(self.next_tick_ms, partition, self.partitions)), rankings)
            self.next_tick_ms += TICK_MS
        for record in records:
            if record.topic == CATALOG:
                value = record.value
                apply_record(self.catalog_store, value["site_id"], value["item_id"], value)
                continue
            key = record.key.encode()
            partition = zlib.crc32(key) % self.partitions
            self.offset += 1
            origin = Origin(record.topic, partition, self.offset, key, orjson.dumps(record.value))
            try:
                event = decode(record.topic, origin, now_ms + 300_000)
            except InvalidInput as error:
                self.rejected[error.reason] = self.rejected.get(error.reason, 0) + 1
                continue
            self._apply(self.engine.handle(self.stores[partition], replace(event)), rankings)
        return rankings

    def _apply(self, effects: Any, rankings: list[dict[str, Any]]) -> None:
        for decision in effects.rewards:
            learn_decision(self.policies.current(decision.site_id)[0],
                           decision.learning_value())
            self.on_decision(decision.to_value())
        for engagement in effects.engagements:
            learn_into(self.site_stats.get, self.site_stats.set, engagement)
        rankings.extend(ranking.to_value() for ranking in effects.rankings)
