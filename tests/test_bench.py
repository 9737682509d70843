"""The benchmark suite's pure parts: percentiles, the committed-offsets rate, saturation,
the commands it prints and the markdown table. No broker."""

from __future__ import annotations

from typing import Any

import pytest

from bench.common import committed_rate, latency_summary, quantile
from bench.suite import QUICK, parse_args, render_markdown, render_table, saturated, step_command


def test_quantile_is_the_nearest_rank_rounding_down() -> None:
    values = [float(n) for n in range(1, 1001)]  # 1..1000
    assert quantile(values, 0.5) == 501
    assert quantile(values, 0.99) == 991
    assert quantile(values, 0.999) == 1000
    assert quantile(values, 1.0) == 1000  # never past the end
    assert quantile([7.0], 0.999) == 7


def test_latency_summary_in_milliseconds() -> None:
    summary = latency_summary([0.003, 0.001, 0.002, 0.004])
    assert summary == {"p50_ms": 3.0, "p99_ms": 4.0, "p999_ms": 4.0, "mean_ms": 2.5}
    assert latency_summary([]) == {"p50_ms": None, "p99_ms": None, "p999_ms": None,
                                   "mean_ms": None}


def test_rate_counts_only_what_was_committed_after_the_first_progress() -> None:
    # Start-up for 5 s, then 1,000 events at the first commit, the rest 2 s later.
    samples = [(0.0, 0), (4.9, 0), (5.0, 1_000), (6.0, 1_000), (7.0, 10_000), (7.1, 10_000)]
    rate = committed_rate(samples, total=10_000)
    assert rate["first_progress_s"] == 5.0
    assert rate["committed_at_first_progress"] == 1_000
    assert rate["done_s"] == 7.0
    assert rate["events_per_s"] == 4_500.0  # 9,000 events in 2 s, not 10,000
    assert rate["events_per_s_incl_startup"] == round(10_000 / 7.0, 1)


def test_rate_is_unknown_when_everything_came_in_one_commit() -> None:
    rate = committed_rate([(0.0, 0), (0.3, 3_000)], total=3_000)
    assert rate["events_per_s"] is None
    assert rate["events_per_s_incl_startup"] == 10_000.0


def test_rate_is_unknown_when_never_done() -> None:
    rate = committed_rate([(0.0, 0), (1.0, 10)], total=3_000)
    assert rate["done_s"] is None
    assert rate["events_per_s"] is None and rate["events_per_s_incl_startup"] is None


def latency_run(**changes: Any) -> dict[str, Any]:
    return {"target_rate_events_per_s": 500, "achieved_rate_events_per_s": 499.0,
            "rankings_missing_after_60s": 0, "p50_ms": 80.0, "p99_ms": 300.0,
            "p999_ms": 410.0, **changes}


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, False),
    ({"rankings_missing_after_60s": 3}, True),
    ({"p50_ms": 1_400.0}, True),
    ({"p50_ms": None}, True),
    ({"achieved_rate_events_per_s": 400.0}, True),
])
def test_saturation(changes: dict[str, Any], expected: bool) -> None:
    assert saturated(latency_run(**changes)) is expected


def test_step_command_replaces_the_only_choices() -> None:
    argv = ["--quick", "--only", "latency", "--only=growth", "--events", "500"]
    assert step_command("growth", argv) == \
        "python -m bench.suite --quick --events 500 --only growth"


def test_quick_options_and_overrides() -> None:
    _, options = parse_args(["--quick", "--latency-rates", "100,200", "--events", "42"])
    assert options.latency_rates == (100, 200)
    assert options.events == 42
    assert options.latency_seconds == QUICK.latency_seconds
    _, defaults = parse_args([])
    assert defaults.latency_rates == (500, 2_000, 5_000) and defaults.events == 100_000


def group(rate: float | None, **extra: Any) -> dict[str, Any]:
    return {"events": 100_000, "events_per_s": rate, "events_per_s_incl_startup": 700.0,
            "done_s": 120.0, "rss_mb_when_done": 300.0, "rss_mb_peak": 320.5, **extra}


