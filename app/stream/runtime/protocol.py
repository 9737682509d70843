"""What the runtime runs, and what it hands over: an :class:`Application` is the topics, a
:class:`Processor` (records in, staged outputs and state changes out, ticks, commit and abort
notices) and its :class:`Replica` s (topics every worker reads in full and applies).

A processor sees :class:`Record` s, :class:`Staged` and :class:`ChangelogStore` s only, never
a Kafka client: the runtime puts what it staged, the stores' changelog records, its shared
records and the input offsets in one Kafka transaction per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.observability.tracing import Headers, Span
from app.stream.runtime.store import ChangelogStore, Codec


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a topic. ``timestamp_ms`` is a time no producer's clock can push:
    the broker's (``LogAppendTime``), else the producer's but never later than this worker's
    clock, and now when it has none. ``trace``: its ``traceparent`` header, when tracing is
    on."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    trace: str | None = None


class RecordTooLarge(ValueError):
    """A record over the application's bound: the input that caused it is set aside as
    ``too_large``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} would be {size} bytes, over {limit}")
        self.what = what
        self.size = size


def check_size(what: str, key: bytes | None, value: bytes | None, limit: int) -> None:
    size = len(key or b"") + len(value or b"")
    if size > limit:
        raise RecordTooLarge(what, size, limit)


@dataclass
class Staged:
    """What one transaction sends (besides state changes), and counts once it commits."""

    limit: int  # bytes of a record, key and value together
    # (topic, key, value, headers), each sent to the partition of its key
    records: list[tuple[str, bytes | None, bytes, Headers | None]] = field(default_factory=list)
    counts: list[Callable[[], None]] = field(default_factory=list)
    span: Span | None = None  # the transaction's, when tracing is on

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: Headers | None = None) -> None:
        """Stage a record; :class:`RecordTooLarge` if it could not be sent (the runtime then
        sets aside the input that caused it). ``headers`` hold one traceparent at most
        (66 bytes), well within the margin between the bound and the broker's limit."""
        check_size(topic, key, value, self.limit)
        self.records.append((topic, key, value, headers))

    def count(self, update: Callable[[], None]) -> None:
        """Run ``update`` (a metric) once the transaction commits, never for an aborted one."""
        self.counts.append(update)


@dataclass(frozen=True)
class Poison:
    """Why an input is set aside: ``too_large`` (what it caused would not fit a record) or
    ``processing_error`` (the processor raised on it)."""

    reason: str
    detail: str


class Processor(Protocol):
    """Records in, staged outputs and state changes out. Everything it changes in memory
    waits for :meth:`committed` or :meth:`aborted`; what it stages waits for the commit."""

    def process(self, record: Record, state: ChangelogStore | None, out: Staged) -> None:
        """Handle one input; ``state``: its partition's store, None when it has none. An
        exception sets the input aside and the batch is redone (:meth:`failed`)."""

    def failed(self, record: Record, poison: Poison, out: Staged) -> None:
        """The input set aside in place of :meth:`process` (when its batch is redone)."""

    def unread(self, state: ChangelogStore, topics: frozenset[str]) -> None:
        """Before a batch: the stateful topics of ``state``'s partition with records on the
        broker not read yet (the backlog)."""

    def tick(self, partition: int, wall_ms: int, state: ChangelogStore, out: Staged) -> None:
        """The wall clock, for each assigned partition, every tick interval."""

    def tick_due(self) -> None:
        """A tick is due: housekeeping before its batch."""

    def changes(self) -> list[tuple[str, bytes, bytes]]:
        """The batch's changes to state shared by every worker, as (topic, key, value)
        records to send in the transaction (the processor's replicas read them back)."""

    def committed(self) -> None:
        """The batch, and the :meth:`changes` it was asked for, committed."""

    def aborted(self) -> None:
        """The batch aborted: forget what it changed in memory; it is redone."""

    def revoked(self) -> None:
        """Partitions were revoked: forget what describes them."""

    def close(self) -> None:
        """The runtime is closing."""


class Replica(Protocol):
    """A topic every worker reads in full, from its start, and applies to its own copy."""

    topic: str
    # Read up to its end on every assignment, before any partition is processed.
    caught_up_on_assign: bool

    def apply(self, record: Record) -> None: ...


@dataclass
class Application:
    """What a runtime runs."""

    sources: tuple[str, ...]  # the topics the group's consumer reads
    stateful: tuple[str, ...]  # of them, those whose partitions own a store (and a backlog)
    changelog: str  # the stores' changelog topic, one partition per partition number
    processor: Processor
    replicas: Sequence[Replica]  # read up to their ends in this order before the first batch
    codec: Codec  # the stores' values
    max_record_bytes: int  # every record the runtime sends, key and value together
