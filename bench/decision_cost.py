"""CPU cost of the engine alone, in microseconds, without Kafka or Faust.

    .venv/bin/python -m bench.decision_cost

- one ranking decision: the bandit's choice with its propensity plus the chosen arm's items,
  for a session with history, on a site with statistics (the bandit chooses the default arms
  uniformly: each has learned the same rewards), and each arm's items alone;
- one whole input event through ``Engine.handle`` (join, session, statistics, ranking) on
  the mixed stream of ``bench/shoppers.py``, with the worker's caching store over a dict.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contract.codec import EncodedStore
from app.contract.topics import REACTION_TYPE_BY_TOPIC, SERVED
from app.core.candidates import arm_items
from app.core.catalog import StoreCatalog
from app.core.engine import Engine, session_key
from app.core.events import Reaction, Served
from app.core.policy import ContextualBandit
from app.core.stats import SiteStats
from app.settings import Settings
from app.stream.state import PartitionState
from bench.shoppers import mixed_events

RESULTS = Path(__file__).parent / "results"
BATCH = 500


class Policies:
    def __init__(self, settings: Settings) -> None:
        self.policy = ContextualBandit(settings.bandit.arms, settings.bandit.exploration, seed=1)

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        return self.policy, self.policy.n_updates


def measure() -> dict[str, Any]:
    """The figures: one ranking decision, each arm's items, one event through the engine."""
    settings = Settings()
    policies = Policies(settings)
    engine = Engine(settings, policies, StoreCatalog(EncodedStore()))
    # The worker's store, committed every BATCH events as the worker commits a transaction.
    store = PartitionState(Path(tempfile.mkdtemp(prefix="recoloop-bench-")) / "0")
    t0 = 1_700_000_000_000
    events: list[Any] = []
    for n, (topic, value) in enumerate(itertools.islice(mixed_events(1, 5_000, 2_000), 60_000)):
        value["ts"] = t0 + n * 2
        events.append(Served.from_value(value) if topic == SERVED else
                      Reaction.from_value(REACTION_TYPE_BY_TOPIC[topic], value))
    for n, event in enumerate(events[:30_000]):  # warm up: sessions and statistics exist
        engine.handle(store, event)
        if n % BATCH == 0:
            store.committed(store.changes(), n)
    # ... and the bandit has learned something: the same rewards for every arm, so it
    # chooses them uniformly and the figures are the mix's, not one arm's (each arm's own
    # cost is reported apart).
    k = len(settings.bandit.arms)
    for n in range(2_000 * k):
        policies.policy.update(settings.bandit.arms[n % k], {"season": "winter"}, float(n // k % 3))

    start = time.perf_counter()
    for n, event in enumerate(events[30_000:]):
        engine.handle(store, event)
        if n % BATCH == 0:
            store.committed(store.changes(), n)
    per_event_us = (time.perf_counter() - start) / 30_000 * 1e6

    session = store.get(session_key("site1", "s1"))
    placement = engine._placement("site1", "s1")  # no experiment: the site's own bandit
    rounds = 20_000
    start = time.perf_counter()
    for n in range(rounds):  # the statistics read anew each time, as for each event
        stats = SiteStats("site1", store.get, store.set)
        engine.issuer.rank(session, stats, f"bench-{n}", session.last_ts, placement)
    per_decision_us = (time.perf_counter() - start) / rounds * 1e6
    per_arm_us = {}
    for arm in settings.bandit.arms:  # the items of one arm alone
        start = time.perf_counter()
        for _ in range(rounds // 4):
            arm_items(arm, session, stats, engine.catalog, session.last_ts,
                      settings.ranking.ranking_size, policies.policy.ranker)
        per_arm_us[arm] = round((time.perf_counter() - start) / (rounds // 4) * 1e6, 1)

    return {"ranking_decision_us": round(per_decision_us, 1), "arm_items_us": per_arm_us,
            "arms": list(settings.bandit.arms), "engine_event_us": round(per_event_us, 1)}


def main() -> int:
    result = {
        "benchmark": "decision_cost",
        "command": "python -m bench.decision_cost",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        **measure(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decision-cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
