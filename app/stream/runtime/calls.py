"""Every wait on Kafka is bounded: a fatal client error, a wait without progress past its
budget and a transactional call that does not return raise :class:`Rebuild`, and the worker
builds its clients anew.

librdkafka's ``send_offsets_to_transaction`` ignores its timeout while the broker is
unreachable: it returns only once the broker answers again. Every transactional call
therefore runs in a thread of its own (:class:`StuckCalls`); one that has not returned after
:data:`STUCK_CALL_S` is left to finish by itself with its producer, and the runtime is
rebuilt with a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException

from app.observability.metrics import RESTART_REASONS

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0  # a Kafka call's timeout, and the budget of a wait or a retry loop
RETRY_PAUSE_S = 0.5
WAIT_LOG_EVERY_S = 5.0  # also the slice of a long wait in librdkafka: its calls resume
# A transactional call given at most 5 s that has not returned by then is stuck in librdkafka
# (send_offsets_to_transaction while the broker is unreachable): it is left behind.
STUCK_CALL_S = TIMEOUT_S


class Rebuild(Exception):
    """These Kafka clients cannot go on: close them and the partition state and build the
    runtime anew. ``reason`` is one of :data:`RESTART_REASONS` (a metric label)."""

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
    client: it never recovers, however long the runtime waits."""
    if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
        raise Rebuild("fatal", f"{where}: {error}")


class StuckCalls:
    """Runs each transactional call in a thread of its own and waits for it at most
    :data:`STUCK_CALL_S`. A call still running then is left behind, holding its producer (the
    next runtime's producer, with the same transactional id, fences it, so its transaction
    never commits), and :class:`Rebuild` is raised; the call ends by itself, in its thread,
    once the broker answers again. Shared by every runtime a worker builds, so that the calls
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
            except BaseException as exc:  # handed to the waiting runtime
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


def retrying(stuck: StuckCalls, what: str, call: Callable[[float], None]) -> None:
    """``call(timeout_s)`` again while it fails with retriable errors (a timeout too: the
    transactional calls resume), for TIMEOUT_S in all; abortable errors go to the caller,
    fatal ones and a spent budget raise Rebuild, and so does a call that does not return
    (:class:`StuckCalls`)."""
    patience = Patience(what)
    while True:
        timeout_s = min(WAIT_LOG_EVERY_S, max(1.0, patience.remaining()))
        try:
            return stuck.run(what, call, timeout_s)
        except KafkaException as exc:
            raise_if_fatal(exc.args[0], what)
            if not exc.args[0].retriable():
                raise
            patience.waiting(exc.args[0])
        time.sleep(RETRY_PAUSE_S)
