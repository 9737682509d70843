"""The worker's exactly-once loop over Kafka (confluent-kafka).

One consumer in the app's group reads the join inputs, the decisions and the catalog (the
``range`` assignor gives a worker the same partition numbers of every topic, so a session's
displays and reactions meet in one partition's state). Records are handled in batches; each
batch is one Kafka transaction holding everything it caused:

1. the outputs the agents staged (rankings, rewards, dead letters, decisions),
2. the changed engine state, as records of the engine-state changelog,
3. the changed bandits and site statistics, on the models and site-statistics topics,
4. the consumer offsets just past the batch (``send_offsets_to_transaction``).

Either all of it commits or none of it does, and ``read_committed`` readers never see an
aborted batch. Only after the commit does the batch's state go to local RocksDB
(:mod:`app.stream.state`), so after a crash local state is never ahead of the committed offsets,
and the batch that was in flight is processed again from the committed offsets as if for
the first time: nothing is lost and nothing counted twice.

The transactional id and the static group membership come from the worker id: a restarted
worker fences its previous self, aborts its unfinished transaction at once, and gets its
partitions back without a rebalance.

The clients do not always recover from a broker outage by themselves: after the group
session timed out, librdkafka can be fenced as its own static member (a fatal consumer
error). Fatal errors, a group membership lost during a batch and every wait that outlasts
its time budget raise :class:`Rebuild`; the loop then closes its clients and partition state,
and :mod:`app.stream.worker` builds a new :class:`Runtime` (the same transactional id fences
the old producer, the same instance id takes over the static membership).

librdkafka's ``send_offsets_to_transaction`` ignores its timeout while the broker is
unreachable: it returns only once the broker answers again (a broker killed just before the
call kept it for the whole outage, 58 s; see tests/stream/test_outage.py). Every
transactional call therefore runs in a thread of its own (:class:`StuckCalls`); one that has
not returned after :data:`STUCK_CALL_S` is left to finish by itself with its producer, and
the loop is rebuilt with a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from app.contract.codec import MAX_RECORD_BYTES, RecordTooLarge, check_size, encode_state
from app.contract.decode import InvalidInput, decode_catalog
from app.contract.site_config import apply_site_config
from app.contract.topics import Topics
from app.core.catalog import apply_record
from app.core.events import Origin
from app.core.sites import SiteSettings
from app.core.store import MemoryStore, Store
from app.kafka import clients
from app.kafka.reader import TopicReader
from app.kafka.topic_admin import LOCAL_STATE_MAX_AGE_MS
from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import RESTART_REASONS, Metrics
from app.observability.tracing import Headers, Tracing
from app.settings import Settings
from app.stream.agents import Agents, Staged
from app.stream.bandits import BanditModels, SpilledModels
from app.stream.site_stats import SiteStatistics
from app.stream.state import PartitionState, Record, restore_plan

log = logging.getLogger(__name__)

MAX_BATCH = 2_000  # records per transaction at most
POLL_S = 0.05
TIMEOUT_S = 30.0  # a Kafka call's timeout, and the budget of a wait or a retry loop
RETRY_PAUSE_S = 0.5
WAIT_LOG_EVERY_S = 5.0  # also the slice of a long wait in librdkafka: its calls resume
RESTORE_BATCH = 5_000
# librdkafka prefetches up to 64 MB per consumer by default, and a worker has six (the
# group's, the restorer and four tails): the inputs get a few transactions' worth, the readers
# of the internal topics less (they read small records, or catch up once).
INPUT_PREFETCH_KB = 16_384
READER_PREFETCH_KB = 4_096
# A transactional call given at most 5 s that has not returned by then is stuck in librdkafka
# (send_offsets_to_transaction while the broker is unreachable): it is left behind.
STUCK_CALL_S = TIMEOUT_S


class Rebuild(Exception):
    """These Kafka clients cannot go on: close them and the partition state and build the
    loop anew. ``reason`` is one of :data:`RESTART_REASONS` (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in RESTART_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason

    @classmethod
    def of(cls, exc: KafkaException) -> Rebuild:
        error = exc.args[0] if exc.args else None
        fatal = isinstance(error, KafkaError) and (error.fatal()
                                                   or error.code() == KafkaError._FATAL)
        return cls("fatal" if fatal else "kafka_error", str(error or exc))


def raise_if_fatal(error: KafkaError | None, where: str) -> None:
    """A fatal client error (our static group member or our producer fenced, ...) ends the
    client: it never recovers, however long the loop waits."""
    if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
        raise Rebuild("fatal", f"{where}: {error}")


class StuckCalls:
    """Runs each transactional call in a thread of its own and waits for it at most
    :data:`STUCK_CALL_S`. A call still running then is left behind, holding its producer (the
    next loop's producer, with the same transactional id, fences it, so its transaction
    never commits), and :class:`Rebuild` is raised; the call ends by itself, in its thread,
    once the broker answers again. Shared by every loop a worker builds, so that the calls
    still blocked are counted across rebuilds."""

    def __init__(self, wait_s: float = STUCK_CALL_S) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._left: list[threading.Thread] = []

    def blocked(self) -> list[str]:
        """The calls left behind that have not returned yet."""
        with self._lock:
            self._left = [thread for thread in self._left if thread.is_alive()]
            return [thread.name for thread in self._left]

    def run(self, what: str, call: Callable[[float], None], timeout_s: float) -> None:
        """``call(timeout_s)``'s outcome (its exception re-raised here), or Rebuild if it has
        not returned within ``wait_s``."""
        outcome: list[BaseException | None] = []
        left_behind = threading.Event()
        started = time.monotonic()

        def target() -> None:
            try:
                call(timeout_s)
                result: BaseException | None = None
            except BaseException as exc:  # handed to the waiting loop
                result = exc
            with self._lock:
                outcome.append(result)
            if left_behind.is_set():
                log.warning("%s: the call left behind returned after %.0f s (%s)", what,
                            time.monotonic() - started, result or "no error")

        thread = threading.Thread(target=target, name=f"kafka call: {what}", daemon=True)
        thread.start()
        thread.join(self.wait_s)
        with self._lock:
            if not outcome:
                left_behind.set()
                self._left.append(thread)
        if outcome:
            if outcome[0] is not None:
                raise outcome[0]
            return
        raise Rebuild("stuck_call", f"{what}: the call has not returned after "
                      f"{self.wait_s:.0f} s, whatever its timeout; left behind with its producer")


class Patience:
    """The time budget of one wait: says what it waits for every few seconds, and raises
    :class:`Rebuild` once the budget is spent without progress, so nothing waits forever."""

    def __init__(self, what: str, budget_s: float = TIMEOUT_S) -> None:
        self.what = what
        self.budget_s = budget_s
        self.progressed()

    def progressed(self) -> None:
        self.since = self._logged = time.monotonic()

    def remaining(self) -> float:
        return self.since + self.budget_s - time.monotonic()

    def waiting(self, why: object) -> None:
        waited = time.monotonic() - self.since
        if waited >= self.budget_s:
            raise Rebuild("timed_out", f"{self.what}: no progress for {waited:.0f} s ({why})")
        if time.monotonic() - self._logged >= WAIT_LOG_EVERY_S:
            self._logged = time.monotonic()
            log.warning("%s: waiting for %.0f s so far (%s)", self.what, waited, why)


def received(message: Message, tracing: Tracing | None = None) -> tuple[Origin, int]:
    """A consumed message's origin and its Kafka timestamp in ms, a time no producer's clock
    can push: the broker's (``LogAppendTime``, how ``topics apply`` makes the inputs), else the
    producer's but never later than this worker's clock, and now when it has none. With
    ``tracing`` on, the origin carries the message's ``traceparent`` header."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    kind, timestamp_ms = message.timestamp()
    if kind != TIMESTAMP_LOG_APPEND_TIME:
        now_ms = int(time.time() * 1000)
        timestamp_ms = now_ms if kind == TIMESTAMP_NOT_AVAILABLE else min(timestamp_ms, now_ms)
    trace = None if tracing is None else tracing.incoming(message.headers())
    return Origin(topic, partition, offset, message.key(), message.value(),
                  trace=trace), timestamp_ms


class Tail:
    """Every partition of a topic from its start, for this worker's own copy (the catalog,
    the bandit models, ...): a :class:`TopicReader` whose fatal errors and waits without
    progress raise :class:`Rebuild`."""

    def __init__(self, config: dict[str, Any], topic: str, apply: Callable[[Message], None]):
        self.topic = topic
        self.reader = TopicReader(config, topic, apply, on_error=self._error)

    def open(self) -> None:
        if not self.reader.assign(timeout_s=TIMEOUT_S):
            log.warning("%s does not exist: nothing of it is read until a restart after "
                        "`recoloop topics apply`", self.topic)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self.reader.poll(timeout_s, RESTORE_BATCH)

    def catch_up(self, progress: Callable[[], None] = lambda: None) -> None:
        """Read until every partition's end as of now (the last stable offset)."""
        ends = self.reader.end_offsets(TIMEOUT_S)
        patience = Patience(f"reading {self.topic} up to its end")

        def moved() -> None:  # reading is progress, not a hang
            progress()
            patience.progressed()

        self.reader.read_to(ends, moved, patience.waiting)

    def close(self) -> None:
        self.reader.close()

    def _error(self, error: KafkaError) -> None:
        raise_if_fatal(error, f"reading {self.topic}")
        log.warning("reading %s: %s", self.topic, error)


