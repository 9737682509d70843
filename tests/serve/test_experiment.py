"""An experiment through the broker: set over HTTP, applied by the running worker; each
session gets its variant's ranking (the engine's, a bestsellers control's, or none for a
holdout), the rank service names the variant, every reward carries it, and only the engine
variants publish models, each under its own key."""

from __future__ import annotations

import time

import pytest

from app.contract.topics import REWARDS, Topics
from app.core.experiment import Experiment, Variant, model_key
from app.settings import Settings
from tests.kafka_io import TopicReader, now_ms, values
from tests.serve.test_service import call, click, key_for

pytestmark = pytest.mark.integration

EXPERIMENT = {"name": "exp-1", "variants": [
    {"name": "engine", "share": 40}, {"name": "candidate", "share": 20, "arms": ["trending"]},
    {"name": "control", "share": 20, "baseline": "bestsellers"},
    {"name": "holdout", "share": 20, "baseline": "nothing"}]}
ASSIGN = Experiment("exp-1", tuple(Variant(v["name"], v["share"], baseline=v.get("baseline"))
                                   for v in EXPERIMENT["variants"]))


def served(site: str, session: str, event_id: str, ranking: dict | None) -> dict:
    return {"type": "served", "event_id": event_id, "site_id": site, "session_id": session,
            "ts": now_ms(), "items": ["sku-1", "sku-2"],
            **({"ranking_id": ranking["ranking_id"]} if ranking else {})}


def test_an_experiment_splits_sessions_and_every_record_names_the_variant(
        worker_settings: Settings, start_worker, start_service):
    s = worker_settings
    worker = start_worker(reward_window_s="1", grace_s="1", idle_close_s="1")
    service = start_service()
    port = service.serve_port
    shop, admin = key_for(s, port, "shop"), key_for(s, port, None)
    assert call(port, "PUT", "/v1/sites/shop/config", admin, {"experiment": EXPERIMENT})[0] == 202
    sessions = {v: [f"s{n}" for n in range(400) if ASSIGN.assign(f"s{n}").name == v][:3]
                for v in ("engine", "candidate", "control", "holdout")}

    # The worker applies it within seconds: a control session's ranking is bestsellers'.
    deadline, n = time.monotonic() + 30, 0
    while True:
        n += 1
        session = sessions["control"][0]
        assert call(port, "POST", "/v1/events", shop,
                    {"events": [click("shop", session, f"warm{n}")]})[0] == 202
        _, body, _ = call(port, "GET", f"/v1/sites/shop/sessions/{session}/ranking"
                          f"?after_event_id=warm{n}&wait_ms=5000", shop)
        if body["ranking"] and body["ranking"].get("variant") == "control":
            break
        assert time.monotonic() < deadline, (body, worker.log_tail())

    shown: dict[str, list[str]] = {}
    for variant, ids in sessions.items():
        for session in ids:
            event_id = f"{session}-c"
            assert call(port, "POST", "/v1/events", shop,
                        {"events": [click("shop", session, event_id)]})[0] == 202
            _, body, _ = call(port, "GET", f"/v1/sites/shop/sessions/{session}/ranking"
                              f"?after_event_id={event_id}&wait_ms=5000", shop)
            assert (body["experiment"], body["variant"]) == ("exp-1", variant), body
            ranking = body["ranking"]
            if variant == "holdout":  # the site shows its own list
                assert body["source"] == "none" and ranking is None, body
            else:
                assert body["after_event_reached"] and ranking["variant"] == variant, body
                expected = {"candidate": "trending", "control": "bestsellers"}.get(variant)
                assert expected is None or ranking["arm"] == expected, ranking
            display = f"{session}-d"
            assert call(port, "POST", "/v1/events", shop,
                        {"events": [served("shop", session, display, ranking)]})[0] == 202
            shown[display] = [variant]

    # Every display's reward names its session's variant; a control's arm is shown for sure.
    models = Topics.of(s).models
    wanted = {model_key("shop", None).encode(), model_key("shop", "candidate").encode()}
    reader = TopicReader(s.kafka.bootstrap_servers, [s.topic(REWARDS), models])

    def done(messages: list) -> bool:
        closed = {r["served_id"] for r in values(messages, s.topic(REWARDS))}
        return closed >= set(shown) and wanted <= {m.key() for m in messages
                                                   if m.topic() == models}
    try:
        messages = reader.read_until(done, timeout_s=90)
    finally:
        reader.close()
    rewards = {r["served_id"]: r for r in values(messages, s.topic(REWARDS))}
    assert set(rewards) >= set(shown), (set(shown) - set(rewards), worker.log_tail())
    for display, (variant,) in shown.items():
        reward = rewards[display]
        assert (reward["experiment"], reward["variant"]) == ("exp-1", variant), reward
        if variant == "control":
            assert (reward["arm"], reward["propensity"]) == ("bestsellers", 1.0)
    # Only the engine variants learned, each its own model.
    assert {m.key() for m in messages if m.topic() == models} == wanted
