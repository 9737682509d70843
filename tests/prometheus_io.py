"""Helpers for the observability tests: promtool, a throwaway Prometheus server, and the
PromQL the dashboard and the rules use (read from the files in deploy/, so the tests cannot
drift from them)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.worker_process import free_port

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULES_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "recoloop.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "recoloop.yml"

# What Grafana puts in for the dashboard's variables when every site and job is selected.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+", "$site": ".+"}


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the Makefile's test target makes sure it is installed."""
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run deploy/prometheus/ensure-prometheus.sh"
    return subprocess.run([exe, *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def dashboard() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return value


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def dashboard_exprs(dash: dict[str, Any] | None = None) -> dict[str, str]:
    """``{"<panel title> / <refId>": expr}`` with Grafana's variables substituted."""
    dash = dash or dashboard()
    exprs = {}
    for panel in panels(dash):
        for target in panel.get("targets", []):
            exprs[f"{panel['title']} / {target['refId']}"] = grafana_substitute(target["expr"])
    return exprs


def grafana_substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def series_names(expr: str) -> set[str]:
    """Metric and recorded-series names a PromQL expression reads (``up`` or recoloop's)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_strings)
    return {t for t in tokens if "recoloop_" in t or t == "up"}


def rule_names() -> tuple[list[str], list[str]]:
    """``(recorded series, alert names)`` in alerts.yml, in order."""
    text = RULES.read_text()
    return (re.findall(r"^\s*- record:\s*(\S+)\s*$", text, re.M),
            re.findall(r"^\s*- alert:\s*(\S+)\s*$", text, re.M))


def derived_config(target: str, directory: Path, interval: str = "1s") -> Path:
    """deploy/prometheus/prometheus.yml with ``target`` as the worker and ``interval`` as
    scrape and evaluation interval, written into ``directory`` beside a copy of the rules."""
    text = PROMETHEUS_CONFIG.read_text()
    for old, new in [("scrape_interval: 15s", f"scrape_interval: {interval}"),
                     ("evaluation_interval: 15s", f"evaluation_interval: {interval}"),
                     ('targets: ["127.0.0.1:9464"]', f'targets: ["{target}"]')]:
        assert text.count(old) == 1, f"{PROMETHEUS_CONFIG} no longer has {old!r} once"
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, directory / RULES.name)  # rule_files are relative to the config
    config = directory / PROMETHEUS_CONFIG.name
    config.write_text(text)
    return config


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class PrometheusServer:
    """A real ``prometheus`` on loopback with its own storage, for one test."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: run deploy/prometheus/ensure-prometheus.sh"
        self.args = [exe, f"--config.file={config}",
                     f"--storage.tsdb.path={directory / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            try:
                if http_get(f"{self.url}/-/ready", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (path, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
