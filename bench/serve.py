"""The rank service (``recoloop serve``) under load, with a broker and a worker on this machine.

    .venv/bin/python -m bench.serve [--sessions 100000] [--rates 1000,5000] [--seconds 20]
                                    [--fresh-rate 500] [--ingest-seconds 10]
    .venv/bin/python -m bench.serve --mixed [--sessions 10000] [--rates 1000]
                                    [--post-rate 200] [--seconds 20] [--no-worker]
    .venv/bin/python -m bench.serve --hostile 5000

- **Rank API latency**: ``--sessions`` session rankings are produced to ``reco.rankings``;
  once the service holds them all, ``GET .../ranking`` of a random session at a fixed rate
  (open loop: each request's latency counts from when it was due, so a service that falls
  behind shows it), p50/p99 per rate.
- **Freshness**: with a worker running, one click a request is posted to ``/v1/events`` at
  ``--fresh-rate`` and its ranking asked for at once with ``after_event_id`` (read your
  writes): from the post to the answer that has it, p50/p99.
- **Ingest**: batches of 100 events posted by 8 concurrent clients for ``--ingest-seconds``:
  events accepted (acknowledged by the broker) per second.

- **Reads under writes** (``--mixed``): ``GET .../ranking`` at the first of ``--rates``
  while ``--post-rate`` events a second are posted to the same replica, one per request,
  with a worker ranking them (``--no-worker``: without it); GET and POST p50/p99.
- **Hostile JSON** (``--hostile N``): the property test of
  ``tests/serve/test_hostile_property.py`` with N generated examples (needs ``.[dev]``).

The load generator is this process (asyncio, keep-alive connections), on the same 2 cores as
the service, the worker and the broker: the figures are this machine's, all co-located.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from app.contract.topics import RANKINGS
from app.serve.main import create_key
from bench.common import (
    RESULTS,
    BenchWorker,
    bootstrap_servers,
    delete_topics,
    free_port,
    fresh_topics,
    kafka_config,
    latency_summary,
    machine_info,
    start_worker,
    write_result,
)

SITE = "shop"
CONNECTIONS = 64


class Connection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for uvicorn's answers."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.key}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)


async def open_loop(port: int, key: str, rate: float, seconds: float,
                    one: Callable[[Connection, int], Any]) -> tuple[list[float], int]:
    """``one(connection, n)`` at ``rate`` a second for ``seconds``, on a pool of
    connections; each call's latency from when it was due, and how many failed."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(Connection(port, key))
    latencies: list[float] = []
    failures = 0

    async def run(n: int, due: float) -> None:
        nonlocal failures
        connection = await pool.get()
        try:
            ok = await one(connection, n)
            if ok:
                latencies.append(time.monotonic() - due)
            else:
                failures += 1
        except (OSError, asyncio.IncompleteReadError):
            connection.writer = None
            failures += 1
        finally:
            pool.put_nowait(connection)

    start = time.monotonic()
    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run(n, due)))
    await asyncio.gather(*tasks)
    return latencies, failures


def fill_rankings(settings: Any, sessions: int) -> None:
    producer = Producer({**kafka_config(settings.kafka.bootstrap_servers), "linger.ms": 20})
    now = int(time.time() * 1000)
    for n in range(sessions):
        value = {"ranking_id": f"rk-e{n}", "site_id": SITE, "session_id": f"s{n}", "ts": now,
                 "arm": "similar", "propensity": 0.8, "model_version": 1, "context": {},
                 "trigger_event_id": f"e{n}",
                 "items": [{"item_id": f"sku-{(n + k) % 5000}", "score": 1.0 - k / 10}
                           for k in range(10)]}
        producer.produce(settings.topic(RANKINGS), orjson.dumps(value), f"s{n}".encode())
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.serve: {what} did not happen in {timeout_s:.0f} s")
        time.sleep(0.5)


def _answers(port: int, path: str, key: str | None = None) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def rank_latency(port: int, key: str, sessions: int, rate: float, seconds: float
                 ) -> dict[str, Any]:
    rng = random.Random(rate)

    async def one(connection: Connection, n: int) -> bool:
        path = f"/v1/sites/{SITE}/sessions/s{rng.randrange(sessions)}/ranking"
        status, body = await connection.request("GET", path)
        return status == 200 and b'"source":"session"' in body

    started = time.monotonic()
    latencies, failures = asyncio.run(open_loop(port, key, rate, seconds, one))
    return {"target_rate_per_s": rate, "achieved_rate_per_s":
            round(len(latencies) / (time.monotonic() - started), 1), "answered": len(latencies),
            "failures": failures,
            **latency_summary(latencies)}


