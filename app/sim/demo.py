"""``recoloop demo``: the whole loop on one machine, with the engine learning live.

Brings up the local broker unless ``RECOLOOP_BOOTSTRAP_SERVERS`` names one, creates the
contract topics under a fresh prefix (so a run never sees an earlier run's data), starts
``recoloop worker`` as a subprocess on them, and plays the simulator (:mod:`app.sim.runner`)
against it with a progress line every two seconds. At the end, or on Ctrl-C, it stops the
worker, writes ``summary.json`` and ``reward.png`` (reward per decision over time: engine,
random control, oracle) to the output directory, and deletes the run's topics.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.dev import local_kafka
from app.kafka import topic_admin
from app.settings import Settings
from app.sim import runner

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
# Reward per decision is plotted as a moving average over this long.
PLOT_WINDOW_S = 60.0
ORACLE_LABEL = {"arms": "best arm per context"}
ITEMS_ORACLE = "best items for each shopper"  # the oracle of every other world


class DemoError(RuntimeError):
    """The demo could not get its broker, topics or worker going; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, duration_s=300.0, sites=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="where summary.json, reward.png and the worker's log go "
                             "(default var/demo/<date-time>)")
    parser.add_argument("--keep-topics", action="store_true",
                        help="leave the run's topics on the broker (and the worker's state "
                             "in the output directory) afterwards")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(web_port: int, process: subprocess.Popen[bytes], timeout_s: float,
               log_tail: Callable[[], str]) -> None:
    """Poll a worker's ``/ready`` until it answers 200; raise DemoError, with the end of
    its log, if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the worker exited with {process.returncode}:\n{log_tail()}")
        try:
            url = f"http://127.0.0.1:{web_port}/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while it recovers its state
        time.sleep(0.5)
    raise DemoError(f"the worker was not ready within {timeout_s:.0f} s:\n{log_tail()}")


class DemoWorker:
    """``recoloop worker`` as a subprocess on the demo's topics, in its own session so a
    Ctrl-C in the terminal reaches only the demo, which then stops the worker cleanly."""

    def __init__(self, settings: Settings, out: Path) -> None:
        self.web_port, self.metrics_port = free_port(), free_port()
        self.log_path = out / "worker.log"
        env = {**os.environ, "RECOLOOP_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
               "RECOLOOP_TOPIC_PREFIX": settings.kafka.topic_prefix,
               "RECOLOOP_DATA_DIR": str(out / "worker-data"),
               "RECOLOOP_WEB_PORT": str(self.web_port),
               "RECOLOOP_METRICS_PORT": str(self.metrics_port),
               "RECOLOOP_LOG_LEVEL": os.environ.get("RECOLOOP_LOG_LEVEL", "warn")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        wait_ready(self.web_port, self.process, timeout_s, self.log_tail)

    def stop(self) -> int:
        """SIGTERM (a clean shutdown), SIGKILL if it has not exited after a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no worker log)"
        return "\n".join(text[-lines:])