def test_table_has_one_row_per_figure_with_its_command() -> None:
    steps = {
        "learning": {"command": "python -m bench.suite --only learning",
                     "figures": {"status": "not available", "reason": "no simulator"}},
        "throughput": {"command": "python -m bench.suite --only throughput", "figures": {
            "partitions": 8,
            "worker": group(850.0, rankings=100_050, default_rankings=50, rewards=40_000),
            "bare_loop": group(17_000.0), "bare_loop_transactional": group(None),
            "worker_to_bare_loop": 0.05, "worker_to_bare_loop_transactional": None,
            "rounds": [{"worker_to_bare_loop": 0.05, "worker_to_bare_loop_transactional": None},
                       {"worker_to_bare_loop": 0.06, "worker_to_bare_loop_transactional": 0.4}]}},
        "decision_cost": {"command": "python -m bench.suite --only decision_cost", "figures": {
            "engine_event_us": 55.0, "ranking_decision_us": 40.0,
            "arm_items_us": {"similar": 20.0}}},
        "restore": {"command": "python -m bench.suite --only restore", "figures": {
            "records": 1_000_000, "partitions": 8, "restore_s": 80.0, "records_per_s": 12_500,
            "start_to_ready_s": 90.0, "rss_mb_when_ready": 300.0}},
        "latency": {"command": "python -m bench.suite --only latency", "figures": {"runs": [
            {**latency_run(), "saturated": False},
            {**latency_run(target_rate_events_per_s=2_000, p50_ms=24_000.0,
                           rankings_missing_after_60s=12), "saturated": True},
            {"target_rate_events_per_s": 5_000, "skipped": "saturated at 2000 events/s"}]}},
        "growth": {"command": "python -m bench.suite --only growth", "figures": {"runs": {
            "baseline": group(850.0, sessions=5_000, items=2_000),
            "10x_sessions": group(600.0, sessions=50_000, items=2_000)}}},
    }
    table = render_table(steps)
    lines = table.splitlines()
    assert lines[:2] == ["| measurement | result | command |", "|---|---|---|"]
    assert all(line.count(" | ") == 2 for line in lines[2:])
    body = "\n".join(lines[2:])
    # Steps in suite order, whatever order they came in.
    assert body.index("worker throughput") < body.index("latency") < body.index("sessions")
    assert body.index("sessions") < body.index("reward per decision")
    assert "| worker throughput, mixed events (100,000 pre-produced, 8 partitions) | " \
           "850 events/s (all committed 120.0 s after start) | " \
           "`python -m bench.suite --only throughput` |" in lines
    assert "17,000 events/s" in body
    assert "at least 700 events/s (all committed at once; start-up included)" in body
    assert "| worker / transactional loop (the figure we steer by; median round) | n/a; " \
           "rounds: n/a, 40% (goal ≥ 50 %: not met) |" in body
    assert "| worker RSS after the 100,000-event run | 300.0 MB (peak 320.5 MB) " \
           "(goal ≤ 200 MB: not met) |" in body
    assert "p99 ≤ 100 ms: not met" in body  # the 2,000 events/s run
    assert "| highest rate run with p99 ≤ 250 ms | none of the rates run " \
           "(goal ≥ 5,000 events/s: not met) |" in body
    assert "| one event through the engine alone (join, session, statistics, ranking) | " \
           "55.0 µs (goal ≤ 60 µs: met) |" in body
    assert "restore of 1,000,000 changelog records onto an empty data directory " \
           "(8 partitions) | 80.0 s, 12,500 records/s; ready 90.0 s after start" in body
    assert "| worker / bare loop | 5%; rounds: 5%, 6% |" in body
    assert "100,050 rankings (50 default), 40,000 rewards" in body
    assert "p50 80.0 ms, p99 300.0 ms, p999 410.0 ms" in body
    assert "saturated (499 events/s produced, 12 rankings missing)" in body
    assert "not run: saturated at 2000 events/s" in body
    assert "worker at 50,000 sessions, 2,000 items (10x_sessions) | 600 events/s; " \
           "RSS 300.0 MB when done, peak 320.5 MB" in body
    assert "not available: no simulator" in body


def test_learning_row_with_a_simulation() -> None:
    steps = {"learning": {"command": "python -m bench.suite --only learning", "figures": {
        "status": "ok", "engine": 0.4123, "random": 0.3, "oracle": 0.55,
        "uplift_vs_random": 0.3743, "seconds": 600.0, "rate_events_per_s": 50.0}}}
    assert "| 0.412 / 0.300 / 0.550 (engine vs random +37%); 600 s at 50 events/s |" \
        in render_table(steps)


def test_the_header_names_the_steps_kept_from_earlier_runs() -> None:
    machine = {"date": "2026-12-01T10:00:00+00:00", "git_commit": "b" * 40,
               "git_tracked_changes": False, "cpu_model": "cpu", "cores": 2, "memory_gb": 1.0,
               "python": "3.11", "kafka_version": "4.1.1"}
    learning = {"command": "learn", "figures": {"status": "not available", "reason": "x"}}
    steps = {"learning": {**learning, "date": "2026-12-01T10:05:00+00:00",
                          "git_commit": "b" * 40},
             "baselines": {**learning, "date": "2026-11-21T08:00:00+00:00",
                           "git_commit": "a" * 40, "figures": {
                               "options": {"duration_s": 1, "rate": 1}, "contenders": {},
                               "same_shoppers": True}}}
    text = render_markdown({"machine": machine, "steps": steps})
    assert "Kept from earlier runs: baselines (2026-11-21, commit aaaaaaaaaa)." in text
    assert "learning (" not in text.split("Kept from earlier runs:")[1].splitlines()[0]
    del steps["baselines"]
    assert "Kept from earlier runs" not in render_markdown({"machine": machine, "steps": steps})