def freshness(port: int, key: str, rate: float, seconds: float) -> dict[str, Any]:
    async def one(connection: Connection, n: int) -> bool:
        event = {"type": "click", "event_id": f"f{n}", "site_id": SITE,
                 "session_id": f"fresh{n % 2_000}", "ts": int(time.time() * 1000),
                 "item_id": f"sku-{n % 500}"}
        status, _ = await connection.request("POST", "/v1/events",
                                             orjson.dumps({"events": [event]}))
        if status != 202:
            return False
        status, body = await connection.request(
            "GET", f"/v1/sites/{SITE}/sessions/{event['session_id']}/ranking"
            f"?after_event_id=f{n}&wait_ms=5000")
        return status == 200 and b'"after_event_reached":true' in body

    latencies, failures = asyncio.run(open_loop(port, key, rate, seconds, one))
    return {"rate_events_per_s": rate, "failures": failures, **latency_summary(latencies)}


def ingest(port: int, key: str, seconds: float, clients: int = 8) -> dict[str, Any]:
    counter = itertools.count()

    async def client(connection: Connection, until: float) -> int:
        accepted = 0
        while time.monotonic() < until:
            batch = [{"type": "detail_view", "event_id": f"i{next(counter)}", "site_id": SITE,
                      "session_id": f"ingest{n % 997}", "ts": int(time.time() * 1000),
                      "item_id": "sku-1"} for n in range(100)]
            status, _ = await connection.request("POST", "/v1/events",
                                                 orjson.dumps({"events": batch}))
            accepted += 100 if status == 202 else 0
        return accepted

    async def all_clients() -> int:
        until = time.monotonic() + seconds
        counts = await asyncio.gather(*(client(Connection(port, key), until)
                                        for _ in range(clients)))
        return sum(counts)

    started = time.monotonic()
    accepted = asyncio.run(all_clients())
    elapsed = time.monotonic() - started
    return {"batch_size": 100, "clients": clients, "events_accepted": accepted,
            "events_per_s": round(accepted / elapsed, 1)}


def mixed(port: int, key: str, sessions: int, get_rate: float, post_rate: float,
          seconds: float) -> dict[str, Any]:
    """GETs at ``get_rate`` while one-event POSTs go in at ``post_rate``, both open loop."""
    rng = random.Random(get_rate)

    async def read(connection: Connection, n: int) -> bool:
        path = f"/v1/sites/{SITE}/sessions/s{rng.randrange(sessions)}/ranking"
        status, body = await connection.request("GET", path)
        return status == 200 and b'"source":"session"' in body

    async def write(connection: Connection, n: int) -> bool:
        event = {"type": "click", "event_id": f"m{n}", "site_id": SITE,
                 "session_id": f"s{rng.randrange(sessions)}", "ts": int(time.time() * 1000),
                 "item_id": f"sku-{n % 500}"}
        status, _ = await connection.request("POST", "/v1/events",
                                             orjson.dumps({"events": [event]}))
        return status == 202

    async def both() -> list[tuple[list[float], int]]:
        return list(await asyncio.gather(open_loop(port, key, get_rate, seconds, read),
                                         open_loop(port, key, post_rate, seconds, write)))

    # The load generator's own full collections (tens of ms over its heap) would count as
    # the service's latency: none while it measures.
    gc.freeze()
    gc.disable()
    try:
        (gets, get_failures), (posts, post_failures) = asyncio.run(both())
    finally:
        gc.enable()
    return {"get_rate_per_s": get_rate, "post_events_per_s": post_rate,
            "get": {"failures": get_failures, **latency_summary(gets)},
            "post": {"failures": post_failures, **latency_summary(posts)}}


