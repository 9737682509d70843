"""What the benchmarks that drive a real worker share: a broker, fresh topics, one
``recoloop worker`` process, its metrics and memory, producing records, reading a consumer
group's committed offsets, latency percentiles, the machine's description and the results
file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from app.dev import local_kafka
from app.kafka import clients, topic_admin
from app.kafka.reader import TopicReader
from app.settings import Settings

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent

Record = tuple[str, dict[str, Any]]  # (logical topic, value)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

def bootstrap_servers() -> str:
    """RECOLOOP_BOOTSTRAP_SERVERS, or the local broker on 9092 (started when needed)."""
    external = os.environ.get("RECOLOOP_BOOTSTRAP_SERVERS")
    if not external and Settings.from_env().kafka.security:
        raise SystemExit("RECOLOOP_KAFKA_* security settings need RECOLOOP_BOOTSTRAP_SERVERS: "
                         "the local broker is plaintext")
    return external or local_kafka.up(port=9092, data_dir=Path("var/kafka"))


def settings_for(bootstrap: str) -> Settings:
    """The RECOLOOP_* settings (Kafka security included) on ``bootstrap``."""
    return Settings.from_env().replace(bootstrap_servers=bootstrap)


def kafka_config(bootstrap: str) -> dict[str, str]:
    """The properties every bench client starts from: ``bootstrap`` plus the security ones."""
    return settings_for(bootstrap).kafka_config()


def fresh_topics(bootstrap: str, partitions: int = 8) -> Settings:
    """Settings under a new topic prefix, with the contract topics created."""
    settings = settings_for(bootstrap).replace(topic_prefix=f"bench{uuid.uuid4().hex[:6]}-",
                       partitions=partitions)
    report = topic_admin.apply(settings)
    assert report.ok, report.describe()
    return settings


def delete_topics(settings: Settings) -> None:
    """Delete every topic under ``settings``' prefix (contract, internal and the bench's own),
    so repeated runs do not fill the broker."""
    admin = topic_admin.admin_client(settings)
    names = [name for name in admin.list_topics(timeout=30).topics
             if name.startswith(settings.kafka.topic_prefix)]
    if settings.kafka.topic_prefix and names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result(60)


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
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The most resident memory the worker process has had so far (VmHWM)."""
        return self._status_bytes("VmHWM")

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field}")

    def metric_sum(self, name: str, where: str = "") -> float:
        """The sum of one metric's samples over its labels (e.g. every partition), only of
        the samples whose line contains ``where`` (e.g. ``closed_by="idle"``) if given."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + "{", name + " ")) and where in line)

    def stop(self, remove_data: bool = False) -> None:
        """Stop the process (SIGTERM, SIGKILL after 60 s); ``remove_data`` deletes its data
        dir and log afterwards."""
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


WORKER_COMMAND = ("-m", "app.cli", "worker")


def start_worker(settings: Settings, command: Sequence[str] = WORKER_COMMAND,
                 cwd: Path = REPO, **extra_env: str) -> BenchWorker:
    """One ``recoloop worker`` (or another ``python`` ``command`` that reads the same
    ``RECOLOOP_*`` variables) on ``settings``' topics, logging at warn to its data dir.
    ``cwd`` is the checkout whose ``app`` package runs (``python -m`` imports from it)."""
    data_dir = Path(tempfile.mkdtemp(prefix="recoloop-bench-"))
    metrics_port = free_port()
    env = {**os.environ, "RECOLOOP_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "RECOLOOP_TOPIC_PREFIX": settings.kafka.topic_prefix, "RECOLOOP_DATA_DIR": str(data_dir),
           "RECOLOOP_METRICS_PORT": str(metrics_port), "RECOLOOP_WEB_PORT": str(free_port()),
           "RECOLOOP_LOG_LEVEL": "warn", **extra_env}
    log = open(data_dir / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, *command], env=env, cwd=cwd,
                               stdout=log, stderr=subprocess.STDOUT)
    return BenchWorker(process, data_dir, metrics_port)


def send_all(producer: Producer, settings: Settings, records: Iterable[Record]) -> int:
    """Produce every ``(logical topic, value)`` keyed by its session, wait for delivery and
    return how many were sent."""
    sent = 0
    for topic, value in records:
        while True:
            try:
                producer.produce(settings.topic(topic), key=value["session_id"].encode(),
                                 value=orjson.dumps(value))
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        producer.poll(0)
        sent += 1
    assert producer.flush(60) == 0, "records were not delivered"
    return sent


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ascending values (nearest rank, rounding down)."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """p50, p99, p999 and mean of latencies given in seconds, in milliseconds."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None}
    return {"p50_ms": round(quantile(ordered, 0.50) * 1000, 2),
            "p99_ms": round(quantile(ordered, 0.99) * 1000, 2),
            "p999_ms": round(quantile(ordered, 0.999) * 1000, 2),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2)}


