"""Event-to-ranking latency of one worker at a fixed input rate.

    .venv/bin/python -m bench.latency --rate 2000 --seconds 30

Starts the local broker unless RECOLOOP_BOOTSTRAP_SERVERS is set, creates topics under a
fresh prefix, runs one ``recoloop worker`` process, produces the mixed stream of
``bench/shoppers.py`` at ``--rate`` events/s with every session event expecting its ranking
``rk-<event_id>``, and measures from the moment each event was handed to the producer to the
moment its ranking was read from ``reco.rankings``. Results go to ``bench/results/``.
``bench.suite`` calls :func:`run` for a list of rates.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from app.contract.topics import RANKINGS
from app.kafka import clients
from bench.common import (
    REPO,
    RESULTS,
    bootstrap_servers,
    delete_topics,
    fresh_topics,
    kafka_config,
    latency_summary,
    machine,
    start_worker,
    write_result,
)
from bench.shoppers import mixed_events

MISSING_WAIT_S = 60.0


def run(bootstrap: str, rate: int, seconds: float, warmup_seconds: float = 5.0,
        sessions: int = 5_000, items: int = 2_000, worker_checkout: Path = REPO
        ) -> dict[str, Any]:
    """One worker (run from ``worker_checkout``) on fresh topics, fed at ``rate`` events/s
    for ``warmup_seconds`` (not measured) plus ``seconds``; the latency figures of the
    measured events."""
    settings = fresh_topics(bootstrap, partitions=8)
    worker = start_worker(settings, cwd=worker_checkout)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()
    finished = False

    def read_rankings() -> None:
        consumer = Consumer({**clients.committed_consumer(settings, uuid.uuid4().hex),
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
        producer = Producer({**kafka_config(bootstrap), "linger.ms": 1})
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
        events = mixed_events(seed=1, sessions=sessions, items=items)
        total = int(rate * (seconds + warmup_seconds))
        warmup = int(rate * warmup_seconds)
        measured = 0
        start = time.monotonic()
        for n in range(total):
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            topic, value = next(events)
            value["ts"] = int(time.time() * 1000)
            if n >= warmup:
                measured += 1
                sent_at[f"rk-{value['event_id']}"] = time.monotonic()
            producer.produce(settings.topic(topic), key=value["session_id"].encode(),
                             value=orjson.dumps(value))
            producer.poll(0)
        producer.flush(30)
        achieved_rate = total / (time.monotonic() - start)
        deadline = time.monotonic() + MISSING_WAIT_S
        while sent_at and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = len(sent_at)
        finished = True
    finally:
        done.set()
        worker.stop(remove_data=finished)  # a failed run keeps its log
    reader.join(10)
    delete_topics(settings)

    return {
        "target_rate_events_per_s": rate,
        "achieved_rate_events_per_s": round(achieved_rate, 1),
        "measured_events": measured,
        "rankings_missing_after_60s": missing,
        **latency_summary(latencies),
    }


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

    figures = run(bootstrap_servers(), args.rate, args.seconds, args.warmup_seconds,
                  args.sessions, args.items)
    result = {
        "benchmark": "event_to_ranking_latency",
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    write_result(result, args.out or RESULTS / f"latency-{args.rate}.json")
    return 0 if figures["rankings_missing_after_60s"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
