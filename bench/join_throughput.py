"""Throughput of one worker with 20,000 displays pending in the join, and memory per display.

    .venv/bin/python -m bench.join_throughput

Starts the local broker unless RECOLOOP_BOOTSTRAP_SERVERS is set, creates topics (8
partitions) under a fresh prefix and runs one ``recoloop worker`` with default settings
(20 s window, 5 s grace). All event times are within 20 s of ``t0``, so no display closes
by its window during the run; every topic is produced in event-time order.

1. Preload: ``--pending`` displays (5 items each, from 2,000) of ``--sessions`` sessions,
   event times within the first second, produced at once. The worker has taken them when
   their rankings are all back and ``recoloop_join_pending_displays`` sums to ``--pending``.
   Memory per pending display: the worker's RSS (VmRSS) after that minus its RSS once it
   had answered a probe, over ``--pending``. It includes everything those displays brought
   with them: the sessions, the rankings issued to them, RocksDB and the state cache.
2. Burst: ``--burst`` events produced as fast as possible, event times spread over
   t0 + 1 s .. t0 + 19 s: a third new displays, a third basket adds (maximum reward: each
   closes one preloaded display), a sixth clicks and a sixth detail views on other
   preloaded displays; so about ``--pending`` displays stay pending throughout. Reactions
   name their display (``served_id``). Throughput: burst events over the time from the
   first produce to reading the burst's last ranking (``rk-<event_id>``) back.
3. Secondary, no Kafka: the preload through ``Engine.handle`` in this process (the worker's
   caching store over a pickling dict): pickled session state and Python heap (tracemalloc)
   per pending display.

Results go to ``bench/results/join-throughput.json``.
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, RANKINGS, SERVED
from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.events import Served
from app.core.store import MemoryStore
from app.settings import Settings
from app.stream.state import PartitionState
from bench.common import (
    RESULTS,
    BenchWorker,
    Record,
    bootstrap_servers,
    fresh_topics,
    kafka_config,
    machine,
    send_all,
    start_worker,
    write_result,
)
from bench.decision_cost import Policies
from bench.shoppers import CATEGORIES, CONTEXTS

PENDING_GAUGE = "recoloop_join_pending_displays"
ITEMS = 2_000
SITES = 2


def preload_displays(t0: int, pending: int, sessions: int, rng: random.Random) -> list[Record]:
    """``pending`` displays, event times within [t0, t0 + 1 s), round-robin over sessions."""
    records = []
    for n in range(pending):
        session = n % sessions
        first = rng.randrange(ITEMS)
        records.append((SERVED, {
            "event_id": f"p{n}", "site_id": f"site{session % SITES}",
            "session_id": f"s{session}", "ts": t0 + n * 1_000 // pending,
            "items": [f"i{(first + k) % ITEMS}" for k in range(5)],
            "context": CONTEXTS[session % len(CONTEXTS)]}))
    return records


def burst_events(t0: int, preload: list[Record], burst: int, sessions: int,
                 rng: random.Random) -> list[Record]:
    """New displays, and reactions that each answer a distinct preloaded display."""
    targets = rng.sample([value for _, value in preload], min(len(preload), burst * 2 // 3))
    closing, touching = targets[:burst // 3], targets[burst // 3:]
    kinds = [SERVED] * (burst - len(closing) - len(touching)) + [BASKET_ADDS] * len(closing)
    kinds += [CLICKS, DETAIL_VIEWS] * (len(touching) // 2) + [CLICKS] * (len(touching) % 2)
    rng.shuffle(kinds)
    touched = iter(touching)  # one display gets a click or a view, never both
    answers = {BASKET_ADDS: iter(closing), CLICKS: touched, DETAIL_VIEWS: touched}
    records = []
    for n, topic in enumerate(kinds):
        ts = t0 + 1_000 + n * 18_000 // burst
        if topic == SERVED:
            session = rng.randrange(sessions)
            first = rng.randrange(ITEMS)
            records.append((SERVED, {
                "event_id": f"b{n}", "site_id": f"site{session % SITES}",
                "session_id": f"s{session}", "ts": ts,
                "items": [f"i{(first + k) % ITEMS}" for k in range(5)],
                "context": CONTEXTS[session % len(CONTEXTS)]}))
            continue
        display = next(answers[topic])
        item = display["items"][rng.randrange(5)]
        records.append((topic, {
            "event_id": f"b{n}", "site_id": display["site_id"],
            "session_id": display["session_id"], "ts": ts, "item_id": item,
            "served_id": display["event_id"], "category": CATEGORIES[int(item[1:]) % 6],
            "context": display["context"]}))
    return records


class Rankings:
    """Reads ``reco.rankings`` from the start; notes when the last of a set of ids came."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({**settings.kafka_config(),
                                  "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                                  "fetch.wait.max.ms": 5})
        self.consumer.subscribe([settings.topic(RANKINGS)])

    def wait_for(self, ranking_ids: set[str], worker: BenchWorker, timeout_s: float) -> float:
        """Monotonic time at which the last of ``ranking_ids`` was read."""
        waiting = set(ranking_ids)
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(waiting)} rankings missing after {timeout_s} s")
            worker.check_alive()
            for message in self.consumer.consume(2_000, timeout=0.2):
                value = message.value()
                if message.error() is None and value:
                    waiting.discard(orjson.loads(value)["ranking_id"])
        return time.monotonic()

    def close(self) -> None:
        self.consumer.close()


