"""Topics the rank service reads into memory, each on a thread of its own.

A feed is a :class:`~app.kafka.reader.TopicReader` (every partition assigned, committed
records only, no group, no commits: a replica is stateless and any number of them read the
same records) that starts either at the beginning (the compacted keys topic) or at a point
in time (``reco.rankings``: only the last ``lookback_ms`` can matter, so a restart reads
minutes of records, not a day's). It is caught up once it reached the end of every
partition once; while the broker is away it keeps what it has and says so.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, Message

from app.kafka import clients
from app.kafka.reader import OnRecord, TopicReader
from app.settings import Settings

log = logging.getLogger(__name__)

# Errors that mean "the broker cannot be reached right now".
_AWAY = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}
ASSIGN_TIMEOUT_S = 5.0


class TopicFeed:
    def __init__(self, settings: Settings, topic: str, on_record: OnRecord,
                 lookback_ms: int | None = None) -> None:
        self.topic = topic
        self._on_record = on_record
        self._lookback_ms = lookback_ms
        self._reader = TopicReader({
            **clients.committed_consumer(settings, f"{settings.app_id}-serve"),
            "error_cb": self._on_error,
            # A replica holds only what it serves: keep librdkafka's prefetch small.
            "queued.max.messages.kbytes": 16_384},
            topic, self._record, on_error=self._on_message_error, on_end=self._at_end)
        self.broker_away = False
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{topic}", daemon=True)

    @property
    def caught_up(self) -> bool:
        return self._reader.caught_up

    def start(self) -> TopicFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._reader.close()

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _AWAY:
            self.broker_away = True
        log.warning("%s feed: %s", self.topic, error)

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() in _AWAY:
            self.broker_away = True
        else:
            log.warning("%s feed: %s", self.topic, error)

    def _at_end(self, _partition: int) -> None:
        self.broker_away = False

    def _record(self, message: Message) -> None:
        self.broker_away = False
        self.records += 1
        try:
            self._on_record(message)
        except Exception:  # noqa: BLE001 (one bad record must not stop the feed)
            log.exception("%s feed: a record at offset %s could not be read",
                          self.topic, message.offset())

    def _check_broker(self) -> None:
        """Whether the broker answers again (a quiet topic brings no record to say so)."""
        try:
            self._reader.consumer.list_topics(self.topic, timeout=1.0)
        except Exception:  # noqa: BLE001 (still away)
            return
        self.broker_away = False

    def _assign(self) -> bool:
        try:
            if self._reader.assign(self._lookback_ms, ASSIGN_TIMEOUT_S):
                return True
            log.warning("%s feed: topic not there yet", self.topic)
        except Exception as exc:  # noqa: BLE001 (any client error: try again shortly)
            log.warning("%s feed: cannot start reading yet: %s", self.topic, exc)
        return False

    def _run(self) -> None:
        while not self._stop.is_set() and not self._reader.assigned:
            if not self._assign():
                self._stop.wait(1.0)
        checked_at = 0.0
        while not self._stop.is_set():
            if self.broker_away and time.monotonic() - checked_at > 1.0:
                checked_at = time.monotonic()
                self._check_broker()
            self._reader.poll(0.2)
