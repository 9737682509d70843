"""The reward join's edge cases through a real broker and a real ``recoloop worker`` process.

One worker serves the whole module, with a short window (2 s window, 1 s grace, 2 s idle
close). Stream time is a watermark per partition, so each scenario gets an input partition
of its own: one scenario's events never move another's clock. Events are keyed by their
session as the contract requires; the partition is named explicitly (the same one on every
input topic, as a site's own partitioner would), so which scenarios share a partition does
not depend on the client's hash function.

Every scenario is produced as soon as the worker answers, all together (a scenario's
``batches`` are flushed in order: batch 1 of every scenario only after batch 0 of all), so
the module waits once for the slowest close rather than once per test. Each test then reads
what its own displays got on ``reco.rewards`` / ``reco.dead-letter`` (read committed).
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message, Producer

from app.contract.topics import (
    BASKET_ADDS,
    CLICKS,
    DEAD_LETTER,
    DETAIL_VIEWS,
    RANKINGS,
    REWARDS,
    SERVED,
)
from app.kafka import clients, topic_admin
from app.settings import Settings
from tests.kafka_io import TopicReader, collect, now_ms, settings_of, values
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S, GRACE_S, IDLE_CLOSE_S = 2, 1, 2
WINDOW_MS, GRACE_MS = WINDOW_S * 1000, GRACE_S * 1000
PARTITIONS = 11
PROBE_PARTITION = 0  # the readiness probe's click
WAIT_S = 60.0  # upper bound of every wait; the slowest close (idle) takes about 6 s
IDLE_BOUND_S = 20.0
SITE = "shop"

Record = tuple[str, dict[str, Any]]  # (logical topic, value)


def served(event_id: str, session: str, ts: int, items: list[str]) -> Record:
    return SERVED, {"event_id": event_id, "site_id": SITE, "session_id": session, "ts": ts,
                    "items": items}


def reaction(topic: str, event_id: str, session: str, ts: int, item: str,
             **extra: Any) -> Record:
    return topic, {"event_id": event_id, "site_id": SITE, "session_id": session, "ts": ts,
                   "item_id": item, **extra}


def encode(record: Record) -> bytes:
    return orjson.dumps(record[1])


def producer_for(bootstrap: str) -> Producer:
    return Producer({**clients.idempotent_producer(settings_of(bootstrap)), "linger.ms": 1})


def send(producer: Producer, prefix: str, partition: int, records: list[Record]) -> None:
    """Queue records keyed by session for ``partition`` of their topics (flush to send)."""
    for topic, value in records:
        producer.produce(prefix + topic, key=value["session_id"].encode(),
                         value=orjson.dumps(value), partition=partition)


def flush(producer: Producer) -> None:
    assert producer.flush(30) == 0, "records were not delivered"


# -- scenarios: each builds its events from the time ``t`` they are produced at ----------------

Build = Callable[[int], list[list[Record]]]  # t -> batches of records, sent in order


@dataclass(frozen=True)
class Scenario:
    partition: int
    build: Build


SCENARIOS: dict[str, Scenario] = {}


def scenario(partition: int) -> Callable[[Build], Build]:
    """Register a scenario's events (batches produced in order) on its own partition."""
    def register(build: Build) -> Build:
        assert partition != PROBE_PARTITION
        assert all(s.partition != partition for s in SCENARIOS.values())
        SCENARIOS[build.__name__] = Scenario(partition, build)
        return build
    return register


