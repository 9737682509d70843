"""Liveness and readiness of a worker, over HTTP on ``RECOLOOP_WEB_PORT``.

- ``GET /health``: liveness. 200 while the worker's loop keeps turning (it turns at least
  every few hundred milliseconds, and reading state back counts as turning; waiting for an
  unreachable broker and rebuilding the Kafka clients do not); 503 once it has been stuck
  for :data:`STUCK_AFTER_S` or is stopping. Restart the process when it fails.
- ``GET /ready``: readiness. 200 once the worker has read the catalog and the bandit models
  and restored the state of every partition it is assigned; 503 before that and while a
  rebalance or a restore runs. A worker assigned no partitions is ready. Wait for it
  before stopping the next worker of a rolling restart.

Both answer JSON. Readiness is also exported as the gauge ``recoloop_worker_ready``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from app.observability.metrics import Metrics

HEALTH_PATH = "/health"
READY_PATH = "/ready"
STUCK_AFTER_S = 60.0


class Status(Protocol):
    def is_live(self) -> bool: ...
    def is_ready(self) -> bool: ...
    def assigned_partitions(self) -> list[int]: ...


def serve(status: Status, host: str, port: int, metrics: Metrics | None = None
          ) -> ThreadingHTTPServer:
    """Answer ``/health`` and ``/ready`` from a daemon thread; ``server.shutdown()`` stops."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if self.path == HEALTH_PATH:
                ok = status.is_live()
                body: dict[str, object] = {"status": "ok" if ok else "failing"}
            elif self.path == READY_PATH:
                ok = status.is_ready()
                body = {"status": "ready" if ok else "not_ready",
                        "assigned_partitions": status.assigned_partitions()}
            else:
                self.send_error(404)
                return
            payload = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the worker's log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    if metrics is not None:
        metrics.worker_ready.set_function(lambda: 1.0 if status.is_ready() else 0.0)
    return server
