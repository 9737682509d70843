"""Liveness and readiness decisions (the endpoints themselves: tests/test_observability.py)."""

from __future__ import annotations

from types import SimpleNamespace

import faust

from app import health
from app.metrics import Metrics


def fake_app(**state: bool) -> SimpleNamespace:
    values = {"crashed": False, "should_stop": False, "rebalancing": False,
              "in_recovery": False, "actives_ready": True} | state
    return SimpleNamespace(
        crashed=values["crashed"], should_stop=values["should_stop"],
        rebalancing=values["rebalancing"], in_recovery=values["in_recovery"],
        tables=SimpleNamespace(actives_ready=values["actives_ready"]))


def test_ready_once_tables_are_recovered_and_no_rebalance_runs():
    assert health.is_ready(fake_app())  # type: ignore[arg-type]
    for not_ready in [{"actives_ready": False}, {"rebalancing": True}, {"in_recovery": True},
                      {"crashed": True}, {"should_stop": True}]:
        assert not health.is_ready(fake_app(**not_ready)), not_ready  # type: ignore[arg-type]


def test_live_until_crashed_or_stopping():
    assert health.is_live(fake_app(actives_ready=False, rebalancing=True))  # type: ignore
    assert not health.is_live(fake_app(crashed=True))  # type: ignore[arg-type]
    assert not health.is_live(fake_app(should_stop=True))  # type: ignore[arg-type]


def test_register_adds_the_pages_and_the_readiness_gauge(tmp_path):
    app = faust.App("health-test", broker="kafka://127.0.0.1:1", store="memory://",
                    datadir=str(tmp_path), web_enabled=False)
    metrics = Metrics()
    health.register(app, metrics)
    assert {"/health", "/ready"} <= set(app.web.views)
    # Not started: no partitions recovered yet, so not ready.
    assert metrics.registry.get_sample_value("recoloop_worker_ready") == 0.0
