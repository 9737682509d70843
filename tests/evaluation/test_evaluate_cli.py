"""``recoloop evaluate`` on decisions read back from ``reco.rewards`` through the broker."""

from __future__ import annotations

import argparse

import orjson
import pytest

from app.contract.topics import REWARDS
from app.core.shadow import candidate
from app.evaluation import offline
from app.evaluation.offline import evaluate
from app.settings import Settings
from tests.evaluation.test_ope import LOGGING, logged_decisions
from tests.kafka_io import produce

pytestmark = pytest.mark.integration


def test_evaluate_reads_a_sites_decisions_and_estimates_each_candidate(worker_settings: Settings,
                                                                       capsys):
    s = worker_settings.replace(arms=tuple(LOGGING))
    decisions = logged_decisions(4_000)
    records = [(s.topic(REWARDS), f"s{n}".encode(), orjson.dumps(
        {**d, "site_id": "shop", "session_id": f"s{n}", "served_id": f"d{n}"}))
        for n, d in enumerate(decisions)]
    records.append((s.topic(REWARDS), b"x", orjson.dumps(  # another site's: not counted
        {**decisions[0], "site_id": "other", "session_id": "x", "reward": 100.0})))
    produce(s.kafka.bootstrap_servers, records)

    args = argparse.Namespace(site="shop", policy=["arm:category1", "uniform"])
    assert offline.main(args, s) == 0
    out = capsys.readouterr().out
    assert "4000 logged decisions" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| arm:category1")]
    # exactly the site's decisions were read back: the figures of the same log in-process
    arms = tuple(LOGGING)
    expected = evaluate(decisions, candidate("arm:category1", arms, None), arms)
    assert [(row[1], row[2]) for row in rows] == [(e.name, f"{e.value:.4f}") for e in expected]
    assert offline.main(argparse.Namespace(site="shop", policy=["current"]), s) == 2  # no model
