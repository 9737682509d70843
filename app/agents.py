"""The Faust agents: decode, call the engine, write tables, send. No logic of their own.

- ``engine``: the join inputs (co-partitioned by session) plus the worker's ticks, through
  :class:`app.engine.Engine`; sends rankings, rewards, dead letters, and closed decisions
  (keyed by site) for the learner.
- ``learner``: one site's decisions at a time into that site's River bandit, kept in a
  global table so every worker ranks with the current model.
- a timer that ticks every partition so idle partitions still close their decisions.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

import faust
import orjson
from faust.types import TableT

from app.catalog import StoreCatalog, apply_record
from app.channels import Channels
from app.contract import InvalidInput, dead_letter_value, decode, decode_catalog
from app.engine import HOT_KEY_PREFIXES, WRITE_BEHIND_PREFIXES, Effects, Engine
from app.events import REACTION_TYPE_BY_TOPIC, Origin, Reaction, Served, Tick
from app.metrics import Metrics
from app.policy import ContextualEpsilonGreedy
from app.settings import CATALOG, Settings
from app.store import CachedStore

REACTION_TOPIC_BY_TYPE = {kind: topic for topic, kind in REACTION_TYPE_BY_TOPIC.items()}

log = logging.getLogger(__name__)


class TableStore:
    """The engine's ``Store`` over a Faust table; values are pickled Python objects."""

    def __init__(self, table: TableT) -> None:
        self.table = table

    def get(self, key: str) -> Any:
        raw = self.table.get(key.encode())
        return None if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.table[key.encode()] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def delete(self, key: str) -> None:
        try:
            del self.table[key.encode()]
        except KeyError:
            pass


class BanditModels:
    """Site bandits in the global table as ``b"<version>\\n" + pickle``, unpickled once per
    version; the version is the bandit's update count (``model_version`` in rankings), and
    the newest version this worker has seen always wins."""

    def __init__(self, table: TableT, settings: Settings) -> None:
        self.table = table
        self.settings = settings
        self._cache: dict[str, tuple[int, ContextualEpsilonGreedy]] = {}

    def current(self, site_id: str) -> tuple[ContextualEpsilonGreedy, int]:
        raw = self.table.get(site_id.encode())
        if raw is None:
            cached = self._cache.get(site_id)
            if cached is None:
                cached = (0, ContextualEpsilonGreedy(
                    self.settings.arms_for(site_id), self.settings.exploration,
                    seed=self.settings.seed))
                self._cache[site_id] = cached
            return cached[1], cached[0]
        header, _, body = raw.partition(b"\n")
        version = int(header)
        cached = self._cache.get(site_id)
        # Versions only grow. The global table also replays its own changelog, so right
        # after a save it can briefly hold an older model than the one this worker has.
        if cached is None or cached[0] < version:
            policy: ContextualEpsilonGreedy = pickle.loads(body)
            arms = self.settings.arms_for(site_id)
            if policy.arms != arms:  # the site's arms were reconfigured
                policy = policy.with_arms(arms)
            cached = (version, policy)
            self._cache[site_id] = cached
        return cached[1], cached[0]

    def save(self, site_id: str, policy: ContextualEpsilonGreedy) -> None:
        version = policy.n_updates
        self.table[site_id.encode()] = b"%d\n" % version + pickle.dumps(policy)
        self._cache[site_id] = (version, policy)


