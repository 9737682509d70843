"""The records recoloop reads and writes, as plain frozen dataclasses (no Kafka).

Input values arrive as JSON already checked against the schemas in
``app/contract/topic_specs/``; the ``from_value`` constructors only pick the fields the engine
uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.keys import escape

Context = dict[str, Any]


@dataclass(frozen=True)
class Served:
    """A recommendation that was actually displayed to a session."""

    event_id: str
    site_id: str
    session_id: str
    ts: int
    items: tuple[str, ...]
    ranking_id: str | None = None
    arm: str | None = None
    propensity: float | None = None
    context: Context = field(default_factory=dict)
    # The W3C traceparent of the worker's span for this display (app.observability.tracing):
    # its reward and model update join that trace. Not part of the record's value.
    trace: str | None = field(default=None, compare=False)

    @classmethod
    def from_value(cls, value: dict[str, Any], trace: str | None = None) -> Served:
        return cls(
            event_id=value["event_id"],
            site_id=value["site_id"],
            session_id=value["session_id"],
            ts=value["ts"],
            items=tuple(value["items"]),
            ranking_id=value.get("ranking_id"),
            arm=value.get("arm"),
            propensity=value.get("propensity"),
            context=dict(value.get("context") or {}),
            trace=trace,
        )


@dataclass(frozen=True)
class Origin:
    """Where an input message came from, with its bytes (for the dead-letter topic): all of
    them, or the first ones of a :meth:`cut` copy, which remembers the full sizes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    full_key_bytes: int | None = None  # set on a cut copy
    full_value_bytes: int | None = None
    trace: str | None = None  # the record's W3C traceparent header, when tracing is on

    @property
    def key_bytes(self) -> int:
        return len(self.key or b"") if self.full_key_bytes is None else self.full_key_bytes

    @property
    def value_bytes(self) -> int:
        return len(self.value or b"") if self.full_value_bytes is None else self.full_value_bytes

    def cut(self, limit: int) -> Origin:
        """A copy keeping at most ``limit`` bytes of the key and of the value."""
        return Origin(self.topic, self.partition, self.offset,
                      None if self.key is None else self.key[:limit],
                      None if self.value is None else self.value[:limit],
                      self.key_bytes, self.value_bytes)


@dataclass(frozen=True)
class Reaction:
    """One visitor action on an item: a click, a detail view or a basket add.

    ``origin`` is kept while the reaction waits in the join: if it turns out late, its exact
    bytes go to the dead-letter topic.
    """

    event_id: str
    type: str
    site_id: str
    session_id: str
    ts: int
    item_id: str
    served_id: str | None = None
    category: str | None = None
    context: Context = field(default_factory=dict)
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # ``"source": "organic"``: the visitor found the item on their own; never attributed.
    organic: bool = False
    price: float | None = None  # sent with basket adds: revenue per display in reports
    trace: str | None = field(default=None, compare=False)  # as Served.trace

    @classmethod
    def from_value(cls, reaction_type: str, value: dict[str, Any],
                   origin: Origin | None = None, trace: str | None = None) -> Reaction:
        return cls(
            event_id=value["event_id"],
            type=reaction_type,
            site_id=value["site_id"],
            session_id=value["session_id"],
            ts=value["ts"],
            item_id=value["item_id"],
            served_id=value.get("served_id"),
            category=value.get("category"),
            context=dict(value.get("context") or {}),
            origin=origin,
            organic=value.get("source") == "organic",
            price=value.get("price"),
            trace=trace,
        )


@dataclass(frozen=True)
class Tick:
    """The worker's wall clock, sent through the stream so idle partitions close decisions.

    ``partition`` of ``partitions`` is the partition it arrived on: each site's default
    rankings are published from one partition only.
    """

    wall_ms: int
    partition: int = 0
    partitions: int = 1


@dataclass(frozen=True)
class Outcome:
    type: str
    item_id: str
    ts: int
    delay_ms: int
    price: float | None = None

    def to_value(self) -> dict[str, Any]:
        value = {"type": self.type, "item_id": self.item_id, "ts": self.ts,
                 "delay_ms": self.delay_ms}
        if self.price is not None:
            value["price"] = self.price
        return value


