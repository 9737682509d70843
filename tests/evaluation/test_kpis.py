"""The KPI report's statistics on simulated experiments whose true uplift is known, and
``recoloop report`` on such a log read back from ``reco.rewards`` through the broker."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson
import pytest

from app.contract.topics import REWARDS
from app.core.experiment import Experiment, Variant
from app.evaluation import report
from app.evaluation.kpis import ratio, uplift, variant_kpis
from app.settings import Settings
from tests.kafka_io import produce

T0 = 1_700_000_000_000
EXPERIMENT = Experiment("exp-1", (Variant("engine", 50), Variant("control", 50, "bestsellers")))
# Per-display click probability of an average session in each variant: the true uplift of
# the click-through rate is 0.15 - 0.12 = 0.03 (+25 %).
CTR = {"engine": 0.15, "control": 0.12}


def simulated_log(seed: int, sessions: int, ctr: dict[str, float] = CTR) -> list[dict]:
    """Sessions with 1 to 8 displays each and a session-level taste (half the sessions click
    at half the rate, half at 1.5 times): displays of one session are correlated, as on a
    real site. A click earns reward 1, a basket add (a third of clicks) 3 more, price 20."""
    rng = random.Random(seed)
    log = []
    for s in range(sessions):
        session = f"s{seed}-{s}"
        variant = EXPERIMENT.assign(session).name
        taste = rng.choice((0.5, 1.5))
        for d in range(rng.randint(1, 8)):
            outcomes, reward = [], 0.0
            if rng.random() < ctr[variant] * taste:
                outcomes.append({"type": "click", "item_id": "i", "ts": T0, "delay_ms": 1_500})
                reward = 1.0
                if rng.random() < 1 / 3:
                    outcomes.append({"type": "basket_add", "item_id": "i", "ts": T0,
                                     "delay_ms": 4_000, "price": 20.0})
                    reward = 3.0
            log.append({"served_id": f"{session}-{d}", "session_id": session, "site_id": "shop",
                        "experiment": EXPERIMENT.name, "variant": variant,
                        "served_ts": T0 + s * 1_000 + d, "reward": reward, "outcomes": outcomes,
                        "arm": "similar" if variant == "engine" else "bestsellers",
                        "propensity": 1.0, "items": ["i"], "context": {}, "ranking_id": None,
                        "closed_by": "window"})
    return log


@pytest.mark.slow
def test_the_uplift_interval_covers_the_true_uplift_at_its_stated_rate():
    seeds = range(40)
    covered = 0
    for seed in seeds:
        kpis = variant_kpis(simulated_log(seed, 2_000))
        u = uplift(kpis["engine"]["ctr"], kpis["control"]["ctr"])
        covered += u.difference_low <= 0.03 <= u.difference_high
    # 95 % intervals: 38 of 40 expected; fewer than 34 has probability below 1 %.
    assert covered >= 34, covered


@pytest.mark.slow
def test_with_no_true_difference_few_p_values_fall_below_five_percent():
    significant = sum(
        uplift(*(variant_kpis(simulated_log(seed, 2_000, {"engine": 0.12, "control": 0.12}))
                 [v]["ctr"] for v in ("engine", "control"))).p_value < 0.05
        for seed in range(40))
    assert significant <= 6, significant  # 2 expected; 6 or more below 1 % chance


def test_per_session_intervals_are_wider_than_per_display_ones_when_sessions_cluster():
    log = simulated_log(1, 2_000)
    by_session = variant_kpis(log)["engine"]["ctr"]
    per_display = ratio((float(bool(d["outcomes"])), 1.0) for d in log
                        if d["variant"] == "engine")
    assert per_display is not None and by_session.variance > per_display.variance


def test_kpis_cover_each_measure_the_issue_names():
    kpis = variant_kpis(simulated_log(2, 1_000))["engine"]
    assert set(kpis) == {"ctr", "detail_view_rate", "conversion", "reward_per_display",
                         "revenue_per_display", "first_action_s", "bounce"}
    assert kpis["revenue_per_display"].value == pytest.approx(20 * kpis["conversion"].value)
    assert kpis["first_action_s"].value == pytest.approx(1.5)
    assert 0.05 < kpis["bounce"].value < 0.2  # one display in 1 of 8 sessions


@pytest.mark.slow
def test_a_larger_sample_detects_a_smaller_uplift():
    small = variant_kpis(simulated_log(3, 500))
    large = variant_kpis(simulated_log(3, 8_000))
    assert uplift(large["engine"]["ctr"], large["control"]["ctr"]).detectable_relative < \
        uplift(small["engine"]["ctr"], small["control"]["ctr"]).detectable_relative / 3


def test_since_takes_iso_times_and_durations():
    now = 1_700_000_000_000
    assert report.parse_since("2h", now) == now - 7_200_000
    assert report.parse_since("2023-11-14T22:13:20", now) == now
    assert report.parse_since(None, now) == 0


@pytest.mark.integration
def test_report_reads_the_sites_decisions_and_its_interval_covers_the_truth(
        worker_settings: Settings, tmp_path: Path, capsys):
    s = worker_settings
    log = simulated_log(7, 4_000)
    records = [(s.topic(REWARDS), d["session_id"].encode(), orjson.dumps(d)) for d in log]
    records.append((s.topic(REWARDS), b"x", orjson.dumps(  # another site's: not counted
        {**log[0], "site_id": "other", "reward": 100.0})))
    produce(s.kafka.bootstrap_servers, records)

    args = argparse.Namespace(site="shop", since=None, control="control", mde=0.05,
                              periods=4, out=tmp_path)
    assert report.main(args, s) == 0
    out = capsys.readouterr().out
    assert f"{len(log):,} closed decisions" in out
    row = next(line for line in out.splitlines()
               if line.startswith("| engine | click-through rate |"))
    interval = row.split(" | ")[2]  # "0.03 [low, high]"
    low, high = (float(x) for x in interval.split("[")[1].rstrip("]").split(", "))
    assert low <= 0.03 <= high
    expected = uplift(*(variant_kpis(log)[v]["ctr"] for v in ("engine", "control")))
    assert f"{expected.p_value:.3g}" in row
    assert (tmp_path / "report-shop.md").read_text() == out.rstrip("\n") + "\n" or \
        (tmp_path / "report-shop.md").read_text() in out
    assert (tmp_path / "report-shop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.main(argparse.Namespace(**{**vars(args), "site": "nobody"}), s) == 1


def test_the_apprentice_summary_counts_agreement_and_the_engines_value():
    rows = [{"arm": "bestsellers", "reward": 1.0, "items": ["a", "b"],
             "apprentice": {"arm": "bestsellers", "propensity": 0.8,
                            "shown_arm_probability": 0.8, "items": ["a", "c"]}},
            {"arm": "bestsellers", "reward": 0.0, "items": ["a", "b"],
             "apprentice": {"arm": "similar", "propensity": 0.2,
                            "shown_arm_probability": 0.8, "items": ["x", "y"]}},
            {"arm": "bestsellers", "reward": 1.0, "items": ["a"]}]  # no apprentice: left out
    summary = report.apprentice_summary(rows)
    assert summary == {"decisions": 2, "arm_agreement": 0.5, "item_overlap": 0.25,
                       "engine_value_ips": 0.4, "site_value": 0.5}
    assert report.apprentice_summary(rows[2:]) is None


def test_a_variant_that_is_not_a_string_is_reported_not_crashed_on():
    log = simulated_log(4, 200)
    log[0] = {**log[0], "variant": 7}
    assert "7" in variant_kpis(log)
    text = report.markdown("shop", log, "control", 0.05, 3)
    assert "| 7 |" not in text.split("## KPIs")[0] and "click-through rate" in text