def register(app: faust.App, settings: Settings, channels: Channels, metrics: Metrics) -> None:
    models = BanditModels(channels.bandit_models, settings)
    catalog_store = TableStore(channels.catalog_items)
    engine = Engine(settings, models, StoreCatalog(catalog_store))
    state = TableStore(channels.engine_state)
    stores: dict[int, CachedStore] = {}  # one per partition: each has its own clock

    def store_for(partition: int) -> CachedStore:
        if partition not in stores:
            stores[partition] = CachedStore(state, HOT_KEY_PREFIXES, WRITE_BEHIND_PREFIXES)
        return stores[partition]

    def forget_partitions(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        stores.clear()  # another worker may change them now: read them afresh if they return

    app.on_partitions_revoked.connect(forget_partitions)
    ticks_topic = channels.ticks.get_topic_name()
    partitions = app.conf.topic_partitions
    site = metrics.site

    async def publish(effects: Effects, produced_at_s: float | None) -> None:
        current = faust.current_event()  # the event's partition is the state's partition
        if current is not None:
            metrics.join_pending_displays.labels(str(current.message.partition)).set(
                effects.pending_displays)
        for decision in effects.rewards:
            value = orjson.dumps(decision.to_value())
            await channels.rewards.send(key=decision.session_id.encode(), value=value)
            await channels.decisions.send(key=decision.site_id.encode(), value=value)
            labels = (site(decision.site_id), decision.arm or "unknown")
            metrics.decisions_closed.labels(*labels, decision.closed_by).inc()
            metrics.reward.labels(*labels).inc(decision.reward)
            for outcome in decision.outcomes:
                metrics.reward_delay.observe(outcome.delay_ms / 1000)
        for ranking in effects.rankings:
            await channels.rankings.send(key=ranking.key.encode(),
                                         value=orjson.dumps(ranking.to_value()))
            metrics.rankings_published.labels(site(ranking.site_id), ranking.arm).inc()
            if produced_at_s is not None:
                metrics.event_to_ranking.observe(max(0.0, time.time() - produced_at_s))
        for reaction in effects.unattributed:
            metrics.reactions_unattributed.labels(site(reaction.site_id)).inc()
        for reaction in effects.late:  # the side output of reactions after their display closed
            if reaction.origin is not None:
                await reject(reaction.origin, REACTION_TOPIC_BY_TYPE[reaction.type], InvalidInput(
                    "late", "the display it answers had already closed"), reaction.site_id)

    async def reject(origin: Origin, topic: str, error: InvalidInput,
                     site_id: str | None = None) -> None:
        """Keep an input the engine did not use, with why, on the dead-letter topic."""
        await channels.dead_letter.send(key=origin.key, value=dead_letter_value(origin, error))
        metrics.dead_letters.labels(error.reason).inc()
        outcome = "late" if error.reason == "late" else "invalid"
        metrics.events_consumed.labels(topic, site(site_id), outcome).inc()

    async def failed(origin: Origin, topic: str, exc: Exception) -> None:
        """A bug must not stop the agent or block the partition: keep the input, say why, and
        forget the partition's cached objects, which may be half-changed."""
        log.exception("processing failed on %s[%s]@%s", origin.topic, origin.partition,
                      origin.offset)
        stores.pop(origin.partition, None)
        await reject(origin, topic, InvalidInput("processing_error", repr(exc)))

    def origin_of(message: Any) -> Origin:
        return Origin(message.topic, message.partition, message.offset, message.key,
                      message.value)

    @app.agent(channels.join_inputs, name="engine")
    async def run_engine(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            origin = origin_of(message)
            topic = channels.logical_name(settings, message.topic)
            try:
                if message.topic == ticks_topic:
                    tick = Tick(orjson.loads(message.value)["wall_ms"], message.partition,
                                partitions)
                    store = store_for(message.partition)
                    effects = engine.handle(store, tick)
                    store.flush()
                    await publish(effects, None)
                    continue
                # Event times may run ahead of the message's own timestamp only so far.
                latest_ts = int(message.timestamp * 1000 + settings.max_clock_skew_s * 1000)
                try:
                    decoded: Served | Reaction = decode(topic, origin, latest_ts)
                except InvalidInput as error:
                    await reject(origin, topic, error)
                    continue
                effects = engine.handle(store_for(message.partition), decoded)
                await publish(effects, message.timestamp)
            except Exception as exc:
                await failed(origin, topic, exc)
                continue
            outcome = "duplicate" if effects.duplicate else "accepted"
            metrics.events_consumed.labels(topic, site(decoded.site_id), outcome).inc()
            if isinstance(decoded, Served) and not effects.duplicate:
                metrics.displays_served.labels(site(decoded.site_id),
                                               decoded.arm or "unknown").inc()

    @app.agent(channels.decisions, name="learner")
    async def run_learner(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                decision = orjson.loads(event.message.value)
                policy, _ = models.current(decision["site_id"])
                if decision["arm"] not in policy.arms:
                    continue  # displays without a known arm are joined and logged, not learned
                policy.update(decision["arm"], decision["context"], decision["reward"])
                models.save(decision["site_id"], policy)
            except Exception as exc:
                await failed(origin_of(event.message), "decisions", exc)
                continue
            metrics.bandit_updates.labels(site(decision["site_id"])).inc()
            site_label = site(decision["site_id"])
            for arm, estimate in policy.estimates({}).items():
                metrics.bandit_estimate.labels(site_label, arm).set(estimate)
            for arm, share in policy.probabilities({}).items():
                metrics.bandit_choice_share.labels(site_label, arm).set(share)

    @app.agent(channels.catalog, name="catalog")
    async def run_catalog(stream: faust.StreamT) -> None:
        async for event in stream.events():
            origin = origin_of(event.message)
            try:
                site_id, item_id, value = decode_catalog(origin.key, origin.value)
                apply_record(catalog_store, site_id, item_id, value)
            except InvalidInput as error:
                await reject(origin, CATALOG, error)
                continue
            except Exception as exc:
                await failed(origin, CATALOG, exc)
                continue
            metrics.events_consumed.labels(CATALOG, site(site_id), "accepted").inc()

    @app.timer(interval=settings.tick_interval_s)
    async def tick() -> None:
        value = orjson.dumps({"wall_ms": int(time.time() * 1000)})
        for tp in app.assignor.assigned_actives():  # each worker ticks its own partitions
            if tp.topic == ticks_topic:
                await channels.ticks.send(value=value, partition=tp.partition)
