"""Restore onto an empty data directory: how long a new worker takes to read its changelog.

    .venv/bin/python -m bench.restore [--records 1000000] [--partitions 8]

A worker that comes up without its RocksDB directory (a new pod, a lost volume) rebuilds
its partitions' state from the changelog before it is ready. This fills the changelog of
fresh topics with ``--records`` session records (distinct keys, their values real session
states made by the engine from the benchmark's mixed events, so each one decodes as a
restore decodes it), then starts one ``recoloop worker`` on an empty data directory and
times it: from start to ``/ready``, and the restore itself as the worker logs it
("state restored in ... s"); records/s is the records restored over the latter.
Starts the local broker unless RECOLOOP_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import orjson
from confluent_kafka import Producer

from app.contract.codec import EncodedStore
from app.contract.decode import InvalidInput, decode
from app.contract.topics import Topics
from app.core.catalog import StoreCatalog
from app.core.engine import Engine, session_key
from app.core.events import Origin
from app.core.keys import key_kind
from app.core.store import MemoryStore
from app.settings import Settings
from app.stream.worker import prepare
from bench.common import (
    RESULTS,
    bootstrap_servers,
    delete_topics,
    free_port,
    fresh_topics,
    kafka_config,
    machine_info,
    start_worker,
    write_result,
)
from bench.engine_inprocess import SitePolicies
from bench.shoppers import mixed_events


def session_values(settings: Settings, events: int = 20_000) -> list[bytes]:
    """Encoded session states, as the engine leaves them after ``events`` mixed events."""
    engine = Engine(settings, SitePolicies(settings), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    now_ms = int(time.time() * 1000)
    for n, (topic, value) in enumerate(itertools.islice(mixed_events(1, 2_000, 2_000), events)):
        raw = orjson.dumps({**value, "ts": now_ms - (events - n) * 10})
        origin = Origin(topic, 0, n, value["session_id"].encode(), raw)
        try:
            engine.handle(store, replace(decode(topic, origin, now_ms + 300_000)))
        except InvalidInput:
            continue
    return [raw for key, raw in store.data.items() if key_kind(key) == "session"]


def fill_changelog(settings: Settings, partitions: int, records: int) -> None:
    """``records`` distinct session keys spread over the changelog's partitions."""
    values = session_values(settings)
    producer = Producer({**kafka_config(settings.kafka.bootstrap_servers), "linger.ms": 50,
                         "queue.buffering.max.messages": 500_000, "compression.type": "lz4"})
    topic = Topics.of(settings).changelog
    for n in range(records):
        key = session_key("bench", f"restore-{n}").encode()
        while True:
            try:
                producer.produce(topic, key=key, value=values[n % len(values)],
                                 partition=n % partitions)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(120) == 0, "changelog records not delivered"


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run(bootstrap: str, records: int, partitions: int) -> dict[str, Any]:
    settings = fresh_topics(bootstrap, partitions=partitions)
    prepare(settings)  # the worker's internal topics, the changelog among them
    filled = time.monotonic()
    fill_changelog(settings, partitions, records)
    fill_s = time.monotonic() - filled
    web_port = free_port()
    started = time.monotonic()
    worker = start_worker(settings, RECOLOOP_WEB_PORT=str(web_port), RECOLOOP_LOG_LEVEL="info")
    try:
        while not ready(web_port):
            worker.check_alive()
            if time.monotonic() - started > 1_800:
                raise SystemExit(f"not ready after 30 min; see {worker.data_dir}")
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        restored = worker.metric_sum("recoloop_state_restored_records_total")
        rss = worker.rss_bytes()
        log = (worker.data_dir / "worker.log").read_text()
    finally:
        worker.stop(remove_data=True)
        delete_topics(settings)
    restore_s = sum(float(s) for s in re.findall(r"state restored in ([0-9.]+) s", log))
    return {"records": records, "partitions": partitions, "records_restored": int(restored),
            "fill_s": round(fill_s, 1), "start_to_ready_s": round(ready_s, 1),
            "restore_s": round(restore_s, 1),
            "records_per_s": round(restored / restore_s) if restore_s else None,
            "rss_mb_when_ready": round(rss / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args(argv)
    bootstrap = bootstrap_servers()
    figures = run(bootstrap, args.records, args.partitions)
    command = " ".join(["python -m bench.restore", *(sys.argv[1:] if argv is None else argv)])
    write_result({"command": command, "machine": machine_info(bootstrap), "figures": figures},
                 RESULTS / "restore.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
