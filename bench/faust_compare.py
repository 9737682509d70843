"""Faust and Quix Streams against our runtime on one minimal stateful job, for throughput,
under kill -9, and for the time each kill stalls the output.

    pip install -e '.[bench]'   # faust-streaming, never a runtime dependency
    python3 -m venv /tmp/quixvenv   # Quix Streams: a venv of its own, see below
    /tmp/quixvenv/bin/pip install -r bench/quix_jobs/requirements.txt
    RECOLOOP_BOOTSTRAP_SERVERS=127.0.0.1:29092 python -m bench.faust_compare \\
        [--events 50000] [--kills 3] [--seed 7] [--only faust_eos_patched,ours] \\
        [--quix-python /tmp/quixvenv/bin/python] [--out bench/results/faust_compare.json]

Faust is needed only for the faust_* contenders and the Quix venv only for the quix_* ones
(quixstreams 3.28.1 requires confluent-kafka<2.13, recoloop >=2.16: they cannot share one
environment, so the Quix job runs under ``--quix-python``, default $RECOLOOP_QUIX_PYTHON).

The job, the same for every contender: an input topic of 8 partitions holding ``--events``
records keyed ``k<i % 1000>`` with values ``{"n": i}``, produced up front; for each input
record, add one to a per-key count in RocksDB-backed state and produce
``{"key", "n", "count"}`` (the new count) to an output topic. Fresh topics per run.

Contenders:

- ``faust_alo``: faust-streaming, ``processing_guarantee="at_least_once"``, a RocksDB table
  (``rocksdb://``, backed by rocksdict; bench/faust_jobs/counter.py);
- ``faust_eos``: the same with ``exactly_once``, as shipped;
- ``faust_eos_patched``: the same with bench/faust_jobs/patch.py applied (transactions routed
  by the source partition, see there);
- ``quix_eos``: Quix Streams 3.x, ``processing_guarantee="exactly-once"``, its RocksDB state
  and changelog, its defaults (a random transactional id per start, a commit every 5 s;
  bench/quix_jobs/counter.py);
- ``quix_eos_fixed_id``: the same with a fixed ``transactional.id``, so a restart fences the
  killed worker's transaction at once instead of waiting for the broker to time it out;
- ``quix_eos_fixed_id_every500``: the same, also committing every 500 messages (our batch);
- ``quix_eos_fixed_id_static``: a fixed transactional id and static group membership (a
  fixed ``group.instance.id``), the two settings our worker has;
- ``ours``: the way app/stream/runtime/ works, written out small for this job (the worker's
  own state codec takes only the engine's keys), with confluent-kafka and static group
  membership as the worker's: one transaction per consumed batch carries the outputs, a
  changelog record per changed key (to a compacted topic) and the input offsets; RocksDB
  (rocksdict) takes the changes only once it committed;
- ``bare``, ``bare_tx``: bench/bare_loop.py (no state), plain and ``--transactional``, for
  reference (throughput only).

Throughput: (outputs - 1) / (last output's timestamp - first's), and the wall time from the
start of the process until every input's output could be read (``read_committed``). The output
topic takes ``LogAppendTime`` (the broker's clock at append): Quix gives each output its
input's timestamp, which says nothing of when it was written.

kill -9: each contender but the bare loops is run again and SIGKILLed ``--kills`` times at
seeded random points (a fraction of the outputs seen), restarted each time with the same
group, transactional ids and data dir, until every input has an output. A kill waits until
the worker restarted after the previous one has output something (so that each kill
measures a recovery; none is made if the killed worker had already processed every input).
The output topic is then read ``read_committed``: duplicates (inputs with more than one
output), missing inputs, and per key the counts seen, which must be exactly 1..c for c
inputs of that key (a count repeated or past c: a table update applied twice; a gap: one
lost).

Recovery, per kill: from the SIGKILL to the first output record written after it (at an
offset at or past its partition's end offset at the kill) that the read_committed reader
got, so the restart, the group's rebalance, the state's restore and any transaction left open
that holds the last stable offset back all count (:func:`recovery`; the reader polls every
50 ms).

Results: a table on stdout and bench/results/faust_compare.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import Consumer, IsolationLevel, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from rocksdict import Options, Rdict, WriteBatch

from app.kafka import clients
from bench.common import (
    REPO,
    RESULTS,
    bootstrap_servers,
    delete_topics,
    kafka_config,
    machine_info,
    settings_for,
    write_result,
)

KEYS = 1_000
PARTITIONS = 8
CONTENDERS = ("faust_alo", "faust_eos", "faust_eos_patched", "quix_eos", "quix_eos_fixed_id",
              "quix_eos_fixed_id_every500", "quix_eos_fixed_id_static", "ours", "bare",
              "bare_tx")
STALL_S = 120.0  # no new output for this long: the contender is stuck (or lost inputs)
SESSION_TIMEOUT_MS = 10_000  # every contender's, so a killed member leaves the group soon
OFFSET_KEY = b"\x00changelog-offset"  # as app.stream.runtime.store: the last changelog offset held
WRITTEN_AT_KEY = b"\x00written-at-ms"


# -- topics and input ---------------------------------------------------------------------


def create_topics(bootstrap: str, names: list[str], compacted: tuple[str, ...] = (),
                  append_time: tuple[str, ...] = ()) -> None:
    admin = AdminClient(kafka_config(bootstrap))
    topics = [NewTopic(name, PARTITIONS, 1, config={
        **({"cleanup.policy": "compact"} if name in compacted else {}),
        **({"message.timestamp.type": "LogAppendTime"} if name in append_time else {})})
        for name in names]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        future.result(60)


def produce_input(bootstrap: str, topic: str, events: int) -> None:
    producer = Producer({**kafka_config(bootstrap), "linger.ms": 20, "acks": "all"})
    for i in range(events):
        while True:
            try:
                producer.produce(topic, key=b"k%d" % (i % KEYS), value=b'{"n":%d}' % i)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "input not delivered"


# -- our contender: run as a subprocess with --run-ours -----------------------------------


def run_ours(bootstrap: str, group: str, source: str, sink: str, changelog: str,
             data_dir: Path, batch: int = 500) -> int:
    """Consume, count, produce outputs and changelog, commit: one transaction per batch."""
    config = kafka_config(bootstrap)
    producer = Producer({**config, "transactional.id": f"{group}-tx", "linger.ms": 5})
    producer.init_transactions(30)  # fences a previous incarnation and aborts its transaction
    restorer = Consumer(clients.committed_consumer(settings_for(bootstrap), f"{group}-restorer"))
    states: dict[int, Rdict] = {}

    def restore(p: int) -> Rdict:
        from app.stream.runtime.store import restore_plan
        db = Rdict(str(data_dir / str(p)), options=Options(raw_mode=True))
        stored, written = db.get(OFFSET_KEY), db.get(WRITTEN_AT_KEY)
        tp = TopicPartition(changelog, p)
        low, high = restorer.get_watermark_offsets(tp, 30, False)
        plan = restore_plan(None if stored is None else int(stored),
                            None if written is None else int(written), low, high,
                            int(time.time() * 1000), 7 * 24 * 3600 * 1000)
        if plan.rebuild:
            db.close()
            Rdict.destroy(str(data_dir / str(p)))
            db = Rdict(str(data_dir / str(p)), options=Options(raw_mode=True))
        if plan.read_from is not None:
            restorer.assign([TopicPartition(changelog, p, plan.read_from)])
            while restorer.position([tp])[0].offset < high:
                wb, last = WriteBatch(raw_mode=True), None
                for m in restorer.consume(1000, 0.2):
                    if not m.error():
                        wb.put(m.key(), m.value())
                        last = m.offset()
                if last is not None:
                    wb.put(OFFSET_KEY, str(last).encode())
                    db.write(wb)
            restorer.unassign()
        return db

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            states.setdefault(tp.partition, restore(tp.partition))

    # Static membership, as app/stream/runtime/kafka.py's (group.instance.id: the worker's id): a
    # restarted worker takes its partitions back at once, without waiting for its killed
    # incarnation's session to time out and the group to rebalance.
    consumer = Consumer({**clients.committed_consumer(settings_for(bootstrap), group),
                         "group.instance.id": f"{group}-0", "auto.offset.reset": "earliest",
                         "session.timeout.ms": SESSION_TIMEOUT_MS})
    consumer.subscribe([source], on_assign=on_assign)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        messages = [m for m in consumer.consume(batch, timeout=0.1) if not m.error()]
        if not messages:
            continue
        producer.begin_transaction()
        changes: dict[int, dict[bytes, int]] = defaultdict(dict)
        after: dict[int, int] = {}
        for m in messages:
            p, key = m.partition(), m.key()
            pending = changes[p]
            count = pending.get(key) or int(states[p].get(key) or 0)
            pending[key] = count = count + 1
            after[p] = m.offset() + 1
            value = b'{"key":"%s","n":%d,"count":%d}' % (key, orjson.loads(m.value())["n"],
                                                         count)
            _produce(producer, sink, key, value)
        changelog_offsets: dict[int, int] = {}

        def delivered(err: KafkaError | None, msg: confluent_kafka.Message,
                      offsets: dict[int, int] = changelog_offsets) -> None:
            if err is None:
                offsets[msg.partition()] = max(msg.offset(), offsets.get(msg.partition(), -1))

        for p, pending in changes.items():
            for key, count in pending.items():
                _produce(producer, changelog, key, b"%d" % count, p, delivered)
        producer.flush(30)  # serves the changelog deliveries: their offsets
        producer.send_offsets_to_transaction(
            [TopicPartition(source, p, o) for p, o in after.items()],
            consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        now = str(int(time.time() * 1000)).encode()
        for p, pending in changes.items():  # only now: local state never runs ahead of Kafka
            wb = WriteBatch(raw_mode=True)
            for key, count in pending.items():
                wb.put(key, b"%d" % count)
            wb.put(OFFSET_KEY, str(changelog_offsets[p]).encode())
            wb.put(WRITTEN_AT_KEY, now)
            states[p].write(wb)
    consumer.close()
    for db in states.values():
        db.close()
    return 0


def _produce(producer: Producer, topic: str, key: bytes, value: bytes,
             partition: int = -1, on_delivery: Any = None) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


# -- running a contender ------------------------------------------------------------------


class Outputs:
    """The output topic read read_committed from the beginning, as it grows."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(clients.committed_consumer(settings_for(bootstrap),
                                                            uuid.uuid4().hex))
        self.consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                              for p in range(PARTITIONS)])
        self.records: list[dict[str, Any] | None] = []
        self.timestamps: list[int] = []
        self.seen: set[int] = set()
        self.arrivals: list[tuple[int, int, float]] = []  # (partition, offset, monotonic s)
        self.topic, self.admin = topic, AdminClient(kafka_config(bootstrap))

    def poll(self, timeout: float = 0.05) -> int:
        got = 0
        messages = self.consumer.consume(5_000, timeout)
        now = time.monotonic()
        for m in messages:
            if m.error():
                continue
            self.arrivals.append((m.partition(), m.offset(), now))
            value = orjson.loads(m.value())
            self.records.append(value if "n" in value else None)  # bare loops: no n
            self.seen.add(value["n"] if "n" in value else len(self.records))
            self.timestamps.append(m.timestamp()[1])
            got += 1
        return got

    def ends(self) -> dict[int, int]:
        """Per partition, the end offset (high watermark) now, open transactions included (a
        read_committed consumer's watermark query answers the last stable offset)."""
        futures = self.admin.list_offsets(
            {TopicPartition(self.topic, p): OffsetSpec.latest() for p in range(PARTITIONS)},
            isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=30)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def unread(self) -> dict[int, int]:
        """Per partition, records past our position: ones a read_committed reader cannot
        get to yet (an open transaction holds the last stable offset back)."""
        tps = self.consumer.position(self.consumer.assignment())
        return {tp.partition: self.consumer.get_watermark_offsets(tp, 30, False)[1]
                - max(tp.offset, 0) for tp in tps}

    def drain(self, timeout_s: float = 60.0) -> None:
        """Read on up to the end offsets as they are now (nothing more is being written)."""
        tps = self.consumer.assignment()
        ends = [self.consumer.get_watermark_offsets(tp, 30, False)[1] for tp in tps]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            positions = [tp.offset for tp in self.consumer.position(tps)]
            if all(p >= end or (p < 0 and end == 0) for p, end in zip(positions, ends,
                                                                        strict=True)):
                return
        raise TimeoutError("the output topic was not read to its end")

    def close(self) -> None:
        self.consumer.close()


