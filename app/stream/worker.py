"""``recoloop worker``: check the topic layout, then run the exactly-once loop until stopped
(SIGTERM or Ctrl-C finish the current batch first)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.store import Store
from app.observability import health
from app.observability.metrics import Metrics
from app.settings import Settings
from app.stream.agents import Agents
from app.stream.bandits import BanditModels
from app.stream.channels import Channels
from app.stream.loop import Runtime
from app.stream.topic_admin import TopicLayoutError, check_copartitioned, ensure_internal_topics

log = logging.getLogger("recoloop")


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

    def agents_for(models: BanditModels, catalog: Store) -> Agents:
        engine = Engine(settings, models, StoreCatalog(catalog))
        return Agents(settings, channels, engine, models, metrics, partitions)

    runtime = Runtime(settings, partitions, metrics, agents_for)
    server = health.serve(runtime, settings.bind_host, settings.web_port, metrics)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("worker %s: partitions=%d metrics=:%d web=:%d", settings.instance_id, partitions,
             settings.metrics_port, settings.web_port)
    try:
        runtime.run(stop)
    finally:
        server.shutdown()
    log.info("worker stopped")
    return 0
