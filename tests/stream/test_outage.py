"""Broker outages and fatal client errors heal by themselves: the worker rebuilds its Kafka
clients in-process and resumes, and nothing is lost or counted twice.

The tests run a broker of their own (its own port and data directory; the session's shared
broker is never stopped), a worker on it and traffic (displays and reactions, paced) that
keeps being produced while the broker is down. The broker is stopped with SIGTERM for 10 s,
or killed with SIGKILL for 45 s (past the group's session timeout and the transaction
timeout), and started again on the same port and data directory. Within 30 s of its return
the worker must publish rankings for new events; afterwards ``reco.rewards`` (read committed)
must hold exactly one record per display with the reward of the reference join, and each
site's bandit must have learned once per display.

A broker killed just before ``send_offsets_to_transaction`` keeps that call blocked, whatever
its timeout, until it is back: the worker must leave such a call behind and go on (it exited
instead in 1 of 8 runs of the SIGKILL case, before); a test makes that call every time.

The rank service keeps answering from memory while the broker is away, flagged stale.

Fatal client errors are provoked on the session broker: a producer with the worker's
transactional id, or a consumer with its group instance id, fences the worker's own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from app.contract.topics import CLICKS, RANKINGS, REWARDS, Topics
from app.dev import local_kafka
from app.kafka import topic_admin
from app.settings import Settings
from app.stream.runtime.calls import Rebuild, StuckCalls
from tests.core.test_join_order import T0, reference_join, seeded_stream
from tests.kafka_io import TopicReader, collect, event, now_ms, produce
from tests.serve.test_service import call, key_for
from tests.stream.test_fault import (
    TOPIC_OF_KIND,
    assert_each_site_learned_once,
    assert_one_reward_per_display,
    end_of_stream,
    produce_paced,
)
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]

PARTITIONS = 4
RATE_PER_S = 400  # the stream lasts about 12 s: the outage begins while it is produced
RESUME_WITHIN_S = 30.0


@dataclass
class Broker:
    port: int
    data_dir: Path

    @property
    def address(self) -> str:
        return f"{local_kafka.HOST}:{self.port}"

    def up(self) -> None:
        local_kafka.up(port=self.port, data_dir=self.data_dir)

    def stop(self, how: str) -> None:
        if how == "sigterm":
            local_kafka.down(port=self.port, data_dir=self.data_dir)
            return
        pid = int((self.data_dir / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while local_kafka.status(self.port, timeout=0.5):
            assert time.monotonic() < deadline, "the killed broker still answers"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own, on a free port pair (data and controller port) next to
    the session broker's. Not an ephemeral port: while the broker is down, the clients'
    reconnections could take those as their source ports, and the broker could not return.
    Each pytest-xdist worker that runs these tests starts its own, in a range of ports of its
    own: two workers must never take one broker for theirs (one would stop it under the
    other)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    port = int(os.environ.get("RECOLOOP_TEST_KAFKA_PORT", "19092")) + 50 + 20 * worker
    while not local_kafka._ports_free(port):
        port += 2
    own = Broker(port, tmp_path_factory.mktemp("outage-kafka"))
    own.up()
    yield own
    local_kafka.down(port=own.port, data_dir=own.data_dir)


def ranked(reader: TopicReader, ranking_id: str, timeout_s: float) -> bool:
    reader.read_until(lambda ms: any(orjson.loads(m.value())["ranking_id"] == ranking_id
                                     for m in ms), timeout_s=max(0.0, timeout_s))
    return any(orjson.loads(m.value())["ranking_id"] == ranking_id for m in reader.messages)


@pytest.mark.outage
@pytest.mark.parametrize(("down_s", "how"), [(10, "sigterm"), (45, "sigkill")])
def test_the_worker_resumes_after_a_broker_outage_and_counts_each_display_once(
        broker: Broker, tmp_path: Path, topic_prefix: str, down_s: int, how: str):
    s = Settings.of(bootstrap_servers=broker.address, topic_prefix=topic_prefix,
                 partitions=PARTITIONS)
    report = topic_admin.apply(s)
    assert report.ok, report.describe()
    by_kind = end_of_stream(seeded_stream(seed=23, sessions=700), PARTITIONS)
    expected = reference_join(by_kind)
    worker = WorkerProcess(s.kafka.bootstrap_servers, s.kafka.topic_prefix,
                           tmp_path / "worker-data",
                           tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        producer = threading.Thread(target=produce_paced, args=(s, by_kind, RATE_PER_S, 120))
        producer.start()
        # A reader whose group session times out in the outage would read it all again.
        before = collect(s.kafka.bootstrap_servers, [s.topic(REWARDS)],
                         lambda ms: len(ms) >= 50, 60)
        assert len(before) >= 50, f"no traffic flowing before the outage\n{worker.log_tail()}"

        started = time.monotonic()
        broker.stop(how)
        time.sleep(down_s)  # the outage itself
        broker.up()
        back = time.monotonic()
        print(f"\nbroker back {back - started:.1f} s after it was stopped")

        # New events after the broker's return: the worker publishes their rankings.
        rankings = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])
        produce(s.kafka.bootstrap_servers, [event(s.topic(TOPIC_OF_KIND["click"]), {
            "event_id": "probe", "site_id": "probe", "session_id": "probe", "ts": T0,
            "item_id": "x"})])
        resumed = ranked(rankings, "rk-probe", back + RESUME_WITHIN_S - time.monotonic())
        rankings.close()
        assert resumed, f"no ranking {RESUME_WITHIN_S:.0f} s after the broker returned\n" \
                        f"{worker.log_tail()}"
        print(f"resumed {time.monotonic() - back:.1f} s after the broker returned")

        producer.join()
        rewards = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])
        assert_one_reward_per_display(rewards, expected, worker, timeout_s=90)
        print(f"rewards checked {time.monotonic() - back:.1f} s after the broker's return")
        assert_each_site_learned_once(s, by_kind["served"], worker)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        assert (worker.status("/health"), worker.status("/ready")) == (200, 200)
    finally:
        worker.stop()


@pytest.mark.outage
def test_a_call_the_broker_outage_blocks_is_left_behind_and_ends_once_it_is_back(
        broker: Broker, topic_prefix: str):
    """librdkafka's send_offsets_to_transaction ignores its timeout while the broker is down
    and returns only once it answers again (this is what made the worker exit in the outage
    above, 1 run in 8). StuckCalls gives up on it after its wait; the call then ends in its own
    thread after the broker's return."""
    source, sink = f"{topic_prefix}in", f"{topic_prefix}out"
    admin = AdminClient({"bootstrap.servers": broker.address})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in (source, sink)]).values():
        future.result(30)
    produce(broker.address, [(source, b"k", b"v")])
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": topic_prefix,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([source])
    deadline = time.monotonic() + 60
    read = []
    while not read and time.monotonic() < deadline:
        read = [m for m in consumer.consume(10, 0.5) if m.error() is None]
    assert read, "nothing read from the source topic"
    producer = Producer({"bootstrap.servers": broker.address,
                         "transactional.id": f"{topic_prefix}txn"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(sink, b"v", b"k")
    assert producer.flush(30) == 0

    broker.stop("sigkill")
    stuck = StuckCalls(wait_s=10)
    started = time.monotonic()
    offsets = [TopicPartition(source, 0, read[-1].offset() + 1)]
    group = consumer.consumer_group_metadata()
    try:
        stuck.run("sending the offsets", lambda timeout_s: (
            producer.send_offsets_to_transaction(offsets, group, timeout_s)), 5.0)
        left_behind = False  # a librdkafka that keeps the call's timeout
    except KafkaException:
        left_behind = False
    except Rebuild as exc:
        assert exc.reason == "stuck_call", exc
        left_behind = True
    assert time.monotonic() - started < stuck.wait_s + 3, "the wait was not bounded"
    print(f"\nleft behind: {left_behind}")
    broker.up()
    back = time.monotonic()
    while stuck.blocked() and time.monotonic() < back + RESUME_WITHIN_S:
        time.sleep(0.2)
    assert stuck.blocked() == [], "the call left behind did not end after the broker's return"
    print(f"the call left behind ended {time.monotonic() - back:.1f} s after the broker's return")
    consumer.close()


@pytest.mark.outage
def test_the_rank_service_keeps_answering_flagged_stale_while_the_broker_is_away(
        broker: Broker, tmp_path: Path, topic_prefix: str):
    s = Settings.of(bootstrap_servers=broker.address, topic_prefix=topic_prefix,
                 partitions=PARTITIONS)
    assert topic_admin.apply(s).ok
    service = WorkerProcess(s.kafka.bootstrap_servers, s.kafka.topic_prefix, tmp_path / "serve",
                            tmp_path / "serve.log", "serve").start()
    try:
        service.wait_ready()
        port = service.serve_port
        key = key_for(s, port, "shop")
        produce(s.kafka.bootstrap_servers, [(s.topic(RANKINGS), b"s1", orjson.dumps({
            "ranking_id": "rk-e1", "site_id": "shop", "session_id": "s1", "ts": now_ms(),
            "arm": "similar", "propensity": 1.0, "items": [], "model_version": 1,
            "context": {}, "trigger_event_id": "e1"}))])
        path = "/v1/sites/shop/sessions/s1/ranking?after_event_id=e1&wait_ms=10000"
        status, body, _ = call(port, "GET", path, key)
        assert (status, body["after_event_reached"], body["stale"]) == (200, True, False)

        def stale_until(flag: bool) -> dict:
            deadline = time.monotonic() + RESUME_WITHIN_S
            while True:
                status, body, _ = call(port, "GET", path, key)
                assert status == 200 and body["source"] == "session", body
                if body["stale"] is flag or time.monotonic() > deadline:
                    return body
                time.sleep(0.2)

        broker.stop("sigterm")
        assert stale_until(True)["stale"] is True, service.log_tail()
        assert service.status("/health") == 200
        broker.up()
        assert stale_until(False)["stale"] is False, service.log_tail()
    finally:
        service.stop()


def fence(s: Settings, impostor: str, worker_id: str) -> None:
    """Take over the worker's transactional id or its static group membership."""
    if impostor == "producer":
        producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers,
                             "transactional.id": f"{s.app_id}-{worker_id}"})
        producer.init_transactions(30)
        return
    topics = Topics.of(s)
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": s.app_id,
                         "group.instance.id": worker_id, "enable.auto.commit": False,
                         "partition.assignment.strategy": "range",
                         "session.timeout.ms": 10_000})
    consumer.subscribe([*topics.join_inputs, topics.decisions, topics.catalog])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.2)  # until it replaced the worker's member (or was fenced back)
    consumer.close()


@pytest.mark.parametrize("impostor", ["producer", "consumer"])
def test_a_fenced_client_is_rebuilt_in_process(start_worker, worker_settings: Settings,
                                               impostor: str):
    s = worker_settings
    worker = start_worker(worker_id="fenced")
    worker.wait_ready()
    rankings = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])

    def ranked_click(event_id: str) -> bool:
        produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
            "event_id": event_id, "site_id": "shop", "session_id": event_id, "ts": now_ms(),
            "item_id": "a"})])
        return ranked(rankings, f"rk-{event_id}", timeout_s=60)

    assert ranked_click("before"), worker.log_tail()
    fence(s, impostor, "fenced")
    assert ranked_click("after"), worker.log_tail()
    rankings.close()
    # Fatal, or noticed first as a refused offset commit that leaves the consumer unusable.
    assert worker.metric("recoloop_worker_restarts_total") >= 1, worker.log_tail()
    assert worker.process is not None and worker.process.poll() is None