def hostile(examples: int) -> int:
    """The property test with ``examples`` examples, in a pytest of its own."""
    test = Path(__file__).resolve().parents[1] / "tests" / "serve" / "test_hostile_property.py"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(test)], env={**os.environ,
                                            "RECOLOOP_HOSTILE_EXAMPLES": str(examples)}
                          ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fresh-rate", type=float, default=500.0)
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mixed", action="store_true", help="only reads under writes")
    parser.add_argument("--post-rate", type=float, default=200.0)
    parser.add_argument("--no-worker", action="store_true")
    parser.add_argument("--hostile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    if args.hostile:
        return hostile(args.hostile)
    if args.mixed:
        return main_mixed(args, sys.argv[1:] if argv is None else argv)
    bootstrap = bootstrap_servers()
    settings = fresh_topics(bootstrap)
    port = free_port()
    service: BenchWorker | None = None
    worker: BenchWorker | None = None
    try:
        fill_rankings(settings, args.sessions)
        service = start_worker(settings, ("-m", "app.cli", "serve"),
                               RECOLOOP_SERVE_PORT=str(port),
                               RECOLOOP_SERVE_MAX_SESSIONS=str(max(args.sessions, 100_000)),
                               RECOLOOP_SERVE_KEY_RATE_PER_S="1000000")
        service.metrics_port = port
        key = create_key(settings, SITE)
        started = time.monotonic()
        wait_until(lambda: _answers(port, "/ready"), "the service's readiness")
        wait_until(lambda: service is not None and service.metric_sum(
            "recoloop_serve_sessions_in_memory") >= args.sessions, "reading every ranking")
        caught_up_s = time.monotonic() - started
        wait_until(lambda: _answers(port, f"/v1/sites/{SITE}/sessions/s0/ranking", key),
                   "the key")
        rss_mb = round(service.rss_bytes() / 2**20, 1)
        rank = [with_cpu(service, partial(rank_latency, port, key, args.sessions,
                                          float(rate), args.seconds))
                for rate in args.rates.split(",")]
        worker = start_worker(settings)
        wait_until(lambda: freshness(port, key, 1, 1)["failures"] == 0, "the worker's start")
        fresh = freshness(port, key, args.fresh_rate, args.seconds)
        taken = ingest(port, key, args.ingest_seconds)
    finally:
        for process in (service, worker):
            if process is not None:
                process.stop(remove_data=True)
    delete_topics(settings)
    write_result({"benchmark": "serve", "command": "python -m bench.serve " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": machine_info(bootstrap),
        "sessions": args.sessions, "service_rss_mb_holding_them": rss_mb,
        "service_start_to_all_sessions_s": round(caught_up_s, 1),
        "rank_api": rank, "freshness": fresh, "ingest": taken}, args.out or RESULTS / "serve.json")
    return 0


def with_cpu(service: BenchWorker, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s result with the service's CPU time per answered request."""
    before = service.cpu_seconds()
    result = run()
    requests = result["answered"] + result["failures"]
    result["service_cpu_ms_per_request"] = round(
        1000 * (service.cpu_seconds() - before) / max(requests, 1), 3)
    return result


def start_service(settings: Any, port: int, sessions: int) -> BenchWorker:
    service = start_worker(settings, ("-m", "app.cli", "serve"),
                           RECOLOOP_SERVE_PORT=str(port),
                           RECOLOOP_SERVE_MAX_SESSIONS=str(max(sessions, 100_000)),
                           RECOLOOP_SERVE_KEY_RATE_PER_S="1000000")
    service.metrics_port = port
    wait_until(lambda: _answers(port, "/ready"), "the service's readiness")
    wait_until(lambda: service.metric_sum("recoloop_serve_sessions_in_memory") >= sessions,
               "reading every ranking")
    return service


def main_mixed(args: argparse.Namespace, argv: list[str]) -> int:
    bootstrap = bootstrap_servers()
    settings = fresh_topics(bootstrap)
    port = free_port()
    processes: list[BenchWorker] = []
    try:
        fill_rankings(settings, args.sessions)
        processes.append(start_service(settings, port, args.sessions))
        key = create_key(settings, SITE)
        wait_until(lambda: _answers(port, f"/v1/sites/{SITE}/sessions/s0/ranking", key),
                   "the key")
        if not args.no_worker:
            processes.append(start_worker(settings))
            wait_until(lambda: freshness(port, key, 1, 1)["failures"] == 0,
                       "the worker's start")
        rate = float(args.rates.split(",")[0])
        named = dict(zip(("service", "worker"), processes, strict=False))
        started = {name: p.cpu_seconds() for name, p in named.items()}
        began = time.monotonic()
        result = mixed(port, key, args.sessions, rate, args.post_rate, args.seconds)
        elapsed = time.monotonic() - began
        # What each of ours took of one core meanwhile (the broker and this load
        # generator share the same cores).
        result["cpu_share_of_one_core"] = {
            name: round((p.cpu_seconds() - started[name]) / elapsed, 3)
            for name, p in named.items()}
    finally:
        for process in processes:
            process.stop(remove_data=True)
    delete_topics(settings)
    write_result({"benchmark": "serve-mixed", "command": "python -m bench.serve "
                  + " ".join(argv), "machine": machine_info(bootstrap),
                  "sessions": args.sessions, "worker": not args.no_worker, **result},
                 args.out or RESULTS / "serve-mixed.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
