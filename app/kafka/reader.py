"""One topic read into memory: the worker's copies (catalog, models, site statistics, site
configs), the rank service's feeds, the CLI's and the evaluation's reads, and test helpers.

A :class:`TopicReader` assigns itself every partition of its topic (no consumer group to
join, no offsets to commit: any number of readers read the same records), reads committed
records only (its config comes from :func:`app.kafka.clients.committed_consumer`), and
starts either at the beginning or at a point in time. It knows how far it has read in two
ways: :attr:`~TopicReader.caught_up` once it reached the end of every partition once (the
consumer's partition-EOF events), and :meth:`~TopicReader.read_to` the end offsets (the last
stable offsets) fetched at a given moment, which works again after it caught up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

log = logging.getLogger(__name__)

OnRecord = Callable[[Message], None]
OnError = Callable[[KafkaError], None]
TIMEOUT_S = 30.0  # a metadata or offsets request's timeout, unless the caller gives one
LOOKUP_TIMEOUT_S = 10.0  # looking up the offsets of a point in time
MAX_RECORDS = 5_000  # records handed over per poll at most


class TopicReader:
    """Reads every partition of ``topic`` and hands each committed record to ``on_record``,
    in partition order (no order across partitions). Errors other than a partition's end go
    to ``on_error`` (a warning is logged when there is none); ``on_end(partition)`` hears of
    each end reached; ``new_consumer`` builds its consumer from a config. Not thread-safe:
    one thread polls it."""

    def __init__(self, config: Mapping[str, Any], topic: str, on_record: OnRecord,
                 on_error: OnError | None = None,
                 on_end: Callable[[int], None] | None = None,
                 new_consumer: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
        self.consumer = new_consumer({**config, "enable.partition.eof": True})
        self.topic = topic
        self._on_record = on_record
        self._on_error = on_error or self._log_error
        self._on_end = on_end
        self.partitions: list[TopicPartition] = []
        self.assigned = False
        self._unfinished: set[int] = set()

    @property
    def caught_up(self) -> bool:
        """Assigned, and every partition's end was reached at least once."""
        return self.assigned and not self._unfinished

    def assign(self, lookback_ms: int | None = None, timeout_s: float = TIMEOUT_S) -> bool:
        """Assign every partition, from its beginning, or from the first record of the last
        ``lookback_ms`` (a partition with none starts at its end). False, with nothing
        assigned, when the topic has no partitions (it does not exist). Client errors raise
        ``KafkaException``."""
        metadata = self.consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        if metadata is None or not metadata.partitions:
            return False
        numbers = sorted(metadata.partitions)
        if lookback_ms is None:
            start = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in numbers]
        else:
            since = int(time.time() * 1000) - lookback_ms
            start = self.consumer.offsets_for_times(
                [TopicPartition(self.topic, p, since) for p in numbers], timeout=LOOKUP_TIMEOUT_S)
        self.consumer.assign(start)
        self.partitions = [TopicPartition(self.topic, p) for p in numbers]
        self._unfinished = set(numbers)
        self.assigned = True
        return True

    def poll(self, timeout_s: float = 0.0, max_records: int = MAX_RECORDS) -> int:
        """Hand over what has arrived, up to ``max_records``; when nothing has, wait up to
        ``timeout_s`` for the first message only. Returns how many messages came (records,
        partition ends and errors)."""
        messages = self.consumer.consume(max_records, 0)
        if not messages and timeout_s > 0:
            first = self.consumer.poll(timeout_s)
            if first is not None:
                messages = [first, *self.consumer.consume(max_records - 1, 0)]
        for message in messages:
            error = message.error()
            if error is None:
                self._on_record(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                partition = message.partition() or 0
                self._unfinished.discard(partition)
                if self._on_end is not None:
                    self._on_end(partition)
            else:
                self._on_error(error)
        return len(messages)

    def end_offsets(self, timeout_s: float = TIMEOUT_S) -> dict[int, int]:
        """Each assigned partition's end offset now, asked of the broker: for a
        read_committed consumer the last stable offset."""
        return {tp.partition: self.consumer.get_watermark_offsets(tp, timeout_s, False)[1]
                for tp in self.partitions}

    def read_to(self, ends: Mapping[int, int], progress: Callable[[], None] = lambda: None,
                stalled: Callable[[str], None] = lambda why: None,
                poll_s: float = 0.2) -> None:
        """Read until every partition's position is at its offset in ``ends`` (an empty
        partition, end 0, counts as read). ``progress()`` is called whenever the positions
        moved, ``stalled(why)`` whenever they did not; either may raise to give up."""
        last: dict[int, int] = {}
        while True:
            positions = {tp.partition: tp.offset for tp in self.consumer.position(self.partitions)}
            if all(positions[p] >= end for p, end in ends.items() if end > 0):
                return
            if positions != last:
                last = positions
                progress()
            else:
                stalled(f"at {positions}, end {dict(ends)}")
            self.poll(poll_s)

    def catch_up(self, progress: Callable[[], None] = lambda: None,
                 stalled: Callable[[str], None] = lambda why: None) -> None:
        """Read up to every partition's end as of now (:meth:`end_offsets`, :meth:`read_to`)."""
        self.read_to(self.end_offsets(), progress, stalled)

    def close(self) -> None:
        self.consumer.close()

    def _log_error(self, error: KafkaError) -> None:
        log.warning("reading %s: %s", self.topic, error)
