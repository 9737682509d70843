"""Liveness and readiness of a worker, on its Faust web server (``RECOLOOP_WEB_PORT``).

- ``GET /health``: liveness. 200 while the worker's event loop answers and the Faust app
  has not crashed or begun to stop; 503 otherwise. Restart the process when it fails.
- ``GET /ready``: readiness. 200 once the worker has finished recovering the tables of the
  partitions it is assigned (the engine state and the global tables) and no rebalance is
  in progress; 503 before that and during every rebalance. A worker that was assigned no
  partitions is ready. Wait for it before stopping the next worker of a rolling restart.

Both answer JSON. Readiness is also exported as the gauge ``recoloop_worker_ready``.

The signal: Faust's table manager sets ``actives_ready`` when recovery of the active
partitions completed (``faust.tables.recovery.Recovery.on_recovery_completed``, or at once
when there was nothing to recover) and clears it when a rebalance starts; ``app.rebalancing``
and ``app.in_recovery`` are set for the whole rebalance and recovery. The one-shot event
``recovery.completed`` is not used: it is never cleared by later rebalances.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from app.metrics import Metrics

HEALTH_PATH = "/health"
READY_PATH = "/ready"


def is_live(app: faust.App) -> bool:
    return not (app.crashed or app.should_stop)


def is_ready(app: faust.App) -> bool:
    """Plain attribute reads only: also called from the metrics server's thread."""
    return (is_live(app) and bool(app.tables.actives_ready) and not app.rebalancing
            and not app.in_recovery)


def _assigned_partitions(app: faust.App) -> int | None:
    try:
        return len(app.consumer.assignment())
    except Exception:  # the consumer may not exist yet (starting up)
        return None


def register(app: faust.App, metrics: Metrics | None = None) -> None:
    """Add ``/health`` and ``/ready`` to the app's web server; with ``metrics``, export
    readiness and drop partition-scoped gauges when partitions are revoked."""

    @app.page(HEALTH_PATH, name="recoloop-health")
    async def health(web: View, request: Request) -> Response:
        live = is_live(app)
        return web.json({"status": "ok" if live else "failing", "state": app.state},
                        status=200 if live else 503)

    @app.page(READY_PATH, name="recoloop-ready")
    async def ready(web: View, request: Request) -> Response:
        ok = is_ready(app)
        return web.json({
            "status": "ready" if ok else "not_ready",
            "tables_recovered": bool(app.tables.actives_ready),
            "rebalancing": bool(app.rebalancing),
            "in_recovery": bool(app.in_recovery),
            "assigned_partitions": _assigned_partitions(app),
        }, status=200 if ok else 503)

    if metrics is None:
        return
    metrics.worker_ready.set_function(lambda: 1.0 if is_ready(app) else 0.0)

    def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.forget_assignment()

    app.on_partitions_revoked.connect(on_revoked)
