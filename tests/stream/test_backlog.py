"""A worker that starts behind a backlog reads its topics at different paces, and the join
still sees each display with its reactions.

The consumer hands over one topic's fetched records after another's: here thousands of
displays come before the clicks that answer them, for far longer than ``idle_close_s``. The
clicks are on the broker, not quiet, so no display may close before its click is read (a
worker that took the clicks' standstill for a quiet topic closed them with reward 0). Also
when the backlog arrives at partitions that had been quiet: their clock, restored by the
restarted worker, counts every kind as quiet.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from app.contract.topics import CLICKS, REWARDS, SERVED
from app.settings import Settings
from tests.kafka_io import TopicReader, collect, event, every_kind_at, now_ms, produce, values

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DISPLAYS = 10_000
STEP_MS = 6  # the displays span a minute of event time
CLICK_DELAY_MS = 500


WORKER = {"reward_window_s": "2", "grace_s": "1", "idle_close_s": "0.3",
          "tick_interval_s": "0.1"}


@pytest.mark.parametrize("before", ["nothing", "a_quiet_spell"])
def test_displays_read_long_before_their_clicks_still_get_them(worker_settings: Settings,
                                                               start_worker, before: str):
    s = worker_settings
    t0 = now_ms() - 600_000
    if before == "a_quiet_spell":  # every kind seen on every partition, then quiet
        sessions = [f"pre{k}" for k in range(40)]
        produce(s.kafka.bootstrap_servers, [record for session in sessions
                                      for record in every_kind_at(s, "shop", session, t0)])
        worker = start_worker(**WORKER)
        # Those displays answer nothing, and close "idle" only once every kind of their
        # partition is counted quiet: then stop the worker, its clocks saved so.
        wanted = {f"{session}-at-{t0}" for session in sessions}
        collect(s.kafka.bootstrap_servers, [s.topic(REWARDS)], lambda ms: wanted <= {
            v["served_id"] for v in values(ms, s.topic(REWARDS)) if v["closed_by"] == "idle"})
        assert worker.stop() == 0
        t0 += 60_000
    displays, clicks = [], []
    for n in range(DISPLAYS):
        session, ts = f"s{n % 2_500}", t0 + n * STEP_MS
        displays.append(event(s.topic(SERVED), {
            "event_id": f"d{n}", "site_id": "shop", "session_id": session, "ts": ts,
            "items": ["a", "b", "c"], "propensity": 0.2, "arm": s.bandit.arms[0]}))
        clicks.append(event(s.topic(CLICKS), {
            "event_id": f"c{n}", "site_id": "shop", "session_id": session,
            "ts": ts + CLICK_DELAY_MS, "item_id": "b", "served_id": f"d{n}"}))
    produce(s.kafka.bootstrap_servers, [*displays, *clicks])  # all of it before the worker starts

    rewards = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS)])
    worker = start_worker(**WORKER)

    def backlog(messages: list) -> list[float]:
        values = (orjson.loads(m.value()) for m in messages)
        return [v["reward"] for v in values if v["served_id"].startswith("d")]
    records = rewards.read_until(lambda ms: len(backlog(ms)) >= DISPLAYS, timeout_s=180)
    rewards.close()
    assert Counter(backlog(records)) == {1.0: DISPLAYS}, worker.log_tail()