def main(args: argparse.Namespace, settings: Settings) -> int:
    with runner.sigterm_interrupts():
        return _demo(args, settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    out: Path = args.out or Path("var/demo") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    run_settings: Settings | None = None
    worker: DemoWorker | None = None
    summary: dict[str, Any] | None = None
    status = 0
    try:
        external = os.environ.get("RECOLOOP_BOOTSTRAP_SERVERS")
        if not external and settings.kafka.security:
            raise DemoError("RECOLOOP_KAFKA_* security settings need RECOLOOP_BOOTSTRAP_SERVERS:"
                            " the demo's local broker is plaintext")
        bootstrap = external or local_kafka.up(port=9092,
                                               data_dir=settings.worker.data_dir / "kafka")
        # A fresh prefix is also a fresh consumer group and state (app_id derives from it).
        run_settings = settings.replace(bootstrap_servers=bootstrap,
                               topic_prefix=f"{settings.kafka.topic_prefix}demo{uuid.uuid4().hex[:6]}-")
        print(f"broker {bootstrap}; topics {run_settings.kafka.topic_prefix}reco.*", flush=True)
        report = topic_admin.apply(run_settings)
        if not report.ok:
            raise DemoError(report.describe())
        worker = DemoWorker(run_settings, out)
        print(f"worker pid {worker.process.pid} starting (log {worker.log_path}) ...", flush=True)
        worker.wait_ready()
        print(f"worker ready; metrics on http://127.0.0.1:{worker.metrics_port}/metrics\n"
              f"simulating {args.sites} site(s) at about {args.rate:g} events/s for "
              f"{args.duration_s:g} s in the {args.world} world ({args.control_share:.0%} "
              "of sessions are a random control group; Ctrl-C stops early)", flush=True)
        summary = runner.run(run_settings, runner.options_from(args),
                                 runner.ProgressPrinter())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        status = 130
    except (DemoError, runner.SimulatorError, local_kafka.LocalKafkaError) as exc:
        print(f"recoloop demo: {exc}", file=sys.stderr)
        status = 1
    finally:
        _finish(out, run_settings, worker, summary, keep_topics=args.keep_topics)
    if summary is not None and summary["run"]["interrupted"]:
        status = 130
    return status


def _finish(out: Path, settings: Settings | None, worker: DemoWorker | None,
            summary: dict[str, Any] | None, keep_topics: bool) -> None:
    """Stop the worker, write what was measured, and remove the run's topics; each step
    runs even if an earlier one failed, and a second Ctrl-C here is ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if worker is not None:
            print(f"stopping the worker (exit code {worker.stop()})", flush=True)
        if summary is not None:
            runner.write_json(out / "summary.json", summary)
            print(runner.describe(summary))
            try:
                write_plot(summary, out / "reward.png")
                print(f"wrote {out / 'summary.json'} and {out / 'reward.png'}")
            except Exception as exc:  # the summary is written; a plot failure is secondary
                print(f"wrote {out / 'summary.json'}; the plot failed: {exc}", file=sys.stderr)
        if settings is not None and not keep_topics:
            deleted = delete_topics(settings)
            # The worker's local state belongs to those topics: useless without them.
            shutil.rmtree(out / "worker-data", ignore_errors=True)
            print(f"deleted the run's {deleted} topics ({settings.kafka.topic_prefix}*) and the "
                  "worker's state", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def delete_topics(settings: Settings) -> int:
    """Delete every topic under the run's prefix: the contract's and the worker's own."""
    admin = topic_admin.admin_client(settings)
    names = [name for name in admin.list_topics(timeout=topic_admin.TIMEOUT_S).topics
             if name.startswith(settings.kafka.topic_prefix)]
    if not names:
        return 0
    futures = admin.delete_topics(names, operation_timeout=topic_admin.TIMEOUT_S)
    deleted = 0
    for name, future in futures.items():
        try:
            future.result()
            deleted += 1
        except Exception as exc:  # reported, not fatal: the data is under a unique prefix
            print(f"could not delete {name}: {exc}", file=sys.stderr)
    return deleted


def rolling(timeline: list[dict[str, Any]], value: str, count: str,
            window: int) -> list[float]:
    """Per timeline row, the decision-weighted mean of ``value`` over the last ``window``
    rows (NaN, a gap in the plot, where those rows hold no decision)."""
    result: list[float] = []
    for end in range(1, len(timeline) + 1):
        rows = [r for r in timeline[max(0, end - window):end] if r[value] is not None]
        decisions = sum(r[count] for r in rows)
        result.append(sum(r[value] * r[count] for r in rows) / decisions if decisions
                      else math.nan)
    return result


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Reward per decision over time (moving average): engine, random control, oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = summary["timeline"]
    window = max(1, round(PLOT_WINDOW_S / summary["run"]["bucket_s"]))
    times = [row["t_s"] + summary["run"]["bucket_s"] for row in timeline]
    rewards = summary["reward_per_decision"]
    world = summary["run"].get("world", "arms")
    figure, axes = plt.subplots(figsize=(9, 5))
    for value, count, label, style in (
            ("oracle", "engine_decisions", f"oracle ({ORACLE_LABEL.get(world, ITEMS_ORACLE)}) "
             f"{_fmt(rewards['oracle'])}", dict(color="tab:green", linestyle="--")),
            ("engine", "engine_decisions", f"engine {_fmt(rewards['engine'])}",
             dict(color="tab:blue", linewidth=2)),
            ("engine_expected", "engine_decisions", "engine, expected for its choices",
             dict(color="tab:blue", linestyle=":", linewidth=1)),
            ("control", "control_decisions", f"random control {_fmt(rewards['control'])}",
             dict(color="tab:orange", linewidth=2))):
        axes.plot(times, rolling(timeline, value, count, window), label=label, **style)
    axes.set_xlabel("seconds since the start (by display time)")
    axes.set_ylabel(f"reward per decision ({PLOT_WINDOW_S:.0f} s moving average)")
    events = summary["events"]
    axes.set_title(f"recoloop demo ({world} world): {summary['decisions']['total']} decisions, "
                   f"{events['per_s']} events/s, {len(summary['run']['sites'])} site(s)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
