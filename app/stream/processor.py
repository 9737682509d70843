"""The recoloop processor: what the worker does with each record, in the runtime's
:class:`app.stream.runtime.protocol.Processor` protocol. It decodes each input, runs it through
the engine or the learner, and stages what to send; the runtime sends it in the same Kafka
transaction as the state changes and input offsets. Metrics are staged too and counted only
once that transaction commits, so a batch redone after an abort is not counted twice.

- the join inputs go through :class:`app.core.engine.Engine`, which stages rankings, rewards,
  dead letters and closed decisions (keyed by site) for the learner;
- ticks: the worker's clock, so idle partitions still close their decisions;
- the decisions topic: each closed decision teaches its site's bandit (the engine's own and
  an experiment's variants), scores the site's candidate policies on it, and each engagement
  goes into the site's shared statistics;
- the catalog: its records are validated here (every worker applies the valid ones to its
  own copy, :mod:`app.stream.replicas`).

The bandits and site statistics it changes go out as records of the models and
site-statistics topics (:meth:`RecoProcessor.changes`), and are kept once they committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from app.contract.decode import (
    InvalidInput,
    dead_letter_key,
    dead_letter_value,
    decode,
    decode_catalog,
)
from app.contract.topics import CATALOG, REACTION_TOPIC_BY_TYPE, Topics
from app.core.default_rankings import segment_key
from app.core.engine import Effects, Engine
from app.core.events import Origin, Reaction, Served, Tick
from app.core.experiment import MAIN_VARIANT, model_key
from app.core.policy import learn_decision
from app.core.shadow import ShadowScores, candidate
from app.core.stats import Engagement
from app.core.store import Store
from app.observability.metrics import Metrics
from app.observability.tracing import Span, Tracing
from app.settings import Settings
from app.stream.bandits import BanditModels
from app.stream.runtime.protocol import Poison, Record, Staged
from app.stream.site_stats import SiteStatistics

log = logging.getLogger(__name__)


def origin_of(record: Record) -> Origin:
    return Origin(record.topic, record.partition, record.offset, record.key, record.value,
                  trace=record.trace)


@dataclass
class SharedChanges:
    """The bandits and site statistics a batch changed, until it commits."""

    models: list[tuple[str, bytes]]
    site_stats: list[tuple[str, bytes]]


class RecoProcessor:
    """Dispatches each record by its topic; the engine and the learner do the work."""

    def __init__(self, settings: Settings, topics: Topics, engine: Engine,
                 models: BanditModels, site_stats: SiteStatistics, metrics: Metrics,
                 partitions: int, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = Tracing() if tracing is None else tracing
        self.topics = topics
        self.engine = engine
        self.models = models
        self.site_stats = site_stats
        self.metrics = metrics
        self.partitions = partitions
        self._skew_ms = int(settings.join.max_clock_skew_s * 1000)
        # Live scores of each site's candidate policies, since this worker took its learning.
        self._shadow_scores: dict[str, ShadowScores] = {}
        self._shared = SharedChanges([], [])

    # -- the runtime's protocol -----------------------------------------------------------

    def process(self, record: Record, state: Store | None, out: Staged) -> None:
        origin = origin_of(record)
        if record.topic == self.topics.decisions:
            self.decision(origin, out)
        elif record.topic == self.topics.catalog:
            self.catalog_record(origin, out)
        elif state is None:
            raise KeyError(f"partition {record.partition} is not assigned")
        else:
            self.join_input(origin, record.timestamp_ms, state, out)

    def failed(self, record: Record, poison: Poison, out: Staged) -> None:
        """An input the engine failed on (``processing_error``: a bug) or whose effects would
        not fit a record (``too_large``): kept, with why, so it blocks nothing."""
        origin = origin_of(record)
        topic = self.topics.logical.get(origin.topic, origin.topic)
        self.reject(origin, topic, InvalidInput(poison.reason, poison.detail), out)

    def unread(self, state: Store, topics: frozenset[str]) -> None:
        self.engine.note_unread(state, frozenset(self.topics.input_kinds[t] for t in topics))

    def tick_due(self) -> None:
        self.models.retire_idle()
        self.metrics.bandit_models_in_memory.set(self.models.in_memory())

    def changes(self) -> list[tuple[str, bytes, bytes]]:
        self._shared = SharedChanges(self.models.changes(), self.site_stats.changes())
        return [*((self.topics.models, site_id.encode(), raw)
                  for site_id, raw in self._shared.models),
                *((self.topics.site_stats, name.encode(), raw)
                  for name, raw in self._shared.site_stats)]

    def committed(self) -> None:
        self.models.committed(self._shared.models)
        self.site_stats.committed(self._shared.site_stats)
        self._shared = SharedChanges([], [])

    def aborted(self) -> None:
        self.models.aborted()
        self.site_stats.aborted()
        self._shared = SharedChanges([], [])

    def revoked(self) -> None:
        self.metrics.forget_assignment()

    def close(self) -> None:
        self.models.spill.close()

    # -- the join inputs ------------------------------------------------------------------

    def join_input(self, origin: Origin, timestamp_ms: int, state: Store, out: Staged) -> None:
        topic = self.topics.logical[origin.topic]
        span = None if origin.trace is None else self.tracing.start(
            f"recoloop.{topic}", origin.trace, links=(out.span,), attributes={
                "messaging.destination.name": origin.topic,
                "messaging.destination.partition.id": str(origin.partition),
                "messaging.kafka.offset": origin.offset})
        try:
            # Event times may run ahead of the message's own timestamp only so far.
            event: Served | Reaction = decode(topic, origin, timestamp_ms + self._skew_ms,
                                              self.tracing.traceparent(span))
        except InvalidInput as error:
            self.reject(origin, topic, error, out)
            self.tracing.end(span, f"dead-lettered: {error.reason}")
            return
        effects = self.engine.handle(state, event)
        self._publish(origin.partition, effects, timestamp_ms / 1000, out, span)
        if span is not None:
            span.set_attributes({"recoloop.site_id": event.site_id,
                                 "recoloop.event_id": event.event_id,
                                 "recoloop.duplicate": effects.duplicate})
            self.tracing.end(span)
        m, site = self.metrics, self.metrics.site(event.site_id)
        outcome = "duplicate" if effects.duplicate else "accepted"
        out.count(lambda: m.events_consumed.labels(topic, site, outcome).inc())
        if isinstance(event, Served) and not effects.duplicate:
            arm = event.arm or "unknown"
            out.count(lambda: m.displays_served.labels(site, arm).inc())

    def tick(self, partition: int, wall_ms: int, state: Store, out: Staged) -> None:
        effects = self.engine.handle(state, Tick(wall_ms, partition, self.partitions))
        self._publish(partition, effects, None, out)

    def _publish(self, partition: int, effects: Effects, produced_at_s: float | None,
                 out: Staged, span: Span | None = None) -> None:
        """Stage the effects of one input (``span``: its span) or of a tick."""
        m, site, topics, tracing = self.metrics, self.metrics.site, self.topics, self.tracing
        pending = effects.pending_displays
        out.count(lambda: m.join_pending_displays.labels(str(partition)).set(pending))
        for served, reaction in effects.traced:  # in the display's trace, linked to its own
            tracing.end(tracing.start("recoloop.attribute", served.trace, links=(
                reaction.trace, out.span), attributes={
                    "recoloop.served_id": served.event_id, "recoloop.reaction": reaction.type,
                    "recoloop.item_id": reaction.item_id,
                    "recoloop.delay_ms": reaction.ts - served.ts}))
        for decision in effects.rewards:
            value = orjson.dumps(decision.to_value())
            reward_span = None if decision.trace is None else tracing.start(
                "recoloop.reward", decision.trace, links=(out.span,), attributes={
                    "recoloop.served_id": decision.served_id, "recoloop.reward": decision.reward,
                    "recoloop.closed_by": decision.closed_by})
            headers = tracing.headers(reward_span)
            tracing.end(reward_span)
            out.send(topics.rewards, decision.session_id.encode(), value, headers)
            out.send(topics.decisions, decision.site_id.encode(),
                     orjson.dumps(decision.learning_value()) if decision.signals else value,
                     headers)
            labels = (site(decision.site_id), decision.arm or "unknown")
            out.count(m.decisions_closed.labels(*labels, decision.closed_by).inc)
            out.count(partial(m.reward.labels(*labels).inc, decision.reward))
            out.count(partial(m.count_kpis, decision.site_id, decision.variant,
                              decision.reward, {o.type for o in decision.outcomes},
                              sum(o.price or 0.0 for o in decision.outcomes
                                  if o.type == "basket_add")))
            for outcome in decision.outcomes:
                out.count(partial(m.reward_delay.observe, outcome.delay_ms / 1000))
        for ranking in effects.rankings:
            with tracing.child("recoloop.ranking", span) as ranking_span:
                if ranking_span is not None:
                    ranking_span.set_attributes({"recoloop.ranking_id": ranking.ranking_id,
                                                 "recoloop.arm": ranking.arm})
                out.send(topics.rankings, ranking.key.encode(), orjson.dumps(ranking.to_value()),
                         tracing.headers(ranking_span))
            out.count(m.rankings_published.labels(site(ranking.site_id), ranking.arm).inc)
            if produced_at_s is not None:
                age_s = max(0.0, time.time() - produced_at_s)
                out.count(partial(m.event_to_ranking.observe, age_s))
        for engagement in effects.engagements:
            out.send(topics.decisions, engagement.site_id.encode(),
                     orjson.dumps(engagement.to_value()))
        for reaction in effects.unattributed:
            out.count(m.reactions_unattributed.labels(site(reaction.site_id)).inc)
        for reaction in effects.late:  # the side output of reactions after their display closed
            out.count(m.reactions_late.labels(site(reaction.site_id)).inc)
            if reaction.origin is not None:  # counted as consumed (accepted) when it was read
                self.reject(reaction.origin, REACTION_TOPIC_BY_TYPE[reaction.type], InvalidInput(
                    "late", "the display it answers had already closed"), out, reaction.site_id,
                    consumed=False)

    # -- the learner ----------------------------------------------------------------------

    def decision(self, origin: Origin, out: Staged) -> None:
        span = None if origin.trace is None else self.tracing.start(
            "recoloop.learn", origin.trace, links=(out.span,))
        try:
            self._decision(origin, out, span)
        finally:
            self.tracing.end(span)

    def _decision(self, origin: Origin, out: Staged, span: Span | None) -> None:
        if span is not None:
            span.set_attribute("recoloop.learned", False)  # until it is
        decision = orjson.loads(origin.value or b"{}")
        if decision.get("kind") == "engagement":
            self._engagement(decision)
            return
        site_id = decision["site_id"]
        learner = self._learner(site_id, decision.get("variant"))
        if learner is None:
            return  # a control's decision: joined and logged, never learned
        key, apprentice = learner
        if decision["arm"] not in self.models.current(key)[0].arms and not apprentice:
            return  # displays without a known arm are joined and logged, not learned
        if key == model_key(site_id, None) and not apprentice:
            self._shadow(site_id, decision, out)
        policy = self.models.learning(key)
        learn_decision(policy, decision, apprentice)
        if span is not None:
            span.set_attributes({"recoloop.site_id": site_id, "recoloop.model": key,
                                 "recoloop.arm": decision["arm"],
                                 "recoloop.reward": float(decision["reward"]),
                                 "recoloop.model_updates": policy.n_updates,
                                 "recoloop.apprentice": apprentice, "recoloop.learned": True})
        if key != model_key(site_id, None):
            return  # the gauges below describe the site's own engine
        m, label = self.metrics, self.metrics.site(site_id)
        estimates = policy.estimates({})
        shares = {segment: policy.probabilities(context) for segment, context in (
            ("", {}), (segment_key(decision["context"]), decision["context"]))}

        def learned() -> None:
            m.bandit_updates.labels(label).inc()
            for arm, estimate in estimates.items():
                m.bandit_estimate.labels(label, arm).set(estimate)
            for segment, probabilities in shares.items():
                segment_label = m.segment(label, segment)
                for arm, share in probabilities.items():
                    m.bandit_choice_share.labels(label, segment_label, arm).set(share)
        out.count(learned)

    def _learner(self, site_id: str, variant_name: str | None) -> tuple[str, bool] | None:
        """Which model a decision of ``variant_name`` teaches, and whether as an apprentice
        (a control the engine ran beside); None when it teaches none (a control's, or a
        variant's the site's experiment no longer has)."""
        if variant_name is None or variant_name == MAIN_VARIANT:
            return model_key(site_id, None), False
        variant = self.engine.sites.variant_named(site_id, variant_name)
        if variant is None or variant.model is None:
            return None
        return model_key(site_id, variant.model), variant.apprentice

    def _shadow(self, site_id: str, decision: dict[str, Any], out: Staged) -> None:
        """Score the site's candidate policies on one of its engine's decisions (before the
        engine learns it: each candidate is judged as it would have decided)."""
        specs = self.engine.sites.shadow_for(site_id)
        if not specs or not decision.get("propensity"):
            return
        policy = self.models.current(model_key(site_id, None))[0]
        scores = self._shadow_scores.setdefault(site_id, ShadowScores())
        scores.forget(specs)
        m, label = self.metrics, self.metrics.site(site_id)
        context = decision.get("context") or {}
        for spec in specs:
            try:
                chooser = candidate(spec, policy.arms, policy)
            except ValueError:
                continue  # an arm the site no longer has
            scores.add(spec, chooser(context), decision["arm"], float(decision["propensity"]),
                       float(decision["reward"]))
            value, effective = scores.value(spec), scores.effective_decisions(spec)
            if value is not None:
                out.count(partial(m.shadow_value.labels(label, spec).set, value))
                out.count(partial(m.shadow_effective_decisions.labels(label, spec).set,
                                  effective))

    def _engagement(self, value: dict[str, Any]) -> None:
        try:
            engagement = Engagement.from_value(value)
        except (KeyError, TypeError, ValueError) as exc:  # not the engine's: someone else wrote it
            log.warning("decisions topic: skipped an engagement that does not decode: %s", exc)
            self.metrics.records_undecodable.labels("decisions").inc()
            return
        self.site_stats.learn(engagement)

    # -- the catalog ----------------------------------------------------------------------

    def catalog_record(self, origin: Origin, out: Staged) -> None:
        try:
            site_id, _, _ = decode_catalog(origin.key, origin.value)
        except InvalidInput as error:
            self.reject(origin, CATALOG, error, out)
            return
        m, site = self.metrics, self.metrics.site(site_id)
        out.count(lambda: m.events_consumed.labels(CATALOG, site, "accepted").inc())

    # -- what the engine could not use ----------------------------------------------------

    def reject(self, origin: Origin, topic: str, error: InvalidInput, out: Staged,
               site_id: str | None = None, consumed: bool = True) -> None:
        """Keep an input the engine did not use, with why, on the dead-letter topic (and,
        unless it was counted when read, count it as consumed: invalid)."""
        out.send(self.topics.dead_letter, dead_letter_key(origin),
                 dead_letter_value(origin, error))
        m, site = self.metrics, self.metrics.site(site_id)
        out.count(m.dead_letters.labels(error.reason).inc)
        if consumed:
            out.count(m.events_consumed.labels(topic, site, "invalid").inc)