@dataclass
class JoinRun:
    """The module's worker, the scenarios as produced, and everything read back so far."""

    settings: Settings
    worker: WorkerProcess
    producer: Producer
    t: int = 0
    produced: dict[str, list[Record]] = field(default_factory=dict)  # per scenario
    reader: TopicReader | None = None

    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    def send(self, name: str, records: list[Record]) -> None:
        """Queue a scenario's records on its partition; :meth:`flush` sends them."""
        send(self.producer, self.settings.kafka.topic_prefix, SCENARIOS[name].partition, records)
        self.produced.setdefault(name, []).extend(records)

    def flush(self) -> None:
        flush(self.producer)

    def displays(self, name: str | None = None) -> set[str]:
        """Event ids of the displays produced (by one scenario, or by all)."""
        names = [name] if name else list(self.produced)
        return {v["event_id"] for n in names for topic, v in self.produced[n] if topic == SERVED}

    def rewards(self) -> list[dict[str, Any]]:
        assert self.reader is not None
        return values(self.reader.messages, self.topic(REWARDS))

    def dead_letters(self) -> list[dict[str, Any]]:
        assert self.reader is not None
        return values(self.reader.messages, self.topic(DEAD_LETTER))

    def wait_for(self, done: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        assert self.reader is not None
        self.reader.read_until(lambda _: done(), timeout_s)

    def rewards_of(self, *served_ids: str, timeout_s: float = WAIT_S
                   ) -> dict[str, list[dict[str, Any]]]:
        """Every rewards record of these displays, once each has at least one."""
        def by_id() -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {s: [] for s in served_ids}
            for record in self.rewards():
                if record["served_id"] in found:
                    found[record["served_id"]].append(record)
            return found
        self.wait_for(lambda: all(by_id().values()), timeout_s)
        found = by_id()
        missing = [s for s, records in found.items() if not records]
        assert not missing, f"no rewards record for {missing}\n{self.worker.log_tail()}"
        return found

    def one_reward(self, served_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        [record] = self.rewards_of(served_id, timeout_s=timeout_s)[served_id]
        return record


@pytest.fixture(scope="module")
def join_run(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[JoinRun]:
    settings = Settings.of(bootstrap_servers=bootstrap_servers,
                        topic_prefix=f"t{uuid.uuid4().hex[:8]}-", partitions=PARTITIONS)
    report = topic_admin.apply(settings)
    assert report.ok, report.describe()
    tmp: Path = tmp_path_factory.mktemp("join-semantics")
    worker = WorkerProcess(bootstrap_servers, settings.kafka.topic_prefix, tmp / "worker-data",
                           tmp / "worker.log", reward_window_s=str(WINDOW_S),
                           grace_s=str(GRACE_S), idle_close_s=str(IDLE_CLOSE_S),
                           partitions=str(PARTITIONS)).start()
    run = JoinRun(settings, worker, producer_for(bootstrap_servers))
    try:
        # Live, not a backlog: the scenarios go out once the worker has answered a probe.
        probe = reaction(CLICKS, "probe", "probe", now_ms(), "p")
        send(run.producer, settings.kafka.topic_prefix, PROBE_PARTITION, [probe])
        run.flush()
        def answered(messages: list[Message]) -> bool:
            rankings = values(messages, settings.topic(RANKINGS))
            return any(r["ranking_id"] == "rk-probe" for r in rankings)

        messages = collect(bootstrap_servers, [settings.topic(RANKINGS)], answered, 120)
        assert answered(messages), worker.log_tail()

        run.t = now_ms()
        built = {name: s.build(run.t) for name, s in SCENARIOS.items()}
        for step in range(max(len(batches) for batches in built.values())):
            for name, batches in built.items():
                if step < len(batches):
                    run.send(name, batches[step])
            run.flush()  # a batch is on the broker before the next one is sent
        run.reader = TopicReader(bootstrap_servers, [settings.topic(REWARDS),
                                                     settings.topic(DEAD_LETTER)])
        yield run
    finally:
        if run.reader is not None:
            run.reader.close()
        worker.stop()


# -- maximum reward ---------------------------------------------------------------------------

@scenario(partition=1)
def max_reward(t: int) -> list[list[Record]]:
    return [[served("mr-d", "mr", t, ["a", "b"]),
             reaction(BASKET_ADDS, "mr-r", "mr", t + 1_500, "b")]]


def test_a_basket_add_closes_its_display_at_once_with_reward_3(join_run):
    record = join_run.one_reward("mr-d")
    assert record["reward"] == 3.0
    assert record["closed_by"] == "max_reward"
    assert record["outcomes"] == [
        {"type": "basket_add", "item_id": "b", "ts": join_run.t + 1_500, "delay_ms": 1_500}]


# -- out of order -----------------------------------------------------------------------------

@scenario(partition=2)
def out_of_order(t: int) -> list[list[Record]]:
    # The reaction reaches the broker (and the worker) before the display it answers.
    return [[reaction(DETAIL_VIEWS, "oo-r", "oo", t + 700, "o")],
            [served("oo-d", "oo", t, ["o", "p"])]]


def test_a_reaction_produced_before_its_display_is_still_attributed(join_run):
    record = join_run.one_reward("oo-d")
    assert record["reward"] == 1.0
    assert record["outcomes"] == [
        {"type": "detail_view", "item_id": "o", "ts": join_run.t + 700, "delay_ms": 700}]


# -- the latest display wins ------------------------------------------------------------------

@scenario(partition=3)
def latest_display(t: int) -> list[list[Record]]:
    return [[served("ld-d1", "ld", t, ["x", "y"]),
             served("ld-d2", "ld", t + 500, ["x"]),
             # No served_id: both displays showed x; the later one wins.
             reaction(CLICKS, "ld-r-latest", "ld", t + 1_000, "x"),
             # served_id names the earlier display: it goes there although d2 also shows x.
             reaction(DETAIL_VIEWS, "ld-r-named", "ld", t + 1_200, "x", served_id="ld-d1")]]


def test_the_latest_display_wins_unless_the_reaction_names_its_display(join_run):
    found = join_run.rewards_of("ld-d1", "ld-d2")
    [earlier], [later] = found["ld-d1"], found["ld-d2"]
    t = join_run.t
    assert later["outcomes"] == [
        {"type": "click", "item_id": "x", "ts": t + 1_000, "delay_ms": 500}]
    assert earlier["outcomes"] == [
        {"type": "detail_view", "item_id": "x", "ts": t + 1_200, "delay_ms": 1_200}]
    assert (earlier["reward"], later["reward"]) == (1.0, 1.0)


# -- late reactions ---------------------------------------------------------------------------

@scenario(partition=4)
def late_after_close(t: int) -> list[list[Record]]:
    # The late click is produced by the test, once this display has visibly closed.
    return [[served("la-d", "la", t, ["a", "b"]),
             reaction(BASKET_ADDS, "la-r", "la", t + 500, "a")]]


def test_a_reaction_after_its_display_closed_is_dead_lettered_as_late(join_run):
    closed = join_run.one_reward("la-d")
    assert closed["closed_by"] == "max_reward"
    # Within the display's window, on a displayed item: it would have counted, but too late.
    late = reaction(CLICKS, "la-late", "la", join_run.t + 1_000, "b")
    join_run.send("late_after_close", [late])
    join_run.flush()
    raw = encode(late)

    def dead() -> list[dict[str, Any]]:
        return [d for d in join_run.dead_letters() if base64.b64decode(d["value_base64"]) == raw]

    join_run.wait_for(lambda: bool(dead()))
    [record] = dead()
    assert record["reason"].startswith("late"), record
    assert record["topic"] == join_run.topic(CLICKS)
    assert record["key"] == "la"
    # Not applied: the display's one record has only the basket add.
    [again] = join_run.rewards_of("la-d")["la-d"]
    assert [o["type"] for o in again["outcomes"]] == ["basket_add"]
    # Counted as late, and as consumed only once (accepted, when it was read).
    join_run.wait_for(lambda: join_run.worker.metric("recoloop_reactions_late_total") >= 1)
    samples = join_run.worker.samples()
    consumed = "recoloop_events_consumed_total"
    assert join_run.worker.metric(consumed, samples) == sum(
        join_run.worker.metric(consumed, samples, outcome=outcome)
        for outcome in ("accepted", "invalid", "duplicate"))


@scenario(partition=5)
def late_in_same_sweep(t: int) -> list[list[Record]]:
    # Produced with its display, after the basket add that will close it. Nothing is
    # settled before the watermark reaches them, and then in time order: the basket add
    # closes the display, and the click, read long before, is found late in that sweep.
    return [[served("ls-d", "ls", t, ["a", "b"]),
             reaction(BASKET_ADDS, "ls-r", "ls", t + 500, "a"),
             reaction(CLICKS, "ls-late", "ls", t + 1_000, "b")]]


def test_a_reaction_settled_after_its_display_closed_is_not_applied(join_run):
    record = join_run.one_reward("ls-d")
    assert record["closed_by"] == "max_reward"
    assert record["outcomes"] == [
        {"type": "basket_add", "item_id": "a", "ts": join_run.t + 500, "delay_ms": 500}]


def test_a_reaction_settled_after_its_display_closed_is_dead_lettered_as_late(join_run):
    join_run.one_reward("ls-d")  # the late verdict comes with (or before) the close
    [late] = [r for topic, r in join_run.produced["late_in_same_sweep"] if r["event_id"] ==
              "ls-late"]
    raw = orjson.dumps(late)

    def dead() -> list[dict[str, Any]]:
        return [d for d in join_run.dead_letters() if base64.b64decode(d["value_base64"]) == raw]

    # Bounded: the dead letter would go out in the same transaction as the display's close.
    join_run.wait_for(lambda: bool(dead()), timeout_s=3)
    assert dead(), f"no dead letter for ls-late; all dead letters: {join_run.dead_letters()}"
    [record] = dead()
    assert record["reason"].startswith("late"), record


# -- duplicates -------------------------------------------------------------------------------

@scenario(partition=6)
def duplicate(t: int) -> list[list[Record]]:
    view = reaction(DETAIL_VIEWS, "du-r", "du", t + 400, "a")
    return [[served("du-d", "du", t, ["a", "b"]), view],
            [view]]  # the very same event again, after the first is on the broker


def test_a_repeated_reaction_event_id_is_applied_once(join_run):
    record = join_run.one_reward("du-d")
    assert record["outcomes"] == [
        {"type": "detail_view", "item_id": "a", "ts": join_run.t + 400, "delay_ms": 400}]
    assert record["reward"] == 1.0


# -- idle partition ---------------------------------------------------------------------------

@scenario(partition=7)
def idle(t: int) -> list[list[Record]]:
    return [[served("id-d", "id", t, ["a"])]]  # and nothing else, ever, on this partition


def test_a_display_on_a_quiet_partition_closes_by_the_wall_clock(join_run):
    # It must come by itself: idle close (2 s of ticks) + window + grace + a few ticks after
    # it was produced, well within this bound (the module started at most seconds ago).
    record = join_run.one_reward("id-d", timeout_s=IDLE_BOUND_S)
    assert (record["reward"], record["closed_by"], record["outcomes"]) == (0.0, "idle", [])


# -- window close by stream time --------------------------------------------------------------

@scenario(partition=8)
def window(t: int) -> list[list[Record]]:
    later = t + WINDOW_MS + GRACE_MS + 2_000  # past the display's window and grace
    return [[served("wi-d", "wi", t, ["w1", "w2"]),
             reaction(CLICKS, "wi-r", "wi", t + 1_000, "w1")],
            # The same session (so the same partition) moves every input topic past it;
            # these reactions are of an item no display showed.
            [served("wi-clock-d", "wi", later, ["w9"]),
             reaction(CLICKS, "wi-clock-c", "wi", later, "w-none"),
             reaction(DETAIL_VIEWS, "wi-clock-v", "wi", later, "w-none"),
             reaction(BASKET_ADDS, "wi-clock-b", "wi", later, "w-none")]]


def test_a_display_closes_when_stream_time_passes_its_window_and_grace(join_run):
    record = join_run.one_reward("wi-d")
    assert record["closed_by"] == "window"
    assert record["reward"] == 1.0
    assert record["outcomes"] == [
        {"type": "click", "item_id": "w1", "ts": join_run.t + 1_000, "delay_ms": 1_000}]


# -- one record per display -------------------------------------------------------------------

@scenario(partition=9)
def many(t: int) -> list[list[Record]]:
    first = [served("ma-d0", "ma0", t, ["a"]), reaction(BASKET_ADDS, "ma-r0", "ma0", t + 300, "a"),
             served("ma-d1", "ma1", t, ["a", "b"]),
             reaction(CLICKS, "ma-r1a", "ma1", t + 400, "b"),
             reaction(DETAIL_VIEWS, "ma-r1b", "ma1", t + 600, "a"),
             served("ma-d2a", "ma2", t, ["a"]), served("ma-d2b", "ma2", t + 200, ["a"]),
             reaction(CLICKS, "ma-r2", "ma2", t + 500, "a"),
             served("ma-d3", "ma3", t, ["c"]),
             served("ma-d4", "ma4", t + 100, ["d"])]
    return [first, [served("ma-d3", "ma3", t, ["c"])]]  # a display sent twice


def test_every_display_gets_exactly_one_rewards_record(join_run):
    expected = join_run.displays()
    assert "ma-d3" in expected and "wi-clock-d" in expected
    join_run.wait_for(lambda: expected <= {r["served_id"] for r in join_run.rewards()})
    counts = Counter(r["served_id"] for r in join_run.rewards())
    assert set(counts) == expected, join_run.worker.log_tail()
    assert {s: n for s, n in counts.items() if n != 1} == {}
    rewards = {r["served_id"]: r["reward"] for r in join_run.rewards()}
    assert {s: rewards[s] for s in join_run.displays("many")} == {
        "ma-d0": 3.0, "ma-d1": 1.0, "ma-d2a": 0.0, "ma-d2b": 1.0, "ma-d3": 0.0, "ma-d4": 0.0}


# -- organic reactions ------------------------------------------------------------------------

@scenario(partition=10)
def organic(t: int) -> list[list[Record]]:
    # The visitor finds the displayed item on their own: the display earned nothing.
    return [[served("og-d", "og", t, ["g", "h"]),
             reaction(DETAIL_VIEWS, "og-v", "og", t + 300, "g", source="organic"),
             reaction(CLICKS, "og-c", "og", t + 400, "h", source="organic"),
             reaction(CLICKS, "og-rec", "og", t + 500, "z", source="recommendation")]]


def test_an_organic_reaction_is_never_attributed_to_a_display(join_run):
    record = join_run.one_reward("og-d")
    assert (record["reward"], record["outcomes"]) == (0.0, []), join_run.worker.log_tail()
    assert not [d for d in join_run.dead_letters() if d["key"] == "og"]  # all were valid
