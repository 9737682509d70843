"""Runs ``recoloop worker`` as a real subprocess, the way users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and not handed out before by this process: the three
    ports of each worker started together must all differ (the OS may offer one twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class WorkerProcess:
    """``recoloop worker`` (or, with ``command="serve"``, the rank service) as a subprocess."""

    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, log_path: Path,
                 command: str = "worker", **settings: str) -> None:
        self.command = command
        self.env = dict(os.environ)
        self.env.update({
            "RECOLOOP_BOOTSTRAP_SERVERS": bootstrap,
            "RECOLOOP_TOPIC_PREFIX": prefix,
            "RECOLOOP_DATA_DIR": str(data_dir),
            "RECOLOOP_METRICS_PORT": str(free_port()),
            "RECOLOOP_WEB_PORT": str(free_port()),
            "RECOLOOP_SERVE_PORT": str(free_port()),
            "RECOLOOP_PARTITIONS": "4",
        })
        self.env.update({f"RECOLOOP_{k.upper()}": v for k, v in settings.items()})
        self.metrics_port = int(self.env["RECOLOOP_METRICS_PORT"])
        self.web_port = int(self.env["RECOLOOP_WEB_PORT"])
        self.serve_port = int(self.env["RECOLOOP_SERVE_PORT"])
        if command == "serve":  # the rank service answers everything on its one port
            self.metrics_port = self.web_port = self.serve_port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", self.command], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def status(self, path: str) -> int | None:
        """The HTTP status of ``/health`` or ``/ready``; None while nothing listens."""
        try:
            url = f"http://127.0.0.1:{self.web_port}{path}"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until ``/ready`` answers 200: partitions assigned and their state restored."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            if self.status("/ready") == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout_s} s\n{self.log_tail()}")

    def samples(self) -> list[Sample]:
        """Every sample on the worker's /metrics, read at one moment."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return [sample for family in text_string_to_metric_families(text)
                for sample in family.samples]

    def metric(self, name: str, samples: list[Sample] | None = None, **labels: str) -> float:
        """The sum of the samples named ``name`` that carry ``labels``."""
        read = self.samples() if samples is None else samples
        return sum(sample.value for sample in read
                   if sample.name == name and labels.items() <= sample.labels.items())

    def log_tail(self, lines: int = 40) -> str:
        """The worker's exit status if it has exited, and the last ``lines`` of its log
        without librdkafka's failed connection attempts (a line every few ms while a broker
        is down: they would hide everything else)."""
        text = self.log_path.read_text(errors="replace").splitlines()
        kept = [line for line in text
                if not (line.startswith("%") and "Connection refused" in line)]
        exited = None if self.process is None else self.process.poll()
        status = "running" if exited is None else f"exited with status {exited}"
        return "\n".join([f"{self.command} {status}; its log ({len(text) - len(kept)} lines of "
                          "refused connections left out):", *kept[-lines:]])
