"""Event-to-ranking latency of one worker at a fixed input rate.

    .venv/bin/python -m bench.latency --rate 2000 --seconds 30

Starts the local broker unless RECOLOOP_BOOTSTRAP_SERVERS is set, creates topics under a
fresh prefix, runs one ``recoloop worker`` process, produces the mixed stream of
``bench/shoppers.py`` at ``--rate`` events/s with every session event expecting its ranking
``rk-<event_id>``, and measures from the moment each event was handed to the producer to the
moment its ranking was read from ``reco.rankings``. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from app import local_kafka, topic_admin
from app.settings import RANKINGS, Settings
from bench.shoppers import mixed_events
from tests.worker_process import free_port

RESULTS = Path(__file__).parent / "results"


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=2000, help="input events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--sessions", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    bootstrap = os.environ.get("RECOLOOP_BOOTSTRAP_SERVERS") or local_kafka.up(
        port=9092, data_dir=Path("var/kafka"))
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}-",
                        partitions=8)
    report = topic_admin.apply(settings)
    assert report.ok, report.describe()

    data_dir = Path(tempfile.mkdtemp(prefix="recoloop-bench-"))
    env = {**os.environ, "RECOLOOP_BOOTSTRAP_SERVERS": bootstrap,
           "RECOLOOP_TOPIC_PREFIX": settings.topic_prefix, "RECOLOOP_DATA_DIR": str(data_dir),
           "RECOLOOP_METRICS_PORT": str(free_port()), "RECOLOOP_WEB_PORT": str(free_port()),
           "RECOLOOP_LOG_LEVEL": "warn"}
    log = open(data_dir / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def read_rankings() -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 5})
        consumer.subscribe([settings.topic(RANKINGS)])
        while not done.is_set():
            for message in consumer.consume(1000, timeout=0.1):
                if message.error():
                    continue
                received = time.monotonic()
                ranking_id = orjson.loads(message.value())["ranking_id"]
                started = sent_at.pop(ranking_id, None)
                if started is not None:
                    latencies.append(received - started)
        consumer.close()

    try:
        # Wait for the worker: one event must come back as a ranking first.
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        reader = threading.Thread(target=read_rankings, daemon=True)
        reader.start()
        ready_probe = {"event_id": "ready", "site_id": "site0", "session_id": "ready",
                       "ts": int(time.time() * 1000), "item_id": "i0"}
        sent_at["rk-ready"] = time.monotonic()
        producer.produce(settings.topic("reco.clicks"), key=b"ready",
                         value=orjson.dumps(ready_probe))
        producer.flush(30)
        ready_by = time.monotonic() + 120
        while "rk-ready" in sent_at and time.monotonic() < ready_by:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; see {data_dir / 'worker.log'}")
            time.sleep(0.1)
        latencies.clear()
        events = mixed_events(seed=1, sessions=args.sessions, items=args.items)
        total = int(args.rate * (args.seconds + args.warmup_seconds))
        warmup = int(args.rate * args.warmup_seconds)
        measured_ids: set[str] = set()
        start = time.monotonic()
        for n in range(total):
            due = start + n / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            topic, value = next(events)
            value["ts"] = int(time.time() * 1000)
            ranking_id = f"rk-{value['event_id']}"
            if n >= warmup:
                measured_ids.add(ranking_id)
                sent_at[ranking_id] = time.monotonic()
            producer.produce(settings.topic(topic), key=value["session_id"].encode(),
                             value=orjson.dumps(value))
            producer.poll(0)
        producer.flush(30)
        achieved_rate = total / (time.monotonic() - start)
        deadline = time.monotonic() + 60
        while sent_at and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = len(sent_at)
    finally:
        done.set()
        worker.terminate()
        worker.wait(60)

    ordered = sorted(latencies)
    result = {
        "benchmark": "event_to_ranking_latency",
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, broker co-located",
        "target_rate_events_per_s": args.rate,
        "achieved_rate_events_per_s": round(achieved_rate, 1),
        "measured_events": len(measured_ids),
        "rankings_missing_after_60s": missing,
        "p50_ms": round(quantile(ordered, 0.50) * 1000, 2) if ordered else None,
        "p99_ms": round(quantile(ordered, 0.99) * 1000, 2) if ordered else None,
        "p999_ms": round(quantile(ordered, 0.999) * 1000, 2) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
    }
    out = args.out or RESULTS / f"latency-{args.rate}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
