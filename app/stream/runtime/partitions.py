"""The assigned partitions: each one's store, brought up to its changelog's committed end on
assignment and closed on revocation, and how far each stateful input partition is read (its
backlog)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from app.kafka.topic_admin import LOCAL_STATE_MAX_AGE_MS
from app.observability.metrics import Metrics
from app.stream.runtime.calls import TIMEOUT_S, Patience, raise_if_fatal
from app.stream.runtime.kafka import received
from app.stream.runtime.protocol import Application
from app.stream.runtime.store import ChangelogStore, Record, restore_plan
from app.stream.runtime.tails import RESTORE_BATCH

log = logging.getLogger(__name__)

Where = tuple[str, int]  # (topic, partition)


class Partitions:
    """The stores of the partitions assigned, by partition number."""

    def __init__(self, app: Application, restorer: Consumer, state_dir: Path,
                 metrics: Metrics, beat: Callable[[], None]) -> None:
        self.app = app
        self.restorer = restorer
        self.state_dir = state_dir
        self.metrics = metrics
        self.beat = beat  # restoring is progress, for /health
        self.states: dict[int, ChangelogStore] = {}
        # Per assigned stateful partition: how far it is known to be read (its committed
        # offset at assignment, then each batch's: the consumer's position is unset until it
        # reads one), and its end offset at assignment (before the consumer's first fetch).
        self._read_to: dict[Where, int] = {}
        self._end_at_assign: dict[Where, int] = {}

    def assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> list[int]:
        """Bring each assigned partition's store up to the changelog's committed end (a clean
        restart reads nothing, a crash reads the last batches, a new data directory reads it
        all); the partition numbers."""
        inputs = [TopicPartition(tp.topic, tp.partition) for tp in assigned
                  if tp.topic in self.app.stateful]
        mine = {tp.partition for tp in inputs}
        if inputs:
            self._read_to.update(self._committed(consumer, inputs))
            self._end_at_assign.update(self._end_offsets(consumer, inputs))
        for p in sorted(mine):
            state = self.states.get(p)
            if state is None:
                state = self.states[p] = ChangelogStore(
                    self.state_dir / str(p), self.app.codec, on_undecodable=self.undecodable)
            state.discard()  # another worker may have changed it since
            self._restore(state, p)
        return sorted(mine)

    def revoke(self, revoked: list[TopicPartition]) -> None:
        """Close the partitions' stores so nothing (not even a tick) touches them while
        another worker may own them."""
        for tp in revoked:
            self._read_to.pop((tp.topic, tp.partition), None)
            self._end_at_assign.pop((tp.topic, tp.partition), None)
        for p in {tp.partition for tp in revoked if tp.topic in self.app.stateful}:
            state = self.states.pop(p, None)
            if state is not None:
                state.close()

    def read(self, after: dict[Where, int]) -> None:
        """A batch committed: the partitions are read up to ``after``."""
        self._read_to.update(after)

    def close(self) -> None:
        for state in self.states.values():
            state.close()
        self.states.clear()

    def undecodable(self, source: str) -> None:
        self.metrics.records_undecodable.labels(source).inc()

    def unread(self, consumer: Consumer) -> dict[int, frozenset[str]]:
        """Per assigned partition, the stateful topics with records on the broker not read
        yet: the end offset (the high watermark of the consumer's last fetch, or of its
        assignment) is past where it has read. Records of a transaction still open upstream
        count too: the watermark waits for them, until that producer commits or aborts."""
        unread: dict[int, set[str]] = {}
        try:
            positions = consumer.position([TopicPartition(topic, p) for topic in self.app.stateful
                                           for p in self.states])
            for tp in positions:
                where = (tp.topic, tp.partition)
                read_to = max(tp.offset, self._read_to.get(where, -1))
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                high = max(high, self._end_at_assign.get(where, -1))
                if read_to >= 0 and high > max(read_to, low):  # else not known: as read
                    unread.setdefault(tp.partition, set()).add(tp.topic)
        except KafkaException as exc:  # not known here: as read
            log.warning("reading the inputs' positions: %s", exc)
            return {}
        return {p: frozenset(topics) for p, topics in unread.items()}

    def _committed(self, consumer: Consumer, inputs: list[TopicPartition]) -> dict[Where, int]:
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
                     ) -> dict[Where, int]:
        """Each input partition's end offset now; after the first the broker does not say
        (it may be away: one wait, not one per partition), none of the rest."""
        ends = {}
        for tp in inputs:
            self.beat()
            try:
                ends[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(
                    tp, TIMEOUT_S, False)[1]
            except KafkaException as exc:
                log.warning("fetching the end offset of %s: %s; the consumer's fetches will "
                            "say", tp, exc)
                break
        return ends

    def _restore(self, state: ChangelogStore, partition: int) -> None:
        tp = TopicPartition(self.app.changelog, partition)
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
        self.restorer.assign([TopicPartition(self.app.changelog, partition, start)])
        patience = Patience(f"restoring partition {partition} from the changelog")
        last = start
        try:
            while (position := self.restorer.position([tp])[0].offset) < high:
                if position != last and position >= 0:  # restoring is progress, not a hang
                    last = position
                    self.beat()
                    patience.progressed()
                else:
                    patience.waiting(f"at offset {position} of {high}")
                restored = _apply_changelog(state, self.restorer.consume(RESTORE_BATCH, 0.2))
                self.metrics.state_restored_records.inc(restored)
        finally:
            self.restorer.unassign()


def _apply_changelog(state: ChangelogStore, messages: Iterable[Message]) -> int:
    records: list[Record] = []
    last = None
    for message in messages:
        if message.error():
            raise_if_fatal(message.error(), "restoring")
            log.warning("restoring: %s", message.error())
            continue
        record = received(message)
        if record.key is not None:
            records.append((record.key, record.value))
            last = record.offset
    return 0 if last is None else state.restore(records, last)
