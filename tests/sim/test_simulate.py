"""``recoloop simulate`` against a real worker, through the real topics, in both worlds
(about 40 s each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Message

from app import cli
from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, RANKINGS, SERVED
from app.settings import Settings
from app.sim.demo import wait_ready
from app.sim.figures import GROUPS, SUMMARY_FIELDS
from app.sim.shoppers import CHAIN
from tests.kafka_io import collect, values
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

TOPIC_BY_COUNT = {SERVED: "served", CLICKS: "click", DETAIL_VIEWS: "detail_view",
                  BASKET_ADDS: "basket_add"}


@pytest.mark.parametrize("world", ["items", "arms"])
def test_simulate_shows_the_engines_rankings_and_reports_what_it_produced(
        world: str, start_worker, worker_settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = worker_settings
    # A short window, so that a short run settles many of its displays.
    worker: WorkerProcess = start_worker(reward_window_s="5", grace_s="1")
    monkeypatch.setenv("RECOLOOP_REWARD_WINDOW_S", "5")
    wait_ready(int(worker.env["RECOLOOP_WEB_PORT"]), worker.process, 90, worker.log_tail)
    monkeypatch.setenv("RECOLOOP_BOOTSTRAP_SERVERS", s.kafka.bootstrap_servers)
    monkeypatch.setenv("RECOLOOP_TOPIC_PREFIX", s.kafka.topic_prefix)
    path = tmp_path / "summary.json"
    code = cli.main(["simulate", "--world", world, "--duration-s", "12", "--rate", "80",
                     "--sites", "2", "--seed", "3", "--summary", str(path)])
    assert code == 0
    summary = json.loads(path.read_text())
    assert tuple(summary) == SUMMARY_FIELDS
    events, decisions = summary["events"], summary["decisions"]
    assert summary["run"]["delivery_failures"] == 0 and not summary["run"]["interrupted"]
    assert summary["run"]["world"] == world

    # The summary's counts add up.
    assert events["total"] == events["served"] + sum(events[kind] for kind in CHAIN)
    assert decisions["total"] == sum(decisions[g] for g in GROUPS)
    assert decisions["total"] + decisions["unsettled"] == events["served"] == sum(
        decisions["served"].values())
    assert summary["sessions"]["started"] == (summary["sessions"]["engine"]
                                              + summary["sessions"]["control"])

    # What it says it produced is on the topics, reactions included.
    wanted = {s.topic(topic): events[count] for topic, count in TOPIC_BY_COUNT.items()}
    assert events["click"] > 0 and events["detail_view"] > 0

    def produced(messages: list[Message]) -> int:
        return sum(1 for m in messages if m.topic() in wanted)

    def shown_all_read(messages: list[Message]) -> bool:
        """Every ranking a display names has been read too: the rankings topic is read
        beside the inputs, and may lag them (the input count alone stopped too early)."""
        published = {r["ranking_id"] for r in values(messages, s.topic(RANKINGS))}
        return all(v["ranking_id"] in published for v in values(messages, s.topic(SERVED))
                   if "ranking_id" in v)

    messages = collect(s.kafka.bootstrap_servers, [*wanted, s.topic(RANKINGS)],
                       lambda ms: produced(ms) >= sum(wanted.values()) and shown_all_read(ms),
                       timeout_s=30)
    for topic, count in wanted.items():
        assert len(values(messages, topic)) == count, topic

    # Engine sessions showed the engine's own rankings; the others chose an arm themselves.
    served = values(messages, s.topic(SERVED))
    published = {r["ranking_id"] for r in values(messages, s.topic(RANKINGS))}
    shown = [v["ranking_id"] for v in served if "ranking_id" in v]
    assert len(shown) == decisions["served"]["engine"] >= 50
    assert set(shown) <= published
    assert any(rid.startswith("rk-") for rid in shown)  # a session's own ranking
    own = [v for v in served if "ranking_id" not in v]
    assert len(own) == decisions["served"]["control"] + decisions["served"]["fallback"] > 0
    assert all(v["arm"] and v["propensity"] > 0 for v in own)
    served_ids = {v["event_id"] for v in served}
    reactions = values(messages, s.topic(CLICKS))
    assert any(r.get("served_id") in served_ids for r in reactions)
    # Browsing is marked organic, and names no display.
    organic = [r for r in reactions if r.get("source") == "organic"]
    assert organic and not any("served_id" in r for r in organic)
    if world == "items":  # the simulator's own lists are random items, not an arm's
        assert {v["arm"] for v in own} <= {"control", "fallback"}

    rewards = summary["reward_per_decision"]
    assert decisions["engine"] > 0 and decisions["control"] > 0
    assert rewards["engine"] is not None and rewards["oracle"] >= rewards["engine_expected"]
    assert summary["timeline"] and summary["per_site"].keys() == {"shop-1", "shop-2"}
    assert summary["ctr"]["engine"] is not None and len(summary["by_fifth"]) == 5
