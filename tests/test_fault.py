"""No decision lost, none counted twice, none learned twice: through SIGKILLs of the worker.

A seeded stream of more than 20,000 events (thousands of sessions, with repeated event ids,
reactions outside the window or to nothing, several displays of an item, late reactions after
a maximum reward) is produced to the input topics. A worker processes it while it is killed
with SIGKILL at random moments and restarted. Afterwards ``reco.rewards``, read committed-only,
must hold exactly one record per display with the reward of the plain reference join in
tests/test_join_order.py, and each site's bandit must have learned exactly once per display.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import orjson
import pytest

from app.events import Served
from app.settings import BASKET_ADDS, CLICKS, DETAIL_VIEWS, RANKINGS, REWARDS, SERVED, Settings
from tests.kafka_io import TopicReader, event, produce
from tests.test_join_order import KINDS, reference_join, seeded_stream

# Not part of the default run: it fails today. The worker is at-least-once and its local
# state can run ahead of what it sent, so input replayed after a SIGKILL is skipped as already
# seen and some reward records are never sent (2026-11-21: 1,178 of 8,893 displays had none).
# Making it pass is issue 3's exactly-once work. Run it with `pytest -m fault`.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault,
              pytest.mark.xfail(reason="exactly-once under SIGKILL is not built yet (issue 3)",
                                strict=False)]

TOPIC_OF_KIND = {"served": SERVED, "click": CLICKS, "detail_view": DETAIL_VIEWS,
                 "basket_add": BASKET_ADDS}
ARMS = Settings().arms


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


def test_sigkill_loses_no_decision_and_counts_none_twice(start_worker, worker_settings):
    s: Settings = worker_settings
    by_kind = seeded_stream(seed=11, sessions=3_500)
    assert sum(len(events) for events in by_kind.values()) >= 20_000
    expected = reference_join(by_kind)
    displays_per_site = Counter(d.site_id for d in by_kind["served"])
    # Each topic in event-time order, as sites produce them.
    produce(s.bootstrap_servers, [event(s.topic(TOPIC_OF_KIND[kind]), value_of(e))
                                  for kind in KINDS for e in by_kind[kind]])

    rng = random.Random(5)
    worker = start_worker()
    for _ in range(3):
        time.sleep(rng.uniform(3.0, 12.0))  # fault injection at a random moment
        worker.kill()
        worker = start_worker()

    rewards = TopicReader(s.bootstrap_servers, [s.topic(REWARDS)])
    records = rewards.read_until(lambda ms: len(ms) >= len(expected), timeout_s=420)
    rewards.read_until(lambda ms: False, timeout_s=5)  # anything beyond one per display
    rewards.close()
    got = [orjson.loads(m.value()) for m in records]
    per_display = Counter(r["served_id"] for r in got)
    assert set(per_display) == set(expected), worker.log_tail()
    assert [k for k, n in per_display.items() if n > 1] == [], "a display was counted twice"
    wrong = {r["served_id"]: (r["reward"], expected[r["served_id"]][0]) for r in got
             if r["reward"] != expected[r["served_id"]][0]}
    assert wrong == {}

    # Each site's bandit learned once per display: its model_version counts updates.
    reader = TopicReader(s.bootstrap_servers, [s.topic(RANKINGS)])
    for site, displays in displays_per_site.items():
        probe = f"probe-{site}"
        produce(s.bootstrap_servers, [event(s.topic(CLICKS), {
            "event_id": probe, "site_id": site, "session_id": probe,
            "ts": 1_800_000_000_000, "item_id": "x"})])
        messages = reader.read_until(lambda ms, p=probe: any(
            orjson.loads(m.value())["ranking_id"] == f"rk-{p}" for m in ms), timeout_s=120)
        [ranking] = [orjson.loads(m.value()) for m in messages
                     if orjson.loads(m.value())["ranking_id"] == f"rk-{probe}"]
        assert ranking["model_version"] == displays, (site, worker.log_tail())
    reader.close()
