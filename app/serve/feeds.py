"""Topics the rank service reads into memory, each on a thread of its own.

A feed assigns itself every partition of its topic (no consumer group to join, no offsets
to commit: a replica is stateless and any number of them read the same records), reads
committed records only, and starts either at the beginning (the compacted keys topic) or at
a point in time (``reco.rankings``: only the last ``lookback_ms`` can matter, so a restart
reads minutes of records, not a day's). It is caught up once it reached the end of every
partition once; while the broker is away it keeps what it has and says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from app.kafka import clients
from app.settings import Settings

log = logging.getLogger(__name__)

OnRecord = Callable[[Message], None]
# Errors that mean "the broker cannot be reached right now".
_AWAY = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}


class TopicFeed:
    def __init__(self, settings: Settings, topic: str, on_record: OnRecord,
                 lookback_ms: int | None = None) -> None:
        self.topic = topic
        self._on_record = on_record
        self._lookback_ms = lookback_ms
        self._consumer = Consumer({
            **clients.committed_consumer(settings, f"{settings.app_id}-serve"),
            "enable.partition.eof": True, "error_cb": self._on_error,
            # A replica holds only what it serves: keep librdkafka's prefetch small.
            "queued.max.messages.kbytes": 16_384})
        self._unfinished: set[int] = set()
        self._assigned = False
        self.broker_away = False
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{topic}", daemon=True)

    @property
    def caught_up(self) -> bool:
        return self._assigned and not self._unfinished

    def start(self) -> TopicFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _AWAY:
            self.broker_away = True
        log.warning("%s feed: %s", self.topic, error)

    def _check_broker(self) -> None:
        """Whether the broker answers again (a quiet topic brings no record to say so)."""
        try:
            self._consumer.list_topics(self.topic, timeout=1.0)
        except Exception:  # noqa: BLE001 (still away)
            return
        self.broker_away = False

    def _assign(self) -> bool:
        try:
            return self._try_assign()
        except Exception as exc:  # noqa: BLE001 (any client error: try again shortly)
            log.warning("%s feed: cannot start reading yet: %s", self.topic, exc)
            return False

    def _try_assign(self) -> bool:
        metadata = self._consumer.list_topics(self.topic, timeout=5)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            log.warning("%s feed: topic not there yet", self.topic)
            return False
        partitions = sorted(topic.partitions)
        if self._lookback_ms is None:
            start = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        else:
            since = int(time.time() * 1000) - self._lookback_ms
            start = self._consumer.offsets_for_times(
                [TopicPartition(self.topic, p, since) for p in partitions], timeout=10)
        self._consumer.assign(start)
        self._unfinished = set(partitions)
        self._assigned = True
        return True

    def _run(self) -> None:
        while not self._stop.is_set() and not self._assigned:
            if not self._assign():
                self._stop.wait(1.0)
        checked_at = 0.0
        while not self._stop.is_set():
            if self.broker_away and time.monotonic() - checked_at > 1.0:
                checked_at = time.monotonic()
                self._check_broker()
            message = self._consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._unfinished.discard(message.partition() or 0)
                    self.broker_away = False
                elif error.code() in _AWAY:
                    self.broker_away = True
                else:
                    log.warning("%s feed: %s", self.topic, error)
                continue
            self.broker_away = False
            self.records += 1
            try:
                self._on_record(message)
            except Exception:  # noqa: BLE001 (one bad record must not stop the feed)
                log.exception("%s feed: a record at offset %s could not be read",
                              self.topic, message.offset())
