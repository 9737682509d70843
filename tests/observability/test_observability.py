"""A real Prometheus, configured from deploy/prometheus, scraping a real worker.

Events go through the broker; then every expression the Grafana dashboard plots and every
recorded series and metric the alert rules read must return data from Prometheus's HTTP
API, every rule must evaluate without error, and promtool must accept the worker's
/metrics, the config and the rules.

Alert expressions compare against thresholds, so with healthy test traffic they are rightly
empty; what is checked for them is that every series they read has data (and their logic is
unit-tested in deploy/prometheus/alerts.test.yml). The one exception by design: the
reward-drop alert's baseline is the day before (``offset 1h`` over ``[1d]``), which a
fresh Prometheus cannot have; its series are checked, not its baseline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, SERVED, SITE_CONFIG
from app.settings import Settings
from tests.kafka_io import event, produce
from tests.prometheus_io import (
    PrometheusServer,
    dashboard_exprs,
    derived_config,
    http_get,
    promtool,
    rule_names,
    series_names,
)
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(what: str, check, timeout_s: float, explain=lambda: ""):
    """Poll ``check()`` until it returns something truthy; fail with ``explain()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{explain()}")
        time.sleep(0.25)


@pytest.fixture
def prometheus(worker: WorkerProcess, tmp_path: Path):
    config = derived_config(f"127.0.0.1:{worker.metrics_port}", tmp_path / "prometheus")
    server = PrometheusServer(config, tmp_path / "prometheus").start()
    yield server
    server.stop()


def drive_events(s: Settings) -> None:
    t = int(time.time() * 1000)
    shop = {"site_id": "shop"}
    # Candidate policies scored in the shadow of the site's bandit (recoloop_shadow_value).
    produce(s.kafka.bootstrap_servers, [(s.topic(SITE_CONFIG), b"shop", orjson.dumps(
        {**shop, "shadow": ["uniform", "arm:recent"]}))])
    produce(s.kafka.bootstrap_servers, [
        # A display from a known arm that earns the maximum reward: closed at once, learned.
        event(s.topic(SERVED), {**shop, "event_id": "d1", "session_id": "s1", "ts": t,
                                "items": ["a", "b"], "arm": "recent", "propensity": 0.5,
                                "context": {"device": "mobile"}}),
        event(s.topic(CLICKS), {**shop, "event_id": "c0", "session_id": "s1",
                                "ts": t + 200, "item_id": "a"}),
        event(s.topic(DETAIL_VIEWS), {**shop, "event_id": "v1", "session_id": "s1",
                                      "ts": t + 500, "item_id": "a"}),
        event(s.topic(BASKET_ADDS), {**shop, "event_id": "b1", "session_id": "s1",
                                     "ts": t + 1_000, "item_id": "a", "price": 25.0}),
        # A display nobody reacts to: pending in the join until its window closes.
        event(s.topic(SERVED), {**shop, "event_id": "d2", "session_id": "s2", "ts": t,
                                "items": ["c"], "arm": "coview", "propensity": 0.25}),
        # A reaction to nothing displayed: unattributed once its grace passes.
        event(s.topic(CLICKS), {"site_id": "blog", "event_id": "c1", "session_id": "s3",
                                "ts": t, "item_id": "zzz"}),
        # A record that cannot be used: dead-lettered.
        (s.topic(CLICKS), b"s4", b"{not json"),
    ])


def test_prometheus_scrapes_the_worker_and_every_dashboard_and_alert_query_has_data(
        worker: WorkerProcess, worker_settings: Settings, prometheus: PrometheusServer):
    web = f"http://127.0.0.1:{worker.env['RECOLOOP_WEB_PORT']}"
    metrics_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

    # Liveness, then readiness once the worker has recovered its partitions.
    wait_for("/health", lambda: http_get(f"{web}/health")[0] == 200, 60, worker.log_tail)
    status, body = wait_for("/ready", lambda: (r := http_get(f"{web}/ready"))[0] == 200 and r,
                            60, worker.log_tail)
    ready = json.loads(body)
    assert ready == {"status": "ready", "assigned_partitions": [0, 1, 2, 3]}  # the only worker
    assert json.loads(http_get(f"{web}/health")[1])["status"] == "ok"

    drive_events(worker_settings)

    # Prometheus scrapes the worker it was configured with.
    def target_up():
        targets = prometheus.api("targets")["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "recoloop"
                and t["scrapeUrl"] == metrics_url and t["health"] == "up"]
    wait_for("the worker target to be up", target_up, 30,
             lambda: json.dumps(prometheus.api("targets"), indent=1))

    # Everything the dashboard plots and the rules read.
    records, alerts = rule_names()
    queries = {f"dashboard: {title}": expr for title, expr in dashboard_exprs().items()}
    queries |= {f"recording rule {name}": name for name in records}
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(r["name"] for r in rules if r["type"] == "recording") == sorted(records)
    assert sorted(r["name"] for r in rules if r["type"] == "alerting") == sorted(alerts)
    for rule in rules:
        if rule["type"] == "alerting":
            for name in series_names(rule["query"]):
                queries[f"series {name} (alert {rule['name']})"] = name

    missing: dict[str, str] = {}

    def all_have_data() -> bool:
        missing.clear()
        for title, expr in queries.items():
            if not prometheus.query(expr):
                missing[title] = expr
        return not missing

    wait_for("every dashboard and rule query to return data", all_have_data, 60,
             lambda: "no data:\n" + "\n".join(f"  {k}: {v}" for k, v in missing.items())
             + f"\nworker log:\n{worker.log_tail()}")

    # Every rule evaluates cleanly.
    def rules_healthy():
        groups = prometheus.api("rules")["groups"]
        bad = [(r["name"], r["health"], r.get("lastError")) for g in groups
               for r in g["rules"] if r["health"] != "ok"]
        return not bad or None
    wait_for("every rule to evaluate without error", rules_healthy, 15,
             lambda: json.dumps(prometheus.api("rules"), indent=1))

    # What the numbers say matches what was driven.
    [reward] = prometheus.query('sum(recoloop_reward_total{site="shop",arm="recent"})')
    assert float(reward["value"][1]) == 3.0
    [closed] = prometheus.query('sum by (closed_by) (recoloop_decisions_closed_total'
                                '{site="shop",arm="recent"})')
    assert closed["metric"]["closed_by"] == "max_reward"
    [ready_gauge] = prometheus.query("recoloop_worker_ready")
    assert ready_gauge["value"][1] == "1"
    assert prometheus.query('recoloop_dead_letters_total{reason="invalid_json"} == 1')
    assert prometheus.query("recoloop_build_info")[0]["metric"]["version"]
    [revenue] = prometheus.query('sum(recoloop_variant_revenue_total{site="shop",'
                                 'variant="none"})')
    assert float(revenue["value"][1]) == 25.0

    # promtool accepts the worker's exposition, the config and the rules.
    status, text = http_get(metrics_url)
    assert status == 200
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check
    for args in (["check", "config", str(prometheus.args[1].split("=", 1)[1])],
                 ["check", "rules", "deploy/prometheus/alerts.yml"]):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
