"""The metrics' names, labels and text format, without a broker."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest

from app.observability.metrics import (
    DEAD_LETTER_REASONS,
    MAX_SITE_LABELS,
    MAX_VARIANT_LABELS,
    OTHER_SITE,
    RESTART_REASONS,
    Metrics,
    MetricsPortInUse,
    ServeMetrics,
    SiteLabels,
)
from tests.prometheus_io import promtool
from tests.worker_process import free_port


def test_site_labels_fold_sites_past_the_cap_into_other():
    site = SiteLabels()
    labels = {site(f"site-{i}") for i in range(MAX_SITE_LABELS + 50)}
    assert len(labels) == MAX_SITE_LABELS + 1
    assert OTHER_SITE in labels
    assert site("site-0") == "site-0"  # known sites keep their label
    assert site(f"site-{MAX_SITE_LABELS}") == OTHER_SITE
    assert site(None) == OTHER_SITE


def test_unknown_site_ids_do_not_grow_the_series():
    metrics = Metrics()
    for i in range(MAX_SITE_LABELS * 3):
        label = metrics.site(f"s{i}")
        metrics.events_consumed.labels("reco.clicks", label, "accepted").inc()
        metrics.reward.labels(label, "trending").inc(1)
    sites = {sample.labels["site"]
             for family in metrics.registry.collect()
             if family.name == "recoloop_events_consumed"
             for sample in family.samples}
    assert len(sites) == MAX_SITE_LABELS + 1


def test_variant_labels_are_bounded_per_site():
    m = Metrics()
    for n in range(MAX_VARIANT_LABELS + 5):
        m.count_kpis("shop", f"v{n}", 1.0, set(), 0.0)
    m.count_kpis("shop", None, 0.0, set(), 0.0)
    variants = {sample.labels["variant"] for family in m.registry.collect()
                if family.name == "recoloop_variant_decisions" for sample in family.samples}
    assert len(variants) == MAX_VARIANT_LABELS + 1 and "other" in variants


def exercised() -> Metrics:
    """A registry in which every recoloop metric has at least one series."""
    m = Metrics()
    site = m.site("shop")
    m.events_consumed.labels("reco.served", site, "accepted").inc()
    m.events_consumed.labels("reco.clicks", m.site(None), "invalid").inc()
    m.dead_letters.labels("schema").inc()
    m.displays_served.labels(site, "trending").inc()
    m.decisions_closed.labels(site, "trending", "max_reward").inc()
    m.reward.labels(site, "trending").inc(3)
    m.reactions_unattributed.labels(site).inc()
    m.reactions_late.labels(site).inc()
    m.join_pending_displays.labels("0").set(2)
    m.reward_delay.observe(1.5)
    m.event_to_ranking.observe(0.004)
    m.rankings_published.labels(site, "trending").inc()
    m.bandit_updates.labels(site).inc()
    m.bandit_estimate.labels(site, "trending").set(0.7)
    m.bandit_choice_share.labels(site, "device=mobile", "trending").set(0.92)
    m.worker_ready.set(1)
    m.state_restored_records.inc(3)
    m.worker_restarts.labels("fatal").inc()
    m.count_kpis("shop", "control", 3.0, {"click", "basket_add"}, 79.9)
    m.shadow_value.labels(site, "arm:trending").set(0.4)
    m.shadow_effective_decisions.labels(site, "arm:trending").set(120)
    return m


def test_the_exposition_passes_promtool_check_metrics():
    text = generate_latest(exercised().registry)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_the_rank_services_exposition_passes_promtool_and_names_routes_by_template():
    m = ServeMetrics()
    m.requests.labels("/v1/sites/{site_id}/sessions/{session_id}/ranking", "200").inc()
    m.request_duration.labels("/v1/events").observe(0.002)
    m.answers.labels("session").inc()
    m.events_ingested.labels("accepted").inc(100)
    m.sessions_in_memory.set(3)
    text = generate_latest(m.registry)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr
    for family in m.registry.collect():
        for sample in family.samples:
            assert not {"session", "session_id", "site", "item_id"} & set(sample.labels)
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name


def test_names_follow_prometheus_conventions():
    families = {f.name: f for f in exercised().registry.collect()
                if f.name.startswith("recoloop_")}
    # prometheus_client strips _total from counter family names and _info from infos.
    expected = {
        "recoloop_events_consumed": "counter", "recoloop_dead_letters": "counter",
        "recoloop_displays_served": "counter", "recoloop_decisions_closed": "counter",
        "recoloop_reward": "counter", "recoloop_reactions_unattributed": "counter",
        "recoloop_reactions_late": "counter",
        "recoloop_rankings_published": "counter", "recoloop_bandit_updates": "counter",
        "recoloop_join_pending_displays": "gauge", "recoloop_bandit_arm_estimate": "gauge",
        "recoloop_bandit_arm_choice_share": "gauge", "recoloop_bandit_models_in_memory": "gauge",
        "recoloop_worker_ready": "gauge", "recoloop_reward_delay_seconds": "histogram",
        "recoloop_event_to_ranking_seconds": "histogram", "recoloop_build": "info",
        "recoloop_state_restored_records": "counter", "recoloop_records_undecodable": "counter",
        "recoloop_worker_restarts": "counter", "recoloop_variant_decisions": "counter",
        "recoloop_variant_reward": "counter", "recoloop_variant_displays_reacted": "counter",
        "recoloop_variant_revenue": "counter", "recoloop_shadow_value": "gauge",
        "recoloop_shadow_effective_decisions": "gauge",
    }
    assert {name: f.type for name, f in families.items()} == expected
    text = generate_latest(exercised().registry).decode()
    assert "recoloop_build_info{" in text
    assert "_created" not in text
    for family in families.values():
        for sample in family.samples:
            # bounded labels only: never a session or item id
            assert not {"session", "session_id", "item", "item_id"} & set(sample.labels)
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name


def test_dead_letter_and_restart_series_exist_at_zero_before_the_first_one():
    text = generate_latest(Metrics().registry).decode()
    for reason in DEAD_LETTER_REASONS:
        assert f'recoloop_dead_letters_total{{reason="{reason}"}} 0.0' in text
    for reason in RESTART_REASONS:
        assert f'recoloop_worker_restarts_total{{reason="{reason}"}} 0.0' in text


def test_forget_assignment_drops_partition_and_site_model_gauges():
    m = exercised()
    m.forget_assignment()
    text = generate_latest(m.registry).decode()
    assert "recoloop_join_pending_displays{" not in text
    assert "recoloop_bandit_arm_estimate{" not in text
    assert "recoloop_bandit_arm_choice_share{" not in text
    assert "recoloop_events_consumed_total{" in text  # counters stay


def test_workers_on_one_host_serve_on_their_own_ports():
    first, second = Metrics(), Metrics()
    ports = free_port(), free_port()
    first.serve(ports[0], "127.0.0.1")
    second.serve(ports[1], "127.0.0.1")
    first.rankings_published.labels("shop", "trending").inc()
    bodies = [urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5).read()
              for p in ports]
    assert b'recoloop_rankings_published_total{arm="trending",site="shop"} 1.0' in bodies[0]
    assert b"recoloop_rankings_published_total{" not in bodies[1]


def test_a_taken_metrics_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortInUse, match="RECOLOOP_METRICS_PORT"):
            Metrics().serve(port, "127.0.0.1")


def test_metrics_are_served_on_metrics_only():
    metrics = exercised()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        assert answer.status == 200 and b"recoloop_build_info" in answer.read()
    with urllib.request.urlopen(f"{base}/metrics?name[]=x", timeout=5) as answer:
        assert answer.status == 200  # a query string is still the metrics
    for path in ("/", "/favicon.ico", "/metrics/x", "/health"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{base}{path}", timeout=5)
        assert error.value.code == 404, path
