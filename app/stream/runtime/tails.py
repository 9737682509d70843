"""The replicas' readers: every partition of a replica's topic from its start, read with
:class:`app.kafka.reader.TopicReader`, each record handed to the replica."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from app.kafka.reader import TopicReader
from app.stream.runtime.calls import TIMEOUT_S, Patience, raise_if_fatal
from app.stream.runtime.kafka import received
from app.stream.runtime.protocol import Replica

log = logging.getLogger(__name__)

RESTORE_BATCH = 5_000  # records read per poll at most (replicas, the changelog)


class Tail:
    """A replica's topic, read into it: fatal errors and waits without progress raise
    :class:`app.stream.runtime.calls.Rebuild`."""

    def __init__(self, config: dict[str, Any], replica: Replica,
                 new_consumer: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
        self.replica = replica
        self.topic = replica.topic
        self.reader = TopicReader(config, replica.topic, self._apply, on_error=self._error,
                                  new_consumer=new_consumer)

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

    def _apply(self, message: Message) -> None:
        self.replica.apply(received(message))

    def _error(self, error: KafkaError) -> None:
        raise_if_fatal(error, f"reading {self.topic}")
        log.warning("reading %s: %s", self.topic, error)
