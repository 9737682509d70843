"""``recoloop worker``: check the topic layout, then run the Faust worker until stopped."""

from __future__ import annotations

import logging
import sys

import faust

from app import agents, health
from app.channels import declare, internal_topics
from app.faust_app import create_app
from app.metrics import Metrics
from app.settings import Settings
from app.topic_admin import TopicLayoutError, check_copartitioned, ensure_internal_topics


def run(settings: Settings) -> int:
    try:
        counts = check_copartitioned(settings)
        partitions = next(iter(counts.values()))
        ensure_internal_topics(settings, internal_topics(settings), partitions)
    except TopicLayoutError as exc:
        print(f"recoloop worker: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, partitions)
    channels = declare(app, settings, partitions)
    metrics = Metrics()
    metrics.serve(settings.metrics_port, settings.bind_host)
    agents.register(app, settings, channels, metrics)
    health.register(app, metrics)
    logging.getLogger("recoloop").info("partitions=%d metrics=:%d", partitions,
                                       settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level)
    # Faust's terminal spinner lowers the root logger to DEBUG to spin on every record, which
    # formats a debug record for every message sent: a large share of CPU under load.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0
