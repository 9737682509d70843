"""A worker's engine state across restarts: a clean restart reads nothing back from the
changelog, a new data directory rebuilds everything from it, and both carry on with the
same open displays, the same closed ones and the same duplicates."""

from __future__ import annotations

import orjson
import pytest

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, REWARDS, SERVED
from app.settings import Settings
from tests.kafka_io import TopicReader, event, now_ms, produce

pytestmark = pytest.mark.integration

RESTORED = "recoloop_state_restored_records_total"


def test_state_survives_a_clean_restart_and_rebuilds_from_the_changelog(
        start_worker, worker_settings):
    s: Settings = worker_settings
    t = now_ms()

    def step(ts: int, basket_adds: range, event_id: str = "b") -> list:
        """Basket adds answering displays of some sessions, and one event of every other
        topic so the partitions' watermark moves past them."""
        records = [event(s.topic(BASKET_ADDS), {
            "event_id": f"{event_id}{n}", "site_id": "shop", "session_id": f"s{n}", "ts": ts,
            "item_id": "i1"}) for n in basket_adds]
        for n in range(8):  # a mover per session key, so every partition moves
            mover = {"site_id": "shop", "session_id": f"m{n}", "ts": ts}
            records += [event(s.topic(SERVED), {**mover, "event_id": f"md{ts}-{n}",
                                                "items": ["z"]}),
                        event(s.topic(CLICKS), {**mover, "event_id": f"mc{ts}-{n}",
                                                "item_id": "y"}),
                        event(s.topic(DETAIL_VIEWS), {**mover, "event_id": f"mv{ts}-{n}",
                                                      "item_id": "y"})]
        return records

    rewards = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])

    def rewarded(count: int) -> dict[str, float]:
        """Reward per display of the sessions s*, once ``count`` of them have one."""
        def mine(ms: list) -> dict[str, float]:
            return {r["served_id"]: r["reward"] for r in map(orjson.loads, (
                m.value() for m in ms)) if r["session_id"].startswith("s")}
        return mine(rewards.read_until(lambda ms: len(mine(ms)) >= count, timeout_s=60))

    first = start_worker(data_dir="kept", reward_window_s="600")
    produce(s.kafka.bootstrap_servers, [event(s.topic(SERVED), {
        "event_id": f"d{n}", "site_id": "shop", "session_id": f"s{n}", "ts": t,
        "items": ["i1"]}) for n in range(30)] + step(t + 1_000, range(0, 10)))
    assert rewarded(10) == {f"d{n}": 3.0 for n in range(10)}
    first.stop()

    again = start_worker(data_dir="kept", reward_window_s="600")
    again.wait_ready()
    assert again.metric(RESTORED) == 0  # a clean restart: RocksDB was up to date
    produce(s.kafka.bootstrap_servers, step(t + 2_000, range(0, 20), event_id="again"))
    # The displays from before the restart were still open (10..19) or closed (0..9).
    assert rewarded(20) == {f"d{n}": 3.0 for n in range(20)}
    again.stop()

    rebuilt = start_worker(data_dir="new", reward_window_s="600")
    rebuilt.wait_ready()
    assert rebuilt.metric(RESTORED) > 0  # everything, from the changelog
    produce(s.kafka.bootstrap_servers,
            step(t + 3_000, range(20, 30)) + step(t + 3_000, range(0, 5)))
    got = rewarded(30)
    rewards.read_until(lambda ms: False, timeout_s=3)  # nothing more: repeats are repeats
    assert got == {f"d{n}": 3.0 for n in range(30)}
    records = [orjson.loads(m.value()) for m in rewards.messages]
    assert len([r for r in records if r["session_id"].startswith("s")]) == 30, \
        rebuilt.log_tail()
    rewards.close()