def committed_rate(samples: Sequence[tuple[float, int]], total: int) -> dict[str, float | None]:
    """Throughput from ``(seconds since start, events committed)`` samples of a consumer
    group that must commit ``total`` events.

    ``first_progress_s`` is the first sample with anything committed, ``done_s`` the first
    with all ``total``. The rate counts only what was committed between them:
    ``(committed at done - committed at first progress) / (done_s - first_progress_s)``, so
    start-up (joining the group, recovering state) and the events of the first commit, whose
    processing time is unknown, are left out. ``None`` where the samples do not say (e.g.
    everything came in one commit); ``events_per_s_incl_startup`` is then the lower bound.
    """
    first = next(((t, c) for t, c in samples if c > 0), None)
    done = next(((t, c) for t, c in samples if c >= total), None)
    rate = None
    if first is not None and done is not None and done[1] > first[1] and done[0] > first[0]:
        rate = round((done[1] - first[1]) / (done[0] - first[0]), 1)
    return {"first_progress_s": None if first is None else round(first[0], 2),
            "committed_at_first_progress": None if first is None else first[1],
            "done_s": None if done is None else round(done[0], 2),
            "events_per_s": rate,
            # A lower bound that always exists: everything over the time since the start.
            "events_per_s_incl_startup": None if done is None or done[0] <= 0
            else round(total / done[0], 1)}


class CommittedOffsets:
    """A consumer group's committed offsets against the end offsets of some topics, read
    from outside the group (this consumer never joins it)."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str]) -> None:
        self.consumer = Consumer(clients.committed_consumer(settings_for(bootstrap), group))
        metadata = self.consumer.list_topics(timeout=30)
        self.partitions = [TopicPartition(topic, p) for topic in topics
                           for p in sorted(metadata.topics[topic].partitions)]
        self.ends: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in self.partitions:
            self.ends[tp.topic, tp.partition] = self.consumer.get_watermark_offsets(
                tp, timeout=30)

    @property
    def total(self) -> int:
        """Records between the low and high watermarks when this was built."""
        return sum(high - low for low, high in self.ends.values())

    def committed(self) -> int:
        """Records committed so far (at most each partition's end offset)."""
        done = 0
        for tp in self._committed_offsets():
            low, high = self.ends[tp.topic, tp.partition]
            if tp.offset >= 0:
                done += min(tp.offset, high) - low
        return done

    def _committed_offsets(self) -> list[TopicPartition]:
        """The group's committed offsets; a broker still electing the group's coordinator
        (a fresh one) answers with a retriable error for a moment."""
        for _ in range(60):
            try:
                return list(self.consumer.committed(self.partitions, timeout=30))
            except KafkaException as exc:
                if not exc.args[0].retriable() and \
                        exc.args[0].code() != KafkaError.NOT_COORDINATOR:
                    raise
                time.sleep(0.5)
        raise TimeoutError("the group coordinator did not answer")

    def close(self) -> None:
        self.consumer.close()


def count_records(bootstrap: str, topic: str, timeout_s: float = 300.0) -> tuple[int, int]:
    """``(records, records whose key contains b"|*|")`` on ``topic`` (committed ones only,
    read_committed) from the beginning up to its end."""
    counts = {"records": 0, "starred": 0}

    def count(message: Message) -> None:
        counts["records"] += 1
        counts["starred"] += b"|*|" in (message.key() or b"")

    reader = TopicReader(clients.committed_consumer(settings_for(bootstrap), uuid.uuid4().hex),
                         topic, count)
    deadline = time.monotonic() + timeout_s
    try:
        if reader.assign(timeout_s=30):
            while not reader.caught_up and time.monotonic() < deadline:
                reader.poll(0.5)
    finally:
        reader.close()
    if reader.assigned and not reader.caught_up:
        raise RuntimeError(f"{topic}: not read to the end within {timeout_s} s")
    return counts["records"], counts["starred"]


def machine(detail: str = "broker co-located") -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {detail}"


def _first_line_value(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)),
                None)


def machine_info(bootstrap: str | None) -> dict[str, Any]:
    """What the figures were measured on, and when, at which commit."""
    memory_kb = _first_line_value("/proc/meminfo", "MemTotal")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    # Changes to the code measured; the results files the benchmarks rewrite do not count.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!bench/results"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return {
        "cpu_model": _first_line_value("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory_kb.split()[0]) / 2**20, 1) if memory_kb else None,
        "architecture": platform.machine(),
        "python": platform.python_version(),
        "kafka_version": local_kafka.kafka_version(),
        "kafka_version_source": "app/dev/kafka/pom.xml (the local broker)",
        "bootstrap_servers": bootstrap,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "git_tracked_changes": bool(dirty),
        "layout": "broker, worker and load generator on this machine",
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
