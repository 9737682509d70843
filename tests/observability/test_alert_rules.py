"""deploy/prometheus and deploy/grafana checked with promtool, without a broker.

The integration test (tests/observability/test_observability.py) then runs all of it
against a worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.prometheus_io import (
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TESTS,
    dashboard,
    dashboard_exprs,
    panels,
    promtool,
    rule_names,
)

# The alerts the operators asked for, by what they watch.
REQUIRED_ALERTS = {
    "RecoloopNoEventsConsumed",  # no events consumed for 5 minutes
    "RecoloopDeadLetterRateHigh",  # dead-letter rate above a threshold
    "RecoloopJoinBacklogGrowing",  # pending displays growing without bound
    "RecoloopEventToRankingSlow",  # event-to-ranking p99 above a threshold
    "RecoloopRewardPerDecisionDrop",  # reward per decision dropping against its past
}


def ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_check_config():
    assert "SUCCESS" in ok(promtool("check", "config", str(PROMETHEUS_CONFIG)))


def test_promtool_check_rules():
    records, alerts = rule_names()
    output = ok(promtool("check", "rules", str(RULES)))
    assert f"SUCCESS: {len(records) + len(alerts)} rules found" in output
    assert REQUIRED_ALERTS <= set(alerts)
    assert len(set(records)) == len(records) and len(set(alerts)) == len(alerts)


def test_promtool_test_rules():
    ok(promtool("test", "rules", str(RULES_TESTS)))


def test_every_alert_has_a_unit_test():
    _, alerts = rule_names()
    tested = set(re.findall(r"alertname:\s*(\S+)", RULES_TESTS.read_text()))
    assert set(alerts) <= tested


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    # promtool parses PromQL only in rule files: one recording rule per expression.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs.values())
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    ok(promtool("check", "rules", str(path)))


def test_dashboard_shows_what_operators_asked_for():
    dash = dashboard()
    every_expr = " ".join(dashboard_exprs(dash).values())
    for name in ["recoloop_events_consumed_total", "recoloop_dead_letters_total",
                 "recoloop_join_pending_displays", "recoloop_event_to_ranking_seconds_bucket",
                 "recoloop_reward_total", "recoloop_decisions_closed_total",
                 "recoloop_rankings_published_total", "recoloop_bandit_arm_estimate",
                 "recoloop_build_info"]:
        assert name in every_expr, name
    assert "histogram_quantile(0.99" in every_expr
    titles = {p["title"] for p in panels(dash)}
    assert {"Reward per decision by arm", "Arm choice share by site"} <= titles
    assert {v["name"] for v in dash["templating"]["list"]} == {"job", "site"}


def test_dashboard_is_consistent_with_its_provisioning():
    dash = dashboard()
    uid = re.search(r"^\s*uid:\s*(\S+)", DATASOURCES.read_text(), re.M)
    assert uid is not None
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
        assert all(t["datasource"]["uid"] == uid.group(1) for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    for variable in dash["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid.group(1)
    assert dash["uid"] and dash["title"]
    assert re.search(r"^\s*type:\s*file\s*$", DASHBOARD_PROVIDERS.read_text(), re.M)

