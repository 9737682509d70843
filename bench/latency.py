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
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from app.settings import RANKINGS
from bench.common import (
    RESULTS,
    bootstrap_servers,
    fresh_topics,
    machine,
    start_worker,
    write_result,
)
from bench.shoppers import mixed_events


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

    bootstrap = bootstrap_servers()
    settings = fresh_topics(bootstrap, partitions=8)
    worker = start_worker(settings)
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
            worker.check_alive()
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
        worker.stop()

    ordered = sorted(latencies)
    result = {
        "benchmark": "event_to_ranking_latency",
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "target_rate_events_per_s": args.rate,
        "achieved_rate_events_per_s": round(achieved_rate, 1),
        "measured_events": len(measured_ids),
        "rankings_missing_after_60s": missing,
        "p50_ms": round(quantile(ordered, 0.50) * 1000, 2) if ordered else None,
        "p99_ms": round(quantile(ordered, 0.99) * 1000, 2) if ordered else None,
        "p999_ms": round(quantile(ordered, 0.999) * 1000, 2) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
    }
    write_result(result, args.out or RESULTS / f"latency-{args.rate}.json")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