def next_batch(consumer: Consumer) -> list[Message]:
    """What has arrived, up to MAX_BATCH; when nothing has, wait up to POLL_S for the first
    record only (``consume`` would wait out its timeout for a full batch)."""
    messages = consumer.consume(MAX_BATCH, 0)
    if messages:
        return messages
    first = consumer.poll(POLL_S)
    if first is None:
        return []
    return [first, *consumer.consume(MAX_BATCH - 1, 0)]


class Runtime:
    def __init__(self, settings: Settings, partitions: int, metrics: Metrics,
                 agents_for: Callable[[BanditModels, Store, SiteStatistics, SiteSettings],
                                      Agents],
                 heartbeat: float | None = None, stuck: StuckCalls | None = None,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = Tracing() if tracing is None else tracing
        self.topics = Topics.of(settings)
        self.partitions = partitions
        self.metrics = metrics
        self.sites = SiteSettings(settings)  # follows the site-config topic
        self.models = BanditModels(settings, lambda: self._count_undecodable("models"),
                                   SpilledModels(
                                       Path(settings.worker.data_dir) / "worker" / "models"),
                                   sites=self.sites)
        self.catalog = MemoryStore()
        self.site_stats = SiteStatistics(lambda: self._count_undecodable("site_stats"))
        self.agents = agents_for(self.models, self.catalog, self.site_stats, self.sites)
        self.states: dict[int, PartitionState] = {}
        self.state_dir = Path(settings.worker.data_dir) / "worker" / "state"
        self._ready = False
        self.became_ready = False  # since it was built
        # The loop's last turn, for /health; a rebuilt Runtime carries on its predecessor's,
        # so rebuilds that never get the loop going again do not count as progress.
        self.heartbeat = time.monotonic() if heartbeat is None else heartbeat
        self.stuck = StuckCalls() if stuck is None else stuck
        self._producer_left_behind = False  # one of its calls did not return
        self._stopping = False
        self._poisoned: dict[tuple[str, int, int], InvalidInput] = {}
        # State keys whose changelog record came out too large, per partition: the redo of
        # the batch checks them after each input to find the one that made them so.
        self._oversized: dict[int, set[str]] = {}
        self._last_tick = 0.0
        # Per assigned input partition: how far it is known to be read (its committed offset
        # at assignment, then each batch's: the consumer's position is unset until it reads
        # one), and its end offset at assignment (before the consumer's first fetch says it).
        self._read_to: dict[tuple[str, int], int] = {}
        self._end_at_assign: dict[tuple[str, int], int] = {}
        worker_id = settings.instance_id
        self._reader_config = {
            **clients.committed_consumer(settings, f"{settings.app_id}-reader-{worker_id}"),
            "auto.offset.reset": "earliest", "queued.max.messages.kbytes": READER_PREFETCH_KB}
        self.producer = Producer(clients.transactional_producer(
            settings, f"{settings.app_id}-{worker_id}"))
        session_timeout_ms = int(settings.kafka.group_session_timeout_s * 1000)
        self.consumer = Consumer({
            **clients.committed_consumer(settings, settings.app_id),
            "group.instance.id": worker_id,
            "auto.offset.reset": "earliest", "partition.assignment.strategy": "range",
            "queued.max.messages.kbytes": INPUT_PREFETCH_KB,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": min(2_000, session_timeout_ms // 3),
            # Restores run inside the assignment callback: a full rebuild may take a while.
            "max.poll.interval.ms": 1_800_000})
        self.restorer = Consumer({**self._reader_config})
        self.catalog_tail = Tail(self._reader_config, self.topics.catalog, self._apply_catalog)
        self.models_tail = Tail(self._reader_config, self.topics.models, self._apply_model)
        self.stats_tail = Tail(self._reader_config, self.topics.site_stats,
                               self._apply_site_stat)
        self.config_tail = Tail(self._reader_config, self.topics.site_config,
                                self._apply_site_config)
        # The sites' configs first: a model read back is fitted to its site's arms at once.
        self._tails = (self.config_tail, self.catalog_tail, self.models_tail, self.stats_tail)

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
            for tail in self._tails:
                tail.open()
                tail.catch_up(self._beat)
            topics = self.topics
            self.consumer.subscribe([*topics.join_inputs, topics.decisions, topics.catalog],
                                    on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_revoke)
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                messages = next_batch(self.consumer)
                for tail in self._tails:
                    tail.poll()
                # A tick stays due until a transaction holding it commits (an aborted one,
                # redone without it, would otherwise skip ticks for as long as it recurs).
                tick = time.monotonic() - self._last_tick >= self.settings.join.tick_interval_s
                if tick:
                    self.models.retire_idle()
                    self.metrics.bandit_models_in_memory.set(self.models.in_memory())
                if messages or (tick and self.states):
                    self._transaction(messages, tick)
                elif tick:
                    self._last_tick = time.monotonic()
        except KafkaException as exc:  # not retriable, not abortable: these clients are done
            raise Rebuild.of(exc) from exc
        finally:
            self._close()

    def _close(self) -> None:
        """Close every client and the partition state, whatever state they are in (the next
        Runtime re-opens the same RocksDB directories)."""
        self._stopping, self._ready = True, False
        for name, close in (("consumer", self.consumer.close),
                            ("catalog reader", self.catalog_tail.close),
                            ("models reader", self.models_tail.close),
                            ("site statistics reader", self.stats_tail.close),
                            ("site config reader", self.config_tail.close),
                            ("restorer", self.restorer.close)):
            try:
                close()  # closing the consumer revokes its partitions: their state closes
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the %s: %s", name, exc)
        for state in self.states.values():
            state.close()
        self.states.clear()
        # Producer.close() would abort the open transaction and flush, and so wait out an
        # outage: drop the producer instead, its successor's init_transactions aborts it.
        self.models.spill.close()
        if not self._producer_left_behind:  # else left alone with the call it is blocked in
            self.producer.purge()
        del self.producer

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
            origin.trace for origin, _ in inputs if origin.trace is not None], attributes={
                "recoloop.records": len(inputs), "recoloop.tick": tick})  # none for ticks
        committed = False
        try:
            committed = self._batch(inputs, tick, Staged(span=batch))
        finally:
            self.tracing.end(batch, None if committed else "aborted: the batch is redone")

    def _batch(self, inputs: list[tuple[Origin, int]], tick: bool, out: Staged) -> bool:
        """Handle the batch's inputs and commit what they caused; False if it was aborted."""
        first: dict[tuple[str, int], int] = {}  # where to go back to if the batch aborts
        after: dict[tuple[str, int], int] = {}
        for origin, _ in inputs:
            first.setdefault((origin.topic, origin.partition), origin.offset)
            after[(origin.topic, origin.partition)] = origin.offset + 1
        self.producer.begin_transaction()
        for partition, kinds in self._unread_kinds().items():
            self.agents.unread(self.states[partition], kinds)
        with self.tracing.child("recoloop.join", out.span):
            for origin, timestamp_ms in inputs:
                try:
                    self._handle(origin, timestamp_ms, out)
                    self._check_oversized(origin.partition)
                except Exception as exc:  # set this record aside and redo the batch
                    where = f"{origin.topic}[{origin.partition}]@{origin.offset}"
                    if isinstance(exc, RecordTooLarge):
                        log.warning("%s: %s; dead-lettering it", where, exc)
                        error = InvalidInput("too_large", str(exc))
                    else:  # a bug
                        log.exception("processing failed on %s", where)
                        error = InvalidInput("processing_error", repr(exc))
                    self._poisoned[(origin.topic, origin.partition, origin.offset)] = error
                    return self._abort(first)
            if tick:
                wall_ms = int(time.time() * 1000)
                for partition, state in self.states.items():
                    try:
                        self.agents.tick(partition, wall_ms, state, out)
                    except Exception:
                        log.exception("tick failed on partition %s", partition)
                        return self._abort(first)
        with self.tracing.child("recoloop.produce", out.span):
            return self._commit(out, first, after, tick)

    def _handle(self, origin: Origin, timestamp_ms: int, out: Staged) -> None:
        # Kept until a batch holding it commits: a batch may be redone more than once.
        error = self._poisoned.get((origin.topic, origin.partition, origin.offset))
        if error is not None:
            self.agents.failed(origin, error, out)
        elif origin.topic == self.topics.decisions:
            self.agents.decision(origin, out)
        elif origin.topic == self.topics.catalog:
            self.agents.catalog_record(origin, out)
        else:
            self.agents.join_input(origin, timestamp_ms, self.states[origin.partition], out)

    def _commit(self, out: Staged, first: dict[tuple[str, int], int],
                after: dict[tuple[str, int], int], tick: bool) -> bool:
        changelog_offsets: dict[int, int] = {}

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None and message.topic() == self.topics.changelog:
                origin, _ = received(message)
                changelog_offsets[origin.partition] = max(
                    origin.offset, changelog_offsets.get(origin.partition, -1))

        changes = {p: state.changes() for p, state in self.states.items()}
        if self._oversized_records(changes):
            return self._abort(first)
        model_changes = self.models.changes()
        stat_changes = self.site_stats.changes()
        try:
            for p, records in changes.items():
                for key, value in records:
                    self._produce(self.topics.changelog, value, key, partition=p,
                                  on_delivery=delivered)
            for site_id, raw in model_changes:
                self._produce(self.topics.models, raw, site_id.encode())
            for name, raw in stat_changes:
                self._produce(self.topics.site_stats, raw, name.encode())
            for topic, record_key, record_value, headers in out.records:
                self._produce(topic, record_value, record_key, headers)
            # Delivered before the offsets go in: send_offsets_to_transaction blocks while the
            # broker is unreachable (StuckCalls), so it had better start just after it answered.
            self._flush()
            if not self.consumer.memberid():
                # The group session timed out during the batch (librdkafka then rejoins as a
                # new member of our static instance and may be fenced as its own old self).
                raise Rebuild("membership_lost", "the consumer lost its group membership")
            # Offsets in every transaction, also one of ticks alone: the group coordinator
            # then refuses it from a worker whose partitions have moved on (a zombie).
            offsets = after or self._positions()
            # Not through self: a call left behind (StuckCalls) would keep this whole loop.
            producer, consumer = self.producer, self.consumer
            self._retrying("sending the batch's offsets", lambda timeout_s: (
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    consumer.consumer_group_metadata(), timeout_s)))
            self._retrying("committing the batch", self.producer.commit_transaction)
        except KafkaException as exc:
            if not exc.args[0].txn_requires_abort():
                raise  # not retriable, not abortable: run() rebuilds the clients
            log.warning("transaction aborted, the batch will be redone: %s", exc.args[0])
            return self._abort(first)
        for p, records in changes.items():
            if records:
                self.states[p].committed(records, changelog_offsets[p])
        self.models.committed(model_changes)
        self.site_stats.committed(stat_changes)
        self._oversized.clear()
        self._read_to.update(after)
        if tick:
            self._last_tick = time.monotonic()
        for where in [w for w in self._poisoned if w[2] < after.get(w[:2], -1)]:
            del self._poisoned[where]  # dead-lettered for good
        for count in out.counts:
            count()
        return True

    def _oversized_records(self, changes: dict[int, list[Record]]) -> bool:
        """Whether a state record is over the limit; if so the batch is redone watching it.

        Caps keep state small, so this is a last line of defence. Watched already, the key
        was made too large by a tick rather than an input: it is dropped, so that the
        partition goes on (logged, the only state ever given up)."""
        found = False
        for p, records in changes.items():
            for key, value in records:
                if len(key) + len(value or b"") <= MAX_RECORD_BYTES:
                    continue
                name = key.decode()
                if name in self._oversized.get(p, set()):
                    log.error("partition %s: state %r too large with no input to blame: "
                              "dropped", p, name)
                    self.states[p].delete(name)
                    changes[p] = self.states[p].changes()
                else:
                    log.warning("partition %s: state %r would be %d bytes: redoing the batch "
                                "to find the input", p, name, len(key) + len(value or b""))
                    self._oversized.setdefault(p, set()).add(name)
                    found = True
        return found

    def _check_oversized(self, partition: int) -> None:
        state = self.states.get(partition)
        for key in self._oversized.get(partition, ()):
            value = None if state is None else state.get(key)
            if value is not None:
                check_size(f"state {key!r}", key.encode(), encode_state(value))

    def _retrying(self, what: str, call: Callable[[float], None]) -> None:
        """``call(timeout_s)`` again while it fails with retriable errors (a timeout too: the
        transactional calls resume), for TIMEOUT_S in all; abortable errors go to the caller,
        fatal ones and a spent budget raise Rebuild, and so does a call that does not return
        (:class:`StuckCalls`)."""
        patience = Patience(what)
        while True:
            timeout_s = min(WAIT_LOG_EVERY_S, max(1.0, patience.remaining()))
            try:
                return self.stuck.run(what, call, timeout_s)
            except KafkaException as exc:
                raise_if_fatal(exc.args[0], what)
                if not exc.args[0].retriable():
                    raise
                patience.waiting(exc.args[0])
            except Rebuild as exc:
                if exc.reason == "stuck_call":
                    self._producer_left_behind = True
                raise
            time.sleep(RETRY_PAUSE_S)

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

    def _unread_kinds(self) -> dict[int, frozenset[str]]:
        """Per assigned partition, the input kinds with records on the broker not read yet:
        the end offset (the high watermark of the consumer's last fetch, or of its assignment)
        is past where it has read. Records of a transaction still open upstream count too:
        the watermark waits for them, until that producer commits or aborts."""
        kinds = self.topics.input_kinds
        unread: dict[int, set[str]] = {}
        try:
            positions = self.consumer.position([TopicPartition(topic, p) for topic in kinds
                                                for p in self.states])
            for tp in positions:
                where = (tp.topic, tp.partition)
                read_to = max(tp.offset, self._read_to.get(where, -1))
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                high = max(high, self._end_at_assign.get(where, -1))
                if read_to >= 0 and high > max(read_to, low):  # else not known: as read
                    unread.setdefault(tp.partition, set()).add(kinds[tp.topic])
        except KafkaException as exc:  # not known here: as read, the way it was before
            log.warning("reading the inputs' positions: %s", exc)
            return {}
        return {p: frozenset(k) for p, k in unread.items()}

    def _positions(self) -> dict[tuple[str, int], int]:
        """Where the consumer stands on each assigned partition (what it has processed)."""
        return {(tp.topic, tp.partition): tp.offset
                for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0}

    def _abort(self, first: dict[tuple[str, int], int]) -> bool:
        """Undo the batch: abort the transaction, forget what it changed in memory, and read
        its records again (False: not committed)."""
        self._retrying("aborting the batch", self.producer.abort_transaction)
        for state in self.states.values():
            state.discard()
        self.models.aborted()
        self.site_stats.aborted()
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        return False

    # -- the copies every worker keeps ----------------------------------------------------

    def _apply_catalog(self, message: Message) -> None:
        try:
            site_id, item_id, value = decode_catalog(message.key(), message.value())
        except InvalidInput:
            return  # the partition's owner dead-letters it (Agents.catalog_record)
        apply_record(self.catalog, site_id, item_id, value)

    def _apply_site_config(self, message: Message) -> None:
        """A site's settings and rules: applied at once, or refused (the site keeps its own)."""
        site_id = (message.key() or b"").decode("utf-8", "replace")
        problem = apply_site_config(self.sites, message.key(), message.value())
        if problem is not None:
            log.error("site config of %r at offset %d refused, the previous one stays: %s",
                      site_id, message.offset(), problem)
            self._count_undecodable("site_config")
            return
        self.models.reconfigured(site_id)

    def _apply_model(self, message: Message) -> None:
        key, value = message.key(), message.value()
        try:
            site_id = None if key is None else key.decode("utf-8")
        except UnicodeDecodeError:
            site_id = None
        if value is None:
            return  # a tombstone: nothing to learn from
        if site_id is None:
            log.warning("models topic: skipped a record without a UTF-8 site key")
            self._count_undecodable("models")
            return
        self.models.offer(site_id, value)

    def _apply_site_stat(self, message: Message) -> None:
        key, value = message.key(), message.value()
        if value is None:
            return  # a tombstone: nothing to learn from
        try:
            name = None if key is None else key.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        if name is None:
            log.warning("site statistics topic: skipped a record without a UTF-8 key")
            self._count_undecodable("site_stats")
            return
        self.site_stats.offer(name, value)

    # -- partitions coming and going ------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        """Bring each assigned partition's state up to the changelog's committed end (a
        clean restart reads nothing, a crash reads the last batches, a new data directory
        reads it all), and the models up to date before learning any of their sites."""
        self._ready = False
        inputs = [TopicPartition(tp.topic, tp.partition) for tp in assigned
                  if tp.topic in self.topics.join_inputs]
        mine = {tp.partition for tp in inputs}
        started = time.monotonic()
        if inputs:
            self._read_to.update(self._committed(consumer, inputs))
            self._end_at_assign.update(self._end_offsets(consumer, inputs))
        for p in sorted(mine):
            state = self.states.get(p)
            if state is None:
                state = self.states[p] = PartitionState(
                    self.state_dir / str(p), on_undecodable=self._count_undecodable)
            state.discard()  # another worker may have changed it since
            self._restore(state, p)
        self.models_tail.catch_up(self._beat)
        self.stats_tail.catch_up(self._beat)
        log.info("assigned partitions %s, state restored in %.1f s", sorted(mine),
                 time.monotonic() - started)
        self._ready = self.became_ready = True

    def _committed(self, consumer: Consumer, inputs: list[TopicPartition]
                   ) -> dict[tuple[str, int], int]:
        """The group's committed offset of each input partition (0 where it has none: it is
        read from the earliest); none if the coordinator does not answer in time."""
        try:
            committed = consumer.committed(inputs, TIMEOUT_S)
        except KafkaException as exc:
            log.warning("fetching the committed offsets of %s: %s", inputs, exc)
            return {}
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed
                if tp.error is None}

    def _end_offsets(self, consumer: Consumer, inputs: list[TopicPartition]
                     ) -> dict[tuple[str, int], int]:
        """Each input partition's end offset now; after the first the broker does not say
        (it may be away: one wait, not one per partition), none of the rest."""
        ends = {}
        for tp in inputs:
            self._beat()
            try:
                ends[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(
                    tp, TIMEOUT_S, False)[1]
            except KafkaException as exc:
                log.warning("fetching the end offset of %s: %s; the consumer's fetches will "
                            "say", tp, exc)
                break
        return ends

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        """Called between transactions: drop the partitions' state so nothing (not even a
        tick) touches them while another worker may own them."""
        self._ready = False
        for tp in revoked:
            self._read_to.pop((tp.topic, tp.partition), None)
            self._end_at_assign.pop((tp.topic, tp.partition), None)
        for p in {tp.partition for tp in revoked if tp.topic in self.topics.join_inputs}:
            state = self.states.pop(p, None)
            if state is not None:
                state.close()
        self.metrics.forget_assignment()

    def _count_undecodable(self, source: str) -> None:
        self.metrics.records_undecodable.labels(source).inc()

    def _restore(self, state: PartitionState, partition: int) -> None:
        tp = TopicPartition(self.topics.changelog, partition)
        low, high = self.restorer.get_watermark_offsets(tp, TIMEOUT_S, False)
        plan = restore_plan(state.changelog_offset, state.written_at_ms, low, high,
                            int(time.time() * 1000), LOCAL_STATE_MAX_AGE_MS)
        if plan.rebuild:
            log.warning("partition %s: local state at %s, written at %s, changelog %s..%s: "
                        "rebuilding", partition, state.changelog_offset, state.written_at_ms,
                        low, high)
            state.wipe()
        if plan.read_from is None:
            return
        start = plan.read_from
        self.restorer.assign([TopicPartition(self.topics.changelog, partition, start)])
        patience = Patience(f"restoring partition {partition} from the changelog")
        last = start
        try:
            while (position := self.restorer.position([tp])[0].offset) < high:
                if position != last and position >= 0:  # restoring is progress, not a hang
                    last = position
                    self._beat()
                    patience.progressed()
                else:
                    patience.waiting(f"at offset {position} of {high}")
                restored = self._apply_changelog(state, self.restorer.consume(RESTORE_BATCH, 0.2))
                self.metrics.state_restored_records.inc(restored)
        finally:
            self.restorer.unassign()

    @staticmethod
    def _apply_changelog(state: PartitionState, messages: Iterable[Message]) -> int:
        records: list[Record] = []
        last = None
        for message in messages:
            if message.error():
                raise_if_fatal(message.error(), "restoring")
                log.warning("restoring: %s", message.error())
                continue
            origin, _ = received(message)
            if origin.key is not None:
                records.append((origin.key, origin.value))
                last = origin.offset
        return 0 if last is None else state.restore(records, last)
