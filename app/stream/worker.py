"""``recoloop worker``: check the topic layout, then run the exactly-once loop until stopped
(SIGTERM or Ctrl-C finish the current batch first).

The loop is the exactly-once runtime (:mod:`app.stream.runtime`) running the recoloop
application (:mod:`app.stream.application`). When its Kafka clients cannot go on
(:class:`app.stream.runtime.calls.Rebuild`: a fatal error, a lost group membership, a broker
unreachable past a step's time budget, a transactional call that did not return), the worker
builds a new runtime and application in the same process after a bounded backoff, with a log
line and ``recoloop_worker_restarts_total{reason}`` each time. Calls left behind end by
themselves once the broker answers again; only when more than :data:`MAX_STUCK_CALLS` of them
are still blocked at once (their clients can be freed by a new process alone) does the worker
exit, with status :data:`EXIT_STUCK`, for a supervisor to restart it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from app.contract.topics import Topics
from app.kafka.topic_admin import (
    TopicLayoutError,
    check_copartitioned,
    ensure_internal_topics,
    internal_topics,
)
from app.observability import health
from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing, TracingError
from app.settings import Settings
from app.stream.application import recoloop
from app.stream.runtime.calls import Rebuild, StuckCalls
from app.stream.runtime.runtime import Runtime

log = logging.getLogger("recoloop")

BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # before rebuilds in a row that never got ready; then 8 s
# Calls left behind (StuckCalls) still blocked at once, each holding a producer, before the
# worker gives up on this process: each normally returns once the broker is back.
MAX_STUCK_CALLS = 3
EXIT_STUCK = 3


class Supervisor:
    """Runs the loop, and builds a new one after its clients failed; the health server reads
    the current loop's status through it."""

    def __init__(self, build: Callable[[float | None], Runtime], metrics: Metrics,
                 stuck: StuckCalls) -> None:
        self.build = build
        self.metrics = metrics
        self.stuck = stuck  # the one every loop it builds runs its transactional calls with
        self.runtime = build(None)
        self._stopped = False

    def is_live(self) -> bool:
        return not self._stopped and time.monotonic() - self.runtime.heartbeat < STUCK_AFTER_S

    def is_ready(self) -> bool:
        return self.runtime.is_ready()

    def assigned_partitions(self) -> list[int]:
        return self.runtime.assigned_partitions()

    def run(self, stop: threading.Event) -> int:
        """Until ``stop`` is set (0), or until too many calls left behind are blocked
        (:data:`EXIT_STUCK`)."""
        failures = 0  # rebuilds in a row that did not get the loop ready
        try:
            while True:
                runtime = self.runtime
                try:
                    runtime.run(stop)
                    return 0
                except Rebuild as exc:
                    failures = 0 if runtime.became_ready else failures + 1
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    self.metrics.worker_restarts.labels(exc.reason).inc()
                    log.warning("Kafka clients failed (%s); closed them and the partition "
                                "state, building them anew in %.0f s", exc, delay)
                blocked = self.stuck.blocked()
                if len(blocked) > MAX_STUCK_CALLS:
                    log.critical("%d Kafka calls left behind are still blocked (%s); exiting "
                                 "with status %d so that a supervisor restarts the worker",
                                 len(blocked), ", ".join(blocked), EXIT_STUCK)
                    return EXIT_STUCK
                if stop.wait(delay):
                    return 0
                self.runtime = self.build(runtime.heartbeat)
        finally:
            self._stopped = True


class StoppedStarting(Exception):
    """A stop signal arrived before the worker's loop was built."""


def _stop_starting(signum: int, frame: object) -> None:
    raise StoppedStarting


def prepare(settings: Settings) -> int:
    """Check the topic layout and create the worker's own topics: the partition count.
    :class:`TopicLayoutError` when the layout is wrong."""
    counts = check_copartitioned(settings)
    partitions = next(iter(counts.values()))
    ensure_internal_topics(settings, internal_topics(Topics.of(settings), partitions))
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    return partitions


def supervisor(settings: Settings, partitions: int, metrics: Metrics,
               tracing: Tracing) -> Supervisor:
    """The loop of one worker process and what it runs on (also built by tests in-process)."""
    stuck = StuckCalls()

    def build(heartbeat: float | None) -> Runtime:
        return Runtime(settings, recoloop(settings, partitions, metrics, tracing), metrics,
                       heartbeat, stuck, tracing)

    return Supervisor(build, metrics, stuck)


def run(settings: Settings, stop: threading.Event) -> int:
    """Run until ``stop`` is set (by SIGTERM or SIGINT, see app.cli); 0 after a clean stop."""
    logging.basicConfig(level=settings.worker.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before the loop runs there is nothing to commit: a stop signal ends the start at once,
    # even while prepare() waits for a broker that does not answer.
    signals = (signal.SIGTERM, signal.SIGINT)
    handlers = {signum: signal.signal(signum, _stop_starting) for signum in signals}
    try:
        if stop.is_set():
            raise StoppedStarting
        tracing = Tracing.from_env("recoloop-worker")
        partitions = prepare(settings)
    except StoppedStarting:
        log.info("worker stopped before it started")
        return 0
    except (TopicLayoutError, TracingError) as exc:
        print(f"recoloop worker: {exc}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    metrics = Metrics()
    metrics.serve(settings.worker.metrics_port, settings.worker.bind_host)
    loop = supervisor(settings, partitions, metrics, tracing)
    server = health.serve(loop, settings.worker.bind_host, settings.worker.web_port, metrics)
    log.info("worker %s: partitions=%d metrics=:%d web=:%d tracing=%s", settings.instance_id,
             partitions, settings.worker.metrics_port, settings.worker.web_port,
             "on" if tracing.enabled else "off")
    try:
        status = loop.run(stop)
    finally:
        server.shutdown()
        tracing.shutdown()
    if status == EXIT_STUCK:
        # Not a normal exit: the threads still blocked in librdkafka hold its clients.
        logging.shutdown()
        os._exit(EXIT_STUCK)
    log.info("worker stopped")
    return 0