def launch(name: str, bootstrap: str, names: dict[str, str], data_dir: Path,
           log: Path, quix_python: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECOLOOP_BOOTSTRAP_SERVERS": bootstrap}
    py = sys.executable
    if name.startswith("quix"):
        if not quix_python:
            raise SystemExit("quix_* contenders need --quix-python "
                             "(bench/quix_jobs/requirements.txt)")
        command = [quix_python, "-m", "bench.quix_jobs.counter"]
        env.update(QX_BROKER=bootstrap, QX_APP_ID=names["app"], QX_INPUT=names["in"],
                   QX_OUTPUT=names["out"], QX_DATA_DIR=str(data_dir),
                   QX_COMMIT_EVERY="500" if name.endswith("every500") else "0")
        if "fixed_id" in name:  # else Quix draws a random one at each start
            env["QX_PRODUCER_CONFIG"] = orjson.dumps(
                {"transactional.id": f"{names['app']}-tx"}).decode()
        if name.endswith("static"):
            env["QX_CONSUMER_CONFIG"] = orjson.dumps(
                {"group.instance.id": f"{names['app']}-0"}).decode()
    elif name.startswith("faust"):
        command = [py, "-m", "bench.faust_jobs.counter"]
        env.update(FC_BROKER=bootstrap, FC_APP_ID=names["app"], FC_INPUT=names["in"],
                   FC_OUTPUT=names["out"], FC_DATA_DIR=str(data_dir),
                   FC_GUARANTEE="at_least_once" if name == "faust_alo" else "exactly_once",
                   FC_PATCH="1" if name == "faust_eos_patched" else "0")
    elif name == "ours":
        command = [py, "-m", "bench.faust_compare", "--run-ours", names["app"], names["in"],
                   names["out"], names["changelog"], str(data_dir)]
    else:
        command = [py, "-m", "bench.bare_loop", "--group", names["app"], "--output",
                   names["out"], *(["--transactional"] if name == "bare_tx" else [])]
        env["RECOLOOP_TOPIC_PREFIX"] = names["prefix"]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def run(name: str, bootstrap: str, events: int, kills: int, rng: random.Random,
        quix_python: str | None = None) -> dict:
    """One run of one contender on fresh topics; ``kills`` SIGKILLs at random points."""
    from app.contract.topics import JOIN_INPUT_TOPICS
    prefix = f"fc{uuid.uuid4().hex[:6]}-"
    names = {"prefix": prefix, "app": f"{prefix}{name}", "out": f"{prefix}out",
             "changelog": f"{prefix}changelog",
             "in": f"{prefix}{JOIN_INPUT_TOPICS[0]}" if name.startswith("bare")
             else f"{prefix}in"}
    extra = [f"{prefix}{t}" for t in JOIN_INPUT_TOPICS[1:]] if name.startswith("bare") else []
    create_topics(bootstrap, [names["in"], names["out"], names["changelog"], *extra],
                  compacted=(names["changelog"],), append_time=(names["out"],))
    produce_input(bootstrap, names["in"], events)
    data_dir = Path(tempfile.mkdtemp(prefix=f"fc-{name}-"))
    log = Path(tempfile.gettempdir()) / f"fc-{names['app']}.log"  # kept: read it on errors
    at = sorted(rng.uniform(0.1, 0.9) for _ in range(kills))
    outputs = Outputs(bootstrap, names["out"])
    started = last_progress = time.monotonic()
    process, killed_at = launch(name, bootstrap, names, data_dir, log, quix_python), []
    kills_done: list[tuple[float, dict[int, int]]] = []  # (monotonic s, end offsets) per kill
    result: dict[str, Any] = {"contender": name, "events": events, "kills_planned": kills}
    try:
        armed, checked = True, 0  # the next kill waits for the restarted worker's first output
        while len(outputs.seen) < events:
            if outputs.poll():
                last_progress = time.monotonic()
            if not armed:
                ends = kills_done[-1][1]
                armed = any(o >= ends.get(p, 0) for p, o, _ in outputs.arrivals[checked:])
                checked = len(outputs.arrivals)
            if armed and at and len(outputs.seen) >= at[0] * events:
                time.sleep(rng.uniform(0.0, 0.5))  # somewhere inside the next batch
                killed = time.monotonic()
                process.kill()
                process.wait()
                kills_done.append((killed, outputs.ends()))  # what the killed one wrote is below
                killed_at.append(len(outputs.seen))
                at.pop(0)
                armed, checked = False, len(outputs.arrivals)
                process = launch(name, bootstrap, names, data_dir, log, quix_python)
            if process.poll() is not None:
                result["error"] = f"exited with {process.returncode}; see {log}"
                break
            if time.monotonic() - last_progress > STALL_S:
                result["error"] = f"no new output for {STALL_S:.0f} s; see {log}"
                result["unread_by_partition_at_stall"] = outputs.unread()  # behind the LSO
                break
        result["wall_s"] = round(time.monotonic() - started, 2)
        if process.poll() is None:
            time.sleep(3.0 if kills else 0.0)  # room for a late duplicate to show
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        outputs.drain()
    finally:
        outputs.close()
    result.update(killed_at_outputs=killed_at, **check(outputs.records, events))
    if kills:
        result["recovery"] = [recovery(t, ends, outputs.arrivals,
                                       kills_done[i + 1][0] if i + 1 < len(kills_done) else None)
                              for i, (t, ends) in enumerate(kills_done)]
    if kills == 0 and len(outputs.timestamps) > 1:
        span_s = (max(outputs.timestamps) - min(outputs.timestamps)) / 1000
        result["events_per_s"] = round((len(outputs.timestamps) - 1) / span_s, 1)
        result["events_per_s_incl_startup"] = round(events / result["wall_s"], 1)
    tail = log.read_text(errors="replace").strip().splitlines()[-12:]
    if "error" in result or any("Error" in line or "Traceback" in line for line in tail):
        result["log_tail"] = tail
    delete_topics(settings_for(bootstrap).replace(topic_prefix=prefix))
    # Quix names its changelog topic changelog__{group}--{input}--default (not under prefix).
    delete_topics(settings_for(bootstrap).replace(topic_prefix=f"changelog__{names['app']}"))
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


def recovery(killed: float, ends: dict[int, int], arrivals: list[tuple[int, int, float]],
             next_kill: float | None = None) -> dict[str, float | None]:
    """Seconds from a kill to the first output written after it that the reader got
    (``first_output_s``), and to the last partition's first such output
    (``all_partitions_s``, over the partitions that got one before ``next_kill``).

    ``ends``: each partition's end offset at the kill (records below it were written before);
    ``arrivals``: (partition, offset, when read) of every output record, on the same clock.

    >>> recovery(10.0, {0: 5, 1: 3}, [(0, 4, 10.1), (1, 3, 12.5), (0, 5, 13.0), (0, 6, 20.0)])
    {'first_output_s': 2.5, 'all_partitions_s': 3.0}
    >>> recovery(10.0, {0: 5}, [(0, 4, 10.1)])
    {'first_output_s': None, 'all_partitions_s': None}
    """
    first: dict[int, float] = {}
    for partition, offset, when in arrivals:
        if (offset >= ends.get(partition, 0) and (next_kill is None or when < next_kill)
                and when < first.get(partition, float("inf"))):
            first[partition] = when
    if not first:
        return {"first_output_s": None, "all_partitions_s": None}
    return {"first_output_s": round(min(first.values()) - killed, 2),
            "all_partitions_s": round(max(first.values()) - killed, 2)}


def check(outputs: list[dict[str, Any] | None], events: int) -> dict[str, Any]:
    """Duplicates, missing outputs and double-applied or lost table updates.

    >>> check([{"key": "k0", "n": 0, "count": 1}, {"key": "k0", "n": 0, "count": 2}], 1)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'outputs': 2, 'duplicates': 1, 'duplicate_records': 1, 'missing': 0,
     'repeated_counts': 0, 'counts_past_true': 1, 'count_gaps': 0,
     'keys_with_wrong_final_count': 1}
    """
    result: dict[str, Any] = {"outputs": len(outputs)}
    records = [r for r in outputs if r is not None]
    if not records:  # the bare loops' outputs carry no n
        result["missing"] = max(0, events - len(outputs))
        return result
    per_n = Counter(r["n"] for r in records)
    counts: dict[str, list[int]] = defaultdict(list)
    for r in records:
        counts[r["key"]].append(r["count"])
    expected = Counter(f"k{i % KEYS}" for i in range(events))
    repeated = past_true = gaps = wrong_final = 0
    for key, true in expected.items():
        seen = counts.get(key, [])
        repeated += len(seen) - len(set(seen))
        past_true += sum(1 for c in set(seen) if c > true)
        gaps += len(set(range(1, true + 1)) - set(seen))
        wrong_final += max(seen, default=0) != true
    result.update(duplicates=sum(1 for c in per_n.values() if c > 1),
                  duplicate_records=sum(c - 1 for c in per_n.values() if c > 1),
                  missing=events - len(per_n),
                  repeated_counts=repeated, counts_past_true=past_true, count_gaps=gaps,
                  keys_with_wrong_final_count=wrong_final)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per kill -9 run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", default=None,
                        help=f"comma-separated, of {', '.join(CONTENDERS)} (default: all, the"
                             " quix_* ones only with --quix-python)")
    parser.add_argument("--no-kill-runs", action="store_true")
    parser.add_argument("--quix-python", default=os.environ.get("RECOLOOP_QUIX_PYTHON"),
                        help="the interpreter of a venv with bench/quix_jobs/requirements.txt"
                             " (for the quix_* contenders; default $RECOLOOP_QUIX_PYTHON)")
    parser.add_argument("--out", type=Path, default=RESULTS / "faust_compare.json")
    parser.add_argument("--run-ours", nargs=5, metavar=("GROUP", "IN", "OUT", "LOG", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_ours:
        group, source, sink, changelog, data_dir = args.run_ours
        return run_ours(os.environ["RECOLOOP_BOOTSTRAP_SERVERS"], group, source, sink,
                        changelog, Path(data_dir))
    only = default_contenders(args.quix_python) if args.only is None else [
        c for c in args.only.split(",") if c]
    unknown = set(only) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")
    versions: dict[str, str] = {"rocksdict": _version("rocksdict")}
    if any(n.startswith("faust") for n in only):
        if importlib.util.find_spec("faust") is None:
            print("faust-streaming is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return 2
        versions.update({p: _version(p) for p in ("faust-streaming", "aiokafka",
                                                  "mode-streaming")})
    if any(n.startswith("quix") for n in only):
        quix = quix_versions(args.quix_python)
        if quix is None:
            print("the quix_* contenders need --quix-python, a venv's interpreter with "
                  "bench/quix_jobs/requirements.txt installed", file=sys.stderr)
            return 2
        versions.update(quix)
    bootstrap = bootstrap_servers()
    rng = random.Random(args.seed)
    throughput, kill_runs = [], []
    for name in only:
        print(f"{name}: throughput run of {args.events} events...", file=sys.stderr)
        throughput.append(run(name, bootstrap, args.events, 0, rng, args.quix_python))
    if not args.no_kill_runs and args.kills:
        for name in [n for n in only if not n.startswith("bare")]:
            print(f"{name}: kill -9 run ({args.kills} kills)...", file=sys.stderr)
            kill_runs.append(run(name, bootstrap, args.events, args.kills, rng,
                                 args.quix_python))
    print_table(throughput, kill_runs)
    write_result({"benchmark": "faust_compare", "events": args.events, "keys": KEYS,
                  "partitions": PARTITIONS, "kills": args.kills, "seed": args.seed,
                  "contenders": only, "versions": versions,
                  "machine": machine_info(bootstrap), "throughput": throughput,
                  "kill_runs": kill_runs}, args.out)
    return 0


def default_contenders(quix_python: str | None) -> list[str]:
    """Every contender; the Quix ones only when there is a Quix venv to run them in.

    >>> "quix_eos" in default_contenders(None), "quix_eos" in default_contenders("/q/python")
    (False, True)
    """
    return [c for c in CONTENDERS if quix_python or not c.startswith("quix")]


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def quix_versions(python: str | None) -> dict[str, str] | None:
    """quixstreams' and its confluent-kafka's versions in the Quix venv, or None without one."""
    if not python:
        return None
    probe = subprocess.run([python, "-c", "import confluent_kafka, importlib.metadata as m; "
                            "print(m.version('quixstreams'), m.version('confluent-kafka'), "
                            "confluent_kafka.libversion()[0])"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    quix, kafka, librdkafka = probe.stdout.split()
    return {"quixstreams": quix, "confluent-kafka (quix venv)": kafka,
            "librdkafka (quix venv)": librdkafka}


def print_table(throughput: list[dict], kill_runs: list[dict]) -> None:
    print(f"\n{'contender':<26} {'events/s':>9} {'incl. startup':>13} {'outputs':>8}"
          f" {'dup':>5} {'missing':>7}  error", file=sys.stderr)
    for r in throughput:
        print(f"{r['contender']:<26} {r.get('events_per_s', '-')!s:>9}"
              f" {r.get('events_per_s_incl_startup', '-')!s:>13} {r['outputs']:>8}"
              f" {r.get('duplicates', '-')!s:>5} {r['missing']:>7}  {r.get('error', '')}",
              file=sys.stderr)
    if kill_runs:
        print(f"\n{'kill -9':<26} {'kills':>5} {'dup':>5} {'missing':>7} {'repeated':>8}"
              f" {'past true':>9} {'gaps':>5} {'bad final':>9} {'recovery s':>18}  error",
              file=sys.stderr)
    for r in kill_runs:
        print(f"{r['contender']:<26} {len(r['killed_at_outputs']):>5} {r['duplicates']:>5}"
              f" {r['missing']:>7} {r['repeated_counts']:>8} {r['counts_past_true']:>9}"
              f" {r['count_gaps']:>5} {r['keys_with_wrong_final_count']:>9}"
              f" {recovery_column(r.get('recovery', [])):>18}  {r.get('error', '')}",
              file=sys.stderr)


def recovery_column(recoveries: list[dict[str, float | None]]) -> str:
    """Each kill's seconds to the first output after it, ``-`` for none.

    >>> recovery_column([{"first_output_s": 61.24}, {"first_output_s": None}])
    '61.2 / -'
    """
    return " / ".join("-" if r["first_output_s"] is None else f"{r['first_output_s']:.1f}"
                      for r in recoveries)


if __name__ == "__main__":
    sys.exit(main())
