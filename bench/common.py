"""What the benchmarks that drive a real worker share: a broker, fresh topics, one
``recoloop worker`` process, its metrics and memory, and the results file."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import local_kafka, topic_admin
from app.settings import Settings

RESULTS = Path(__file__).parent / "results"



def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

def bootstrap_servers() -> str:
    """RECOLOOP_BOOTSTRAP_SERVERS, or the local broker on 9092 (started when needed)."""
    return os.environ.get("RECOLOOP_BOOTSTRAP_SERVERS") or local_kafka.up(
        port=9092, data_dir=Path("var/kafka"))


def fresh_topics(bootstrap: str, partitions: int = 8) -> Settings:
    """Settings under a new topic prefix, with the contract topics created."""
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}-",
                        partitions=partitions)
    report = topic_admin.apply(settings)
    assert report.ok, report.describe()
    return settings


@dataclass
class BenchWorker:
    process: subprocess.Popen[bytes]
    data_dir: Path
    metrics_port: int

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"the worker exited; see {self.data_dir / 'worker.log'}")

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric_sum(self, name: str, where: str = "") -> float:
        """The sum of one metric's samples over its labels (e.g. every partition), only of
        the samples whose line contains ``where`` (e.g. ``closed_by="idle"``) if given."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + "{", name + " ")) and where in line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def start_worker(settings: Settings, **extra_env: str) -> BenchWorker:
    """One ``recoloop worker`` on ``settings``' topics, logging at warn to its data dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="recoloop-bench-"))
    metrics_port = free_port()
    env = {**os.environ, "RECOLOOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "RECOLOOP_TOPIC_PREFIX": settings.topic_prefix, "RECOLOOP_DATA_DIR": str(data_dir),
           "RECOLOOP_METRICS_PORT": str(metrics_port), "RECOLOOP_WEB_PORT": str(free_port()),
           "RECOLOOP_LOG_LEVEL": "warn", **extra_env}
    log = open(data_dir / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    return BenchWorker(process, data_dir, metrics_port)


def machine(detail: str = "broker co-located") -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {detail}"


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
