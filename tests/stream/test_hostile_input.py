"""What outside traffic found, each finding through a real broker and worker: no code from
data, records bounded in size, integer times only, tenants that cannot collide."""

from __future__ import annotations

import pickle

import orjson
import pytest
from confluent_kafka import Producer

from app.contract.topics import CLICKS, REWARDS, SERVED
from app.settings import Settings
from app.stream.channels import Channels
from app.stream.topic_admin import ensure_internal_topics
from tests.kafka_io import TopicReader, event, now_ms, produce
from tests.stream.test_state import Exploit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNDECODABLE = "recoloop_records_undecodable_total"


def display_and_click(s: Settings, site: str, session: str, ts: int, n: str = "1") -> list:
    return [event(s.topic(SERVED), {"event_id": f"d{n}", "site_id": site, "session_id": session,
                                    "ts": ts, "items": ["i1", "i2"]}),
            event(s.topic(CLICKS), {"event_id": f"c{n}", "site_id": site, "session_id": session,
                                    "ts": ts + 500, "item_id": "i1"})]


def rewards_of(reader: TopicReader, count: int, timeout_s: float = 60) -> list[dict]:
    def parsed(messages: list) -> list[dict]:
        return [orjson.loads(m.value()) for m in messages if m.topic().endswith(REWARDS)]
    return parsed(reader.read_until(lambda ms: len(parsed(ms)) >= count, timeout_s))


def test_crafted_pickles_on_the_models_and_changelog_topics_never_run(
        start_worker, worker_settings, tmp_path):
    s: Settings = worker_settings
    marker = tmp_path / "pwned"
    channels = Channels.of(s)
    ensure_internal_topics(s, channels.internal_topics(s.partitions))
    crafted = pickle.dumps(Exploit(str(marker)))
    produce(s.bootstrap_servers, [(channels.models, b"shop", b"7\n" + crafted),
                                  (channels.models, b"other", crafted)])
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    for partition in range(s.partitions):  # a fresh worker restores every partition
        producer.produce(channels.changelog, crafted, b"clock", partition=partition)
    assert producer.flush(30) == 0

    worker = start_worker(reward_window_s="2", grace_s="0")
    worker.wait_ready()
    reader = TopicReader(s.bootstrap_servers, [s.topic(REWARDS)])
    produce(s.bootstrap_servers, display_and_click(s, "shop", "s1", now_ms()))
    assert [r["reward"] for r in rewards_of(reader, 1)] == [1.0], worker.log_tail()
    reader.close()
    assert not marker.exists()
    assert worker.metric(UNDECODABLE, source="models") == 2
    assert worker.metric(UNDECODABLE, source="changelog") >= s.partitions
    assert "skipped" in worker.log_tail(200)
