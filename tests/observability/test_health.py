"""/health and /ready over real HTTP, from the worker's status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from app.observability import health
from app.observability.metrics import Metrics
from tests.worker_process import free_port


@dataclass
class Status:
    live: bool = True
    ready: bool = False
    partitions: list[int] = field(default_factory=list)

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.ready

    def assigned_partitions(self) -> list[int]:
        return self.partitions


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_health_and_ready_answer_the_workers_status_over_http():
    status, metrics, port = Status(), Metrics(), free_port()
    server = health.serve(status, "127.0.0.1", port, metrics)
    try:
        assert get(port, "/health") == (200, {"status": "ok"})
        assert get(port, "/ready") == (503, {"status": "not_ready", "assigned_partitions": []})
        assert metrics.registry.get_sample_value("recoloop_worker_ready") == 0.0
        status.ready, status.partitions = True, [0, 3]
        assert get(port, "/ready") == (200, {"status": "ready", "assigned_partitions": [0, 3]})
        assert metrics.registry.get_sample_value("recoloop_worker_ready") == 1.0
        status.live = False
        assert get(port, "/health") == (503, {"status": "failing"})
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
            raise AssertionError("an unknown path answered")
        except urllib.error.HTTPError as error:
            assert error.code == 404
    finally:
        server.shutdown()
