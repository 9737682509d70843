"""No decision lost, none counted twice, none learned twice: through SIGKILLs of the worker.

A seeded stream of more than 20,000 events (thousands of sessions, with repeated event ids,
reactions outside the window or to nothing, several displays of an item, late reactions after
a maximum reward) is produced to the input topics while a worker processes it, and the
worker is killed with SIGKILL at random moments, during processing, and restarted. A second
run has two workers whose partitions move to the survivor of each kill and back.
Afterwards ``reco.rewards``, read committed-only, must hold exactly one record per display
with the reward of the plain reference join in tests/core/test_join_order.py, each site's
bandit must have learned exactly once per display, its item model once per shown position,
and each site's shared item statistics exactly once per reaction; a worker rebuilt on an empty
data directory then ranks with the same model versions.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import Producer

from app.contract.codec import decode_model, decode_state
from app.contract.topics import (
    BASKET_ADDS,
    CLICKS,
    DETAIL_VIEWS,
    RANKINGS,
    REWARDS,
    SERVED,
    Topics,
)
from app.core.events import Reaction, Served
from app.core.ranker import POSITIONS_LEARNED
from app.core.session import ENGAGEMENT_WEIGHT
from app.core.stats import STAT_SHAPES, stat_key
from app.kafka import clients
from app.settings import Settings
from tests.core.test_join_order import KINDS, T0, reference_join, seeded_stream
from tests.kafka_io import TopicReader, event, produce
from tests.worker_process import WorkerProcess as Worker

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]

TOPIC_OF_KIND = {"served": SERVED, "click": CLICKS, "detail_view": DETAIL_VIEWS,
                 "basket_add": BASKET_ADDS}
ARMS = Settings().bandit.arms
RATE_PER_S = 1_000
KILLS = 3
GROUP_SESSION_TIMEOUT_S = 6  # the two workers' (the broker allows no less): partitions move soon


def value_of(e) -> dict:
    if isinstance(e, Served):
        return {"event_id": e.event_id, "site_id": e.site_id, "session_id": e.session_id,
                "ts": e.ts, "items": list(e.items), "propensity": 0.2,
                "arm": ARMS[sum(map(ord, e.event_id)) % len(ARMS)]}
    value = {"event_id": e.event_id, "site_id": e.site_id, "session_id": e.session_id,
             "ts": e.ts, "item_id": e.item_id}
    if e.served_id is not None:
        value["served_id"] = e.served_id
    return value


def produce_paced(s: Settings, by_kind: dict, rate_per_s: float = RATE_PER_S,
                  flush_s: float = 30.0, stop: threading.Event | None = None) -> None:
    """Every topic in event-time order, as sites produce them, at ``rate_per_s``; waits up to
    ``flush_s`` for the broker to have them all. Once ``stop`` is set, the rest is left out
    (what was produced of each topic is the start of its list)."""
    merged = heapq.merge(*([(e.ts, kind, e) for e in by_kind[kind]] for kind in KINDS),
                         key=lambda entry: entry[0])
    producer = Producer({**clients.idempotent_producer(s), "linger.ms": 5})
    start = time.monotonic()
    for n, (_, kind, e) in enumerate(merged):
        topic, key, value = event(s.topic(TOPIC_OF_KIND[kind]), value_of(e))
        producer.produce(topic, value, key)
        if n % 100 == 0:
            if stop is not None and stop.is_set():
                break
            producer.poll(0)
            time.sleep(max(0.0, start + n / rate_per_s - time.monotonic()))
    assert producer.flush(flush_s) == 0, "records were not delivered"


def closing_events(by_kind: dict, partitions: int) -> dict:
    """For the end of ``by_kind``: a minute of event time after its last event, a display
    and one reaction of each kind (the display's maximum reward) in a session of every input
    partition (the test producer's partitioner: CRC32 of the key), by kind.

    They move every topic of every partition past the window and grace of all the stream's
    displays, so those close at once rather than about 30 s of wall-clock time after the
    traffic ends (idle topics, then stream time carried by ticks): the checks need not wait
    that long. They belong to the stream the reference join sees."""
    last = max(e.ts for kind in KINDS for e in by_kind[kind])
    ts = (last // 1000 + 60) * 1000 + 500
    sessions: dict[int, str] = {}
    n = 0
    while len(sessions) < partitions:
        session = f"end{n}"
        sessions.setdefault(zlib.crc32(session.encode()) % partitions, session)
        n += 1
    closing: dict[str, list] = {kind: [] for kind in KINDS}
    for session in sessions.values():
        closing["served"].append(Served(f"{session}-d0", "site0", session, ts,
                                        ("i0", "i1", "i2")))
        for kind in KINDS[1:]:
            closing[kind].append(Reaction(f"{session}-{kind}", kind, "site0", session, ts, "i0"))
    return closing


def end_of_stream(by_kind: dict, partitions: int) -> dict:
    """``by_kind`` followed by its :func:`closing_events`."""
    closing = closing_events(by_kind, partitions)
    return {kind: [*by_kind[kind], *closing[kind]] for kind in KINDS}


def latest_model_versions(reader: TopicReader) -> dict[str, int]:
    versions: dict[str, int] = {}
    for m in reader.messages:
        site, version = m.key().decode(), int(m.value().partition(b"\n")[0])
        assert version >= versions.get(site, 0), "a model version went back"
        versions[site] = version
    return versions


def assert_one_reward_per_display(rewards: TopicReader, expected: dict, worker: Worker,
                                  timeout_s: float = 240) -> None:
    """``reco.rewards`` (read committed) holds exactly one record per display of ``expected``
    (the reference join), with its reward."""
    records = rewards.read_until(lambda ms: len(ms) >= len(expected), timeout_s=timeout_s)
    rewards.read_until(lambda ms: False, timeout_s=5)  # anything beyond one per display
    rewards.close()
    got = [orjson.loads(m.value()) for m in records]
    per_display = Counter(r["served_id"] for r in got)
    assert set(per_display) == set(expected), worker.log_tail()
    assert [k for k, n in per_display.items() if n > 1] == [], "a display was counted twice"
    wrong = {r["served_id"]: (r["reward"], expected[r["served_id"]][0]) for r in got
             if r["reward"] != expected[r["served_id"]][0]}
    assert wrong == {}


def assert_each_site_learned_once(s: Settings, displays: list[Served], worker: Worker
                                  ) -> None:
    """Each site's bandit learned once per display (its version counts its updates), and its
    item model once per shown position it learns from, on the models topic (committed only)."""
    per_site = dict(Counter(d.site_id for d in displays))
    positions = Counter()
    for d in displays:
        positions[d.site_id] += min(len(d.items), POSITIONS_LEARNED)
    models = TopicReader(s.kafka.bootstrap_servers, [Topics.of(s).models])
    models.read_until(lambda ms: latest_model_versions(models) == per_site, timeout_s=60)
    models.read_until(lambda ms: False, timeout_s=3)
    models.close()
    assert latest_model_versions(models) == per_site, worker.log_tail()
    latest = {m.key().decode(): m.value() for m in models.messages}
    assert {site: decode_model(raw).ranker.n_updates for site, raw in latest.items()} == \
        dict(positions)


def expected_popularity(by_kind: dict, at_ts: int) -> dict[tuple[str, str], float]:
    """Each site's ``popular`` statistic read at ``at_ts`` had every distinct reaction been
    learned once: the decayed sum of its engagement weights, per (site, item)."""
    half_life_ms, _ = STAT_SHAPES["popular"]
    unique = {(r.session_id, r.event_id): r for kind in KINDS if kind != "served"
              for r in by_kind[kind]}
    expected: dict[tuple[str, str], float] = {}
    for r in unique.values():
        key = (r.site_id, r.item_id)
        expected[key] = expected.get(key, 0.0) + ENGAGEMENT_WEIGHT[r.type] * 2.0 ** (
            (r.ts - at_ts) / half_life_ms)
    return expected


def assert_each_reaction_learned_once(s: Settings, by_kind: dict, worker: Worker) -> None:
    """Each site's shared statistics (the site-statistics topic, committed only) learned every
    distinct reaction once, whichever partition and worker it came through."""
    expected = expected_popularity(by_kind, T0)
    reader = TopicReader(s.kafka.bootstrap_servers, [Topics.of(s).site_stats])

    def learned(messages: list) -> dict[tuple[str, str], float]:
        latest = {m.key().decode(): m.value() for m in messages}
        found = {}
        for site in {site for site, _ in expected}:
            raw = latest.get(stat_key(site, "popular"))
            if raw is not None:
                scores = decode_state(stat_key(site, "popular"), raw.partition(b"\n")[2])
                found.update({(site, item): scores.value(item, T0) for item in scores.raw})
        return found

    def matches(messages: list) -> bool:
        return learned(messages) == pytest.approx(expected, rel=1e-9)

    reader.read_until(matches, timeout_s=60)
    reader.close()
    assert learned(reader.messages) == pytest.approx(expected, rel=1e-9), worker.log_tail()


def single_worker(start_worker, rng: random.Random, killed: Callable[[], None]) -> Worker:
    """One worker, killed at random moments and restarted at once under the same id."""
    worker = start_worker()
    for _ in range(KILLS):
        time.sleep(rng.uniform(2.0, 6.0))
        worker.kill()
        killed()
        worker = start_worker()
    return worker


def two_workers(start_worker, rng: random.Random, killed: Callable[[], None]) -> Worker:
    """Two workers; each kill is followed by a pause past the group's session timeout, so the
    survivor takes over the victim's partitions, and they move back when it returns."""
    data_dirs = ["a", "b"]
    timeout = str(GROUP_SESSION_TIMEOUT_S)
    workers = [start_worker(data_dir=d, group_session_timeout_s=timeout) for d in data_dirs]
    for n in range(KILLS):
        time.sleep(rng.uniform(2.0, 6.0))
        workers[n % 2].kill()
        killed()
        time.sleep(GROUP_SESSION_TIMEOUT_S + 2)
        workers[n % 2] = start_worker(data_dir=data_dirs[n % 2], group_session_timeout_s=timeout)
    return workers[0]


@pytest.mark.parametrize("workers", [single_worker, two_workers])
def test_sigkill_loses_no_decision_and_counts_none_twice(start_worker, worker_settings,
                                                         workers):
    s: Settings = worker_settings
    by_kind = end_of_stream(seeded_stream(seed=11, sessions=3_500), s.kafka.partitions)
    assert sum(len(events) for events in by_kind.values()) >= 20_000
    expected = reference_join(by_kind)
    displays_per_site = Counter(d.site_id for d in by_kind["served"])
    rewards = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])

    producer = threading.Thread(target=produce_paced, args=(s, by_kind))
    producer.start()
    # Fault injection: SIGKILL at random moments while events are still coming in, so each
    # kill lands mid-batch, mid-restore or mid-startup.
    done_at_kill: list[int] = []
    worker = workers(start_worker, random.Random(5), lambda: done_at_kill.append(
        len(rewards.read_until(lambda ms: False, timeout_s=0.5))))
    producer.join()
    assert done_at_kill[0] < len(expected), "the first kill came after all the work was done"

    assert_one_reward_per_display(rewards, expected, worker)
    assert_each_site_learned_once(s, by_kind["served"], worker)
    assert_each_reaction_learned_once(s, by_kind, worker)
    if workers is single_worker:  # a worker rebuilt on an empty data directory reads it back
        worker.kill()
        worker = start_worker(data_dir="rebuilt")
        worker.wait_ready()
    # ... and in the rankings every worker publishes.
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(RANKINGS)])
    for site, displays in displays_per_site.items():
        probe = f"probe-{site}"
        produce(s.kafka.bootstrap_servers, [event(s.topic(CLICKS), {
            "event_id": probe, "site_id": site, "session_id": probe,
            "ts": T0 + 86_400_000, "item_id": "x"})])
        messages = reader.read_until(lambda ms, p=probe: any(
            orjson.loads(m.value())["ranking_id"] == f"rk-{p}" for m in ms), timeout_s=60)
        [ranking] = [orjson.loads(m.value()) for m in messages
                     if orjson.loads(m.value())["ranking_id"] == f"rk-{probe}"]
        assert ranking["model_version"] == displays, (site, worker.log_tail())
    reader.close()
