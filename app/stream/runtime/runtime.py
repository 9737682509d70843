"""The exactly-once runtime: an application's records in batches, one Kafka transaction per
batch holding everything the batch caused:

1. the outputs the processor staged,
2. the changed partition state, as records of the changelog,
3. the processor's changes to state every worker shares (its replicas' topics),
4. the consumer offsets just past the batch (``send_offsets_to_transaction``).

Either all of it commits or none of it does, and ``read_committed`` readers never see an
aborted batch. Only after the commit does the batch's state go to local RocksDB
(:mod:`app.stream.runtime.store`), so after a crash local state is never ahead of the
committed offsets, and the batch that was in flight is processed again from them as if for
the first time: nothing is lost and nothing counted twice.

An input the processor raises on, or whose outputs or state would not fit a record, is set
aside (:class:`Poison`) and the batch redone: the processor then stages it as failed.

The transactional id and the static group membership come from the worker id: a restarted
worker fences its previous self, aborts its unfinished transaction at once, and gets its
partitions back without a rebalance. Fatal client errors, a group membership lost during a
batch and every wait that outlasts its budget raise :class:`Rebuild`
(:mod:`app.stream.runtime.calls`); the runtime then closes its clients and partition state,
and its owner builds a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import Metrics
from app.observability.tracing import Headers, Tracing
from app.settings import Settings
from app.stream.runtime.calls import (
    WAIT_LOG_EVERY_S,
    Patience,
    Rebuild,
    StuckCalls,
    raise_if_fatal,
    retrying,
)
from app.stream.runtime.kafka import Clients, kafka_clients, next_batch, received
from app.stream.runtime.oversize import Oversized
from app.stream.runtime.partitions import Partitions, Where
from app.stream.runtime.protocol import Application, Poison, Record, RecordTooLarge, Staged
from app.stream.runtime.store import ChangelogStore
from app.stream.runtime.tails import Tail

log = logging.getLogger(__name__)


class Runtime:
    """Runs ``app`` on its own Kafka clients until stopped or until they cannot go on."""

    def __init__(self, settings: Settings, app: Application, metrics: Metrics,
                 heartbeat: float | None = None, stuck: StuckCalls | None = None,
                 tracing: Tracing | None = None,
                 clients: Callable[[Settings], Clients] = kafka_clients) -> None:
        self.settings = settings
        self.app = app
        self.processor = app.processor
        self.metrics = metrics
        self.tracing = Tracing() if tracing is None else tracing
        self._ready = False
        self.became_ready = False  # since it was built
        # The last turn, for /health; a rebuilt Runtime carries on its predecessor's, so
        # rebuilds that never get it going again do not count as progress.
        self.heartbeat = time.monotonic() if heartbeat is None else heartbeat
        self.stuck = StuckCalls() if stuck is None else stuck
        self._producer_left_behind = False  # one of its calls did not return
        self._stopping = False
        # Inputs set aside, kept until a batch holding them commits (it may be redone twice).
        self._poisoned: dict[tuple[str, int, int], Poison] = {}
        self._last_tick = 0.0
        kafka = clients(settings)
        self.producer, self.consumer = kafka.producer, kafka.consumer
        self.restorer = kafka.restorer
        self.partitions = Partitions(app, kafka.restorer,
                                     Path(settings.worker.data_dir) / "worker" / "state", metrics,
                                     self._beat)
        self.oversized = Oversized(app.max_record_bytes)
        self.tails = [Tail(kafka.reader_config, replica, kafka.new_consumer)
                      for replica in app.replicas]

    @property
    def states(self) -> dict[int, ChangelogStore]:
        return self.partitions.states

    # -- status (read from the health server's threads) ----------------------------------

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def is_live(self) -> bool:
        return not self._stopping and time.monotonic() - self.heartbeat < STUCK_AFTER_S

    def is_ready(self) -> bool:
        return self._ready and self.is_live()

    def assigned_partitions(self) -> list[int]:
        return sorted(self.states)

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; raises :class:`Rebuild` when these clients cannot go
        on. Either way every client and the partition state are closed on return."""
        try:
            # Aborts what our previous self (or a failed Runtime before this one) left open.
            self._retrying("initializing transactions", self.producer.init_transactions)
            for tail in self.tails:
                tail.open()
                tail.catch_up(self._beat)
            self.consumer.subscribe(list(self.app.sources), on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_revoke)
            while not stop.is_set():
                self._turn()
        except KafkaException as exc:  # not retriable, not abortable: these clients are done
            raise Rebuild.of(exc) from exc
        finally:
            self._close()

    def _turn(self) -> None:
        self.heartbeat = time.monotonic()
        messages = next_batch(self.consumer)
        for tail in self.tails:
            tail.poll()
        # A tick stays due until a transaction holding it commits (an aborted one, redone
        # without it, would otherwise skip ticks for as long as it recurs).
        tick = time.monotonic() - self._last_tick >= self.settings.join.tick_interval_s
        if tick:
            self.processor.tick_due()
        if messages or (tick and self.states):
            self._transaction(messages, tick)
        elif tick:
            self._last_tick = time.monotonic()

    def _close(self) -> None:
        """Close every client and the partition state, whatever state they are in (the next
        Runtime re-opens the same RocksDB directories)."""
        self._stopping, self._ready = True, False
        closes = [("consumer", self.consumer.close),
                  *((f"{tail.topic} reader", tail.close) for tail in self.tails),
                  ("restorer", self.restorer.close)]
        for name, close in closes:
            try:
                close()  # closing the consumer revokes its partitions: their state closes
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the %s: %s", name, exc)
        self.partitions.close()
        self.processor.close()
        # Producer.close() would abort the open transaction and flush, and so wait out an
        # outage: drop the producer instead, its successor's init_transactions aborts it.
        if not self._producer_left_behind:  # else left alone with the call it is blocked in
            self.producer.purge()
        del self.producer

    # -- one batch ------------------------------------------------------------------------

    def _transaction(self, messages: list[Message], tick: bool) -> None:
        inputs = []
        tracing = self.tracing if self.tracing.enabled else None
        for message in messages:
            if message.error():
                raise_if_fatal(message.error(), "consumer")
                log.warning("consumer: %s", message.error())
            else:
                inputs.append(received(message, tracing))
        batch = None if not inputs else self.tracing.start("recoloop.batch", links=[
            record.trace for record in inputs if record.trace is not None], attributes={
                "recoloop.records": len(inputs), "recoloop.tick": tick})  # none for ticks
        committed = False
        try:
            out = Staged(self.app.max_record_bytes, span=batch)
            committed = self._batch(inputs, tick, out)
        finally:
            self.tracing.end(batch, None if committed else "aborted: the batch is redone")

    def _batch(self, inputs: list[Record], tick: bool, out: Staged) -> bool:
        """Handle the batch's inputs and commit what they caused; False if it was aborted."""
        first: dict[Where, int] = {}  # where to go back to if the batch aborts
        after: dict[Where, int] = {}
        for record in inputs:
            first.setdefault((record.topic, record.partition), record.offset)
            after[(record.topic, record.partition)] = record.offset + 1
        self.producer.begin_transaction()
        for partition, topics in self.partitions.unread(self.consumer).items():
            self.processor.unread(self.states[partition], topics)
        with self.tracing.child("recoloop.join", out.span):
            for record in inputs:
                try:
                    self._handle(record, out)
                    self.oversized.check(record.partition, self.states.get(record.partition))
                except Exception as exc:  # set this record aside and redo the batch
                    self._poisoned[(record.topic, record.partition, record.offset)] = \
                        _poison(record, exc)
                    return self._abort(first)
            if tick and not self._tick(out):
                return self._abort(first)
        with self.tracing.child("recoloop.produce", out.span):
            return self._commit(out, first, after, tick)

    def _handle(self, record: Record, out: Staged) -> None:
        poison = self._poisoned.get((record.topic, record.partition, record.offset))
        if poison is not None:
            self.processor.failed(record, poison, out)
        else:
            self.processor.process(record, self.states.get(record.partition), out)

    def _tick(self, out: Staged) -> bool:
        wall_ms = int(time.time() * 1000)
        for partition, state in self.states.items():
            try:
                self.processor.tick(partition, wall_ms, state, out)
            except Exception:
                log.exception("tick failed on partition %s", partition)
                return False
        return True

    def _commit(self, out: Staged, first: dict[Where, int], after: dict[Where, int],
                tick: bool) -> bool:
        changelog_offsets: dict[int, int] = {}

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None and message.topic() == self.app.changelog:
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                changelog_offsets[partition] = max(offset, changelog_offsets.get(partition, -1))

        changes = {p: state.changes() for p, state in self.states.items()}
        if self.oversized.found(changes, self.states):
            return self._abort(first)
        shared = self.processor.changes()
        try:
            for p, records in changes.items():
                for key, value in records:
                    self._produce(self.app.changelog, value, key, partition=p,
                                  on_delivery=delivered)
            for topic, key, value in shared:
                self._produce(topic, value, key)
            for topic, record_key, record_value, headers in out.records:
                self._produce(topic, record_value, record_key, headers)
            self._send_offsets(after)
            self._retrying("committing the batch", self.producer.commit_transaction)
        except KafkaException as exc:
            if not exc.args[0].txn_requires_abort():
                raise  # not retriable, not abortable: run() rebuilds the clients
            log.warning("transaction aborted, the batch will be redone: %s", exc.args[0])
            return self._abort(first)
        for p, records in changes.items():
            if records:
                self.states[p].committed(records, changelog_offsets[p])
        self.processor.committed()
        self.oversized.clear()
        self.partitions.read(after)
        if tick:
            self._last_tick = time.monotonic()
        for where in [w for w in self._poisoned if w[2] < after.get(w[:2], -1)]:
            del self._poisoned[where]  # set aside for good
        for count in out.counts:
            count()
        return True

    def _send_offsets(self, after: dict[Where, int]) -> None:
        # Delivered before the offsets go in: send_offsets_to_transaction blocks while the
        # broker is unreachable (StuckCalls), so it had better start just after it answered.
        self._flush()
        if not self.consumer.memberid():
            # The group session timed out during the batch (librdkafka then rejoins as a new
            # member of our static instance and may be fenced as its own old self).
            raise Rebuild("membership_lost", "the consumer lost its group membership")
        # Offsets in every transaction, also one of ticks alone: the group coordinator then
        # refuses it from a worker whose partitions have moved on (a zombie).
        offsets = after or self._positions()
        # Not through self: a call left behind (StuckCalls) would keep this whole runtime.
        producer, consumer = self.producer, self.consumer
        self._retrying("sending the batch's offsets", lambda timeout_s: (
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                consumer.consumer_group_metadata(), timeout_s)))

    def _abort(self, first: dict[Where, int]) -> bool:
        """Undo the batch: abort the transaction, forget what it changed in memory, and read
        its records again (False: not committed)."""
        self._retrying("aborting the batch", self.producer.abort_transaction)
        for state in self.states.values():
            state.discard()
        self.processor.aborted()
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        return False

    # -- Kafka calls ----------------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[float], None]) -> None:
        try:
            retrying(self.stuck, what, call)
        except Rebuild as exc:
            if exc.reason == "stuck_call":
                self._producer_left_behind = True
            raise

    def _flush(self) -> None:
        """Deliver what the batch produced; also serves the changelog offsets' reports."""
        patience = Patience("delivering the batch's outputs")
        while left := self.producer.flush(WAIT_LOG_EVERY_S):
            # Past the budget the broker is unreachable: aborting would wait for it too, the
            # next Runtime's init_transactions aborts the transaction.
            patience.waiting(f"{left} records not delivered yet")

    def _produce(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: Headers | None = None, **kwargs: Any) -> None:
        patience = Patience(f"producing to {topic}")
        if headers is not None:
            kwargs["headers"] = headers
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                self.producer.poll(0)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                patience.waiting("the producer's queue is full")
                self.producer.poll(0.1)

    def _positions(self) -> dict[Where, int]:
        """Where the consumer stands on each assigned partition (what it has processed)."""
        return {(tp.topic, tp.partition): tp.offset
                for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0}

    # -- partitions coming and going ------------------------------------------------------

    def _on_assign(self, consumer: Any, assigned: list[TopicPartition]) -> None:
        """Restore the assigned partitions' state, and bring the replicas read on assignment
        up to date before processing any of their records."""
        self._ready = False
        started = time.monotonic()
        mine = self.partitions.assign(consumer, assigned)
        for tail in self.tails:
            if tail.replica.caught_up_on_assign:
                tail.catch_up(self._beat)
        log.info("assigned partitions %s, state restored in %.1f s", mine,
                 time.monotonic() - started)
        self._ready = self.became_ready = True

    def _on_revoke(self, consumer: Any, revoked: list[TopicPartition]) -> None:
        """Called between transactions: drop the partitions' state so nothing (not even a
        tick) touches them while another worker may own them."""
        self._ready = False
        self.partitions.revoke(revoked)
        self.processor.revoked()


def _poison(record: Record, exc: Exception) -> Poison:
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if isinstance(exc, RecordTooLarge):
        log.warning("%s: %s; dead-lettering it", where, exc)
        return Poison("too_large", str(exc))
    log.exception("processing failed on %s", where)  # a bug
    return Poison("processing_error", repr(exc))