@dataclass(frozen=True)
class Apprentice:
    """What the engine would have shown beside a site's own choice (an apprentice control):
    its arm and that arm's probability, the probability it gave the arm that was shown (0
    for a list that is no arm of its), and its items."""

    arm: str
    propensity: float
    shown_arm_probability: float
    items: tuple[str, ...]

    def to_value(self) -> dict[str, Any]:
        return {"arm": self.arm, "propensity": self.propensity,
                "shown_arm_probability": self.shown_arm_probability,
                "items": list(self.items)}


@dataclass(frozen=True)
class ClosedDecision:
    """A served decision whose reward window has closed: one ``reco.rewards`` record."""

    served_id: str
    ranking_id: str | None
    site_id: str
    session_id: str
    arm: str | None
    propensity: float | None
    context: Context
    items: tuple[str, ...]
    served_ts: int
    reward: float
    outcomes: tuple[Outcome, ...]
    closed_by: str  # "window" | "max_reward" | "idle"
    signals: tuple[tuple[float, ...], ...] = ()  # per shown item, for the item model
    experiment: str | None = None  # the site's experiment and the session's variant in it
    variant: str | None = None
    apprentice: Apprentice | None = None
    trace: str | None = None  # its display's (Served.trace)

    def to_value(self) -> dict[str, Any]:
        value = {
            "served_id": self.served_id,
            "ranking_id": self.ranking_id,
            "site_id": self.site_id,
            "session_id": self.session_id,
            "arm": self.arm,
            "propensity": self.propensity,
            "context": self.context,
            "items": list(self.items),
            "served_ts": self.served_ts,
            "reward": self.reward,
            "outcomes": [outcome.to_value() for outcome in self.outcomes],
            "closed_by": self.closed_by,
        }
        if self.experiment is not None:
            value["experiment"], value["variant"] = self.experiment, self.variant
        if self.apprentice is not None:
            value["apprentice"] = self.apprentice.to_value()
        return value

    def learning_value(self) -> dict[str, Any]:
        """The record the learner reads (the decisions topic): the ``reco.rewards`` value and
        the signals each shown item had (:mod:`app.core.ranker`)."""
        return {**self.to_value(), "signals": [list(row) for row in self.signals]}


@dataclass(frozen=True)
class Ranking:
    """What a session should see next: one ``reco.rankings`` record."""

    ranking_id: str
    site_id: str
    session_id: str
    ts: int
    arm: str
    propensity: float
    items: tuple[tuple[str, float], ...]
    model_version: int
    context: Context
    segment: str | None = None  # set on default rankings, whose session_id is "*"
    trigger_event_id: str | None = None  # the session event it answers; None for defaults
    # Each arm's estimate and probability in this context, and what placed each item.
    explain: Mapping[str, Any] | None = None
    experiment: str | None = None  # the site's experiment and the session's variant in it
    variant: str | None = None

    @property
    def key(self) -> str:
        """The Kafka key: the session, or ``site_id|*|segment`` for a default ranking (the site
        id escaped as in :mod:`app.core.keys`, so no two sites share one), ``|@variant``
        appended for an experiment variant's (a segment's parts all hold a ``=``)."""
        if self.segment is None:
            return self.session_id
        key = f"{escape(self.site_id)}|*|{self.segment}"
        return key if self.variant is None else f"{key}|@{self.variant}"

    def to_value(self) -> dict[str, Any]:
        value = {
            "ranking_id": self.ranking_id,
            "site_id": self.site_id,
            "session_id": self.session_id,
            "ts": self.ts,
            "arm": self.arm,
            "propensity": self.propensity,
            "items": [{"item_id": item, "score": score} for item, score in self.items],
            "model_version": self.model_version,
            "context": self.context,
            "trigger_event_id": self.trigger_event_id,
        }
        if self.segment is not None:
            value["segment"] = self.segment
        if self.explain is not None:
            value["explain"] = self.explain
        if self.experiment is not None:
            value["experiment"], value["variant"] = self.experiment, self.variant
        return value