def wait_for_gauge(worker: BenchWorker, name: str, value: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (current := worker.metric_sum(name)) != value and time.monotonic() < deadline:
        time.sleep(0.2)
    return current


def in_process_sizes(preload: list[Record]) -> dict[str, float]:
    """The preload through the engine alone: state sizes per pending display."""
    settings = Settings()
    engine = Engine(settings, Policies(settings), StoreCatalog(MemoryStore()))
    store = PartitionState(Path(tempfile.mkdtemp(prefix="recoloop-bench-")) / "0")
    events = [Served.from_value(value) for _, value in preload]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for event in events:
        engine.handle(store, event)
    records = {key.decode(): value or b"" for key, value in store.changes()}
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    sessions = {k: v for k, v in records.items() if k.startswith("session:")}
    joins = sum(len(pickle.dumps(store.get(k).join)) for k in sessions)
    pending = len(events)
    return {
        "python_heap_bytes_per_pending_display": round(heap / pending),
        "pickled_session_bytes_per_pending_display": round(
            sum(len(v) for v in sessions.values()) / pending),
        "pickled_join_state_bytes_per_pending_display": round(joins / pending),
        "pickled_state_bytes_per_pending_display_all_keys": round(
            sum(len(v) for v in records.values()) / pending),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=20_000, help="displays kept pending")
    parser.add_argument("--burst", type=int, default=30_000, help="events timed")
    parser.add_argument("--sessions", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "join-throughput.json")
    args = parser.parse_args()

    bootstrap = bootstrap_servers()
    settings = fresh_topics(bootstrap, partitions=8)
    rng = random.Random(1)
    t0 = int(time.time() * 1000)
    preload = preload_displays(t0, args.pending, args.sessions, rng)
    burst = burst_events(t0, preload, args.burst, args.sessions, rng)
    worker = start_worker(settings)
    rankings = Rankings(settings)
    producer = Producer({**kafka_config(bootstrap), "linger.ms": 5,
                         "queue.buffering.max.messages": 200_000})
    try:
        probe = {"event_id": "ready", "site_id": "site0", "session_id": "ready", "ts": t0,
                 "item_id": "i0"}
        send_all(producer, settings, [(CLICKS, probe)])
        rankings.wait_for({"rk-ready"}, worker, timeout_s=120)
        rss_started = worker.rss_bytes()

        started = time.monotonic()
        send_all(producer, settings, preload)
        preloaded = rankings.wait_for({f"rk-{v['event_id']}" for _, v in preload}, worker,
                                      timeout_s=600)
        pending_before = wait_for_gauge(worker, PENDING_GAUGE, args.pending, timeout_s=30)
        rss_pending = worker.rss_bytes()

        burst_started = time.monotonic()
        send_all(producer, settings, burst)
        produced = time.monotonic()
        burst_done = rankings.wait_for({f"rk-{v['event_id']}" for _, v in burst}, worker,
                                       timeout_s=600)
        pending_after = worker.metric_sum(PENDING_GAUGE)
        closed = {by: worker.metric_sum("recoloop_decisions_closed_total", f'closed_by="{by}"')
                  for by in ("max_reward", "window", "idle")}
        rss_after = worker.rss_bytes()
    finally:
        rankings.close()
        worker.stop()

    seconds = burst_done - burst_started
    result = {
        "benchmark": "join_throughput",
        "command": " ".join(["python -m bench.join_throughput", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": "defaults: 8 partitions, window 20 s, grace 5 s, idle close 5 s",
        "pending_displays_at_burst_start": pending_before,
        "pending_displays_at_burst_end": pending_after,
        "burst_events": len(burst),
        "burst_mix": "1/3 displays, 1/3 basket adds closing a pending display, "
                     "1/6 clicks, 1/6 detail views",
        "burst_seconds": round(seconds, 2),
        "burst_produce_seconds": round(produced - burst_started, 2),
        "events_per_s_at_pending": round(len(burst) / seconds, 1),
        "preload_displays_per_s": round(args.pending / (preloaded - started), 1),
        "decisions_closed": closed,
        "rss_mb_started": round(rss_started / 2**20, 1),
        "rss_mb_pending": round(rss_pending / 2**20, 1),
        "rss_mb_after_burst": round(rss_after / 2**20, 1),
        "rss_bytes_per_pending_display": round((rss_pending - rss_started) / args.pending),
        **in_process_sizes(preload),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
