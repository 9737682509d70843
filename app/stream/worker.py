"""``recoloop worker``: check the topic layout, then run the exactly-once loop until stopped
(SIGTERM or Ctrl-C finish the current batch first).

When the loop's Kafka clients cannot go on (:class:`app.stream.loop.Rebuild`: a fatal error, a
lost group membership, a broker unreachable past a step's time budget), the worker builds a
new loop in the same process after a bounded backoff, with a log line and
``recoloop_worker_restarts_total{reason}`` each time. Only a Kafka call that never returns
(seen in librdkafka after broker restarts) makes it exit, with status :data:`EXIT_STUCK`, for
a supervisor to restart it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.store import Store
from app.observability import health
from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import Metrics
from app.settings import Settings
from app.stream.agents import Agents
from app.stream.bandits import BanditModels
from app.stream.channels import Channels
from app.stream.loop import TIMEOUT_S, Rebuild, Runtime
from app.stream.site_stats import SiteStatistics
from app.stream.topic_admin import TopicLayoutError, check_copartitioned, ensure_internal_topics

log = logging.getLogger("recoloop")

BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # before rebuilds in a row that never got ready; then 8 s
STUCK_CALL_S = TIMEOUT_S  # a Kafka call given 5 s that has not returned by then never will
EXIT_STUCK = 3


class Supervisor:
    """Runs the loop, and builds a new one after its clients failed; the health server reads
    the current loop's status through it."""

    def __init__(self, build: Callable[[float | None], Runtime], metrics: Metrics) -> None:
        self.build = build
        self.metrics = metrics
        self.runtime = build(None)
        self._stopped = False

    def is_live(self) -> bool:
        return not self._stopped and time.monotonic() - self.runtime.heartbeat < STUCK_AFTER_S

    def is_ready(self) -> bool:
        return self.runtime.is_ready()

    def assigned_partitions(self) -> list[int]:
        return self.runtime.assigned_partitions()

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._watch, args=(stop,), name="watchdog", daemon=True).start()
        failures = 0  # rebuilds in a row that did not get the loop ready
        try:
            while True:
                runtime = self.runtime
                try:
                    runtime.run(stop)
                    return
                except Rebuild as exc:
                    failures = 0 if runtime.became_ready else failures + 1
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    self.metrics.worker_restarts.labels(exc.reason).inc()
                    log.warning("Kafka clients failed (%s); closed them and the partition "
                                "state, building them anew in %.0f s", exc, delay)
                if stop.wait(delay):
                    return
                self.runtime = self.build(runtime.heartbeat)
        finally:
            self._stopped = True

    def _watch(self, stop: threading.Event) -> None:
        """Exit when a Kafka call hangs: nothing in this process can end it."""
        while not stop.wait(1.0):
            stuck = self.runtime.stuck_call()
            if stuck is not None and stuck[1] > STUCK_CALL_S:
                log.critical("worker stuck in a Kafka call (%s) for %.0f s; exiting with "
                             "status %d so that a supervisor restarts it", *stuck, EXIT_STUCK)
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(EXIT_STUCK)


def run(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channels = Channels.of(settings)
    try:
        counts = check_copartitioned(settings)
        partitions = next(iter(counts.values()))
        ensure_internal_topics(settings, channels.internal_topics(partitions))
    except TopicLayoutError as exc:
        print(f"recoloop worker: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    metrics.serve(settings.metrics_port, settings.bind_host)

    def agents_for(models: BanditModels, catalog: Store, site_stats: SiteStatistics) -> Agents:
        engine = Engine(settings, models, StoreCatalog(catalog), site_stats)
        return Agents(settings, channels, engine, models, site_stats, metrics, partitions)

    supervisor = Supervisor(lambda heartbeat: Runtime(settings, partitions, metrics, agents_for,
                                                      heartbeat), metrics)
    server = health.serve(supervisor, settings.bind_host, settings.web_port, metrics)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("worker %s: partitions=%d metrics=:%d web=:%d", settings.instance_id, partitions,
             settings.metrics_port, settings.web_port)
    try:
        supervisor.run(stop)
    finally:
        server.shutdown()
    log.info("worker stopped")
    return 0
