"""The benchmark suite of issue #6: one command, every figure, one results file.

    .venv/bin/python -m bench.suite              # everything (tens of minutes)
    .venv/bin/python -m bench.suite --quick      # a smoke run with tiny sizes (about 2 min)
    .venv/bin/python -m bench.suite --only latency --latency-rates 500,2000

Starts the local broker unless RECOLOOP_BOOTSTRAP_SERVERS is set. Steps (``--only`` picks
some; the others keep their figures from the existing results file):

- ``throughput``: ``--events`` events of the mixed stream (``bench/shoppers.py``) are
  produced into fresh topics (8 partitions) first, their event times spread at
  ``--event-time-rate`` events/s and ending now. Then one ``recoloop worker`` starts and is
  timed as a black box, by the committed offsets of its consumer group (``settings.app_id``)
  against the end offsets of the four input topics (read_committed). Rate = events
  committed between the first sample with anything committed and the first with everything
  committed, over the time between them (so neither start-up nor the events of the first
  commit, whose processing time is unknown, count). Then, on the same topics and measured
  the same way, the ceiling: ``bench.bare_loop``, a bare confluent-kafka loop that consumes
  the four topics, produces one small record per input and commits after every batch
  (plain, and with one transaction per batch, batched and tuned as the worker's loop is).
  Also counted: rankings and rewards the worker published (read_committed, after it
  stopped). ``--throughput-runs`` rounds (3) on fresh topics with the same events; the
  round with the median worker / transactional-loop ratio is reported, every round's
  ratios beside it.
- ``latency``: ``bench.latency`` at each of ``--latency-rates`` in ascending order, until one
  saturates (rankings missing 60 s after the last event, less than 95 % of the target rate
  produced, or p50 above 1 s); higher rates are then skipped.
- ``growth``: the throughput measurement of the worker (with its memory: RSS when done and
  peak, VmHWM) at the baseline, at ``--growth`` times more sessions and at ``--growth``
  times more items. The baseline is the throughput step's run when both ran together.
- ``decision_cost``: ``bench.decision_cost`` (in-process): one ranking decision, each arm's
  items, and one event through the engine.
- ``restore``: ``bench.restore``: a worker on an empty data directory restores
  ``--restore-records`` changelog records (1,000,000): time to ready, and records/s.
- ``learning``: in each world of ``--worlds`` at once, ``recoloop simulate --world W``
  (``app.sim.runner``) for ``--learning-seconds`` at ``--learning-rate`` against a worker of
  its own on fresh topics: CTR and reward per decision of the engine, of the sessions shown
  a uniformly random list (the simulator's control group) and of the oracle, overall and
  per fifth of the run (``bench.suite_worlds``).
- ``baselines``: ``bench.baselines`` (in-process, no Kafka) in the same worlds, seed, rate
  and length: random, popular, coview, recent and sknn, each learned online from the
  records the world emits and facing the same shoppers as the engine in ``learning``; and
  the long-tail world's next-item table (``bench.next_item``, ``--next-item-seconds``). The
  report sets, per world, the engine beside them, with the goals of issue 24.

Writes ``bench/results/suite.json`` (machine, every figure, the exact command) and
``bench/results/suite.md`` (a table for docs/performance.md); ``--quick`` writes ``suite-quick.*``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.contract.topics import JOIN_INPUT_TOPICS, RANKINGS, REWARDS
from app.settings import Settings
from app.sim.worlds import WORLDS
from bench import decision_cost, latency, restore, suite_worlds
from bench.common import (
    REPO,
    RESULTS,
    WORKER_COMMAND,
    CommittedOffsets,
    committed_rate,
    count_records,
    delete_topics,
    fresh_topics,
    kafka_config,
    machine_info,
    send_all,
    start_worker,
)
from bench.common import bootstrap_servers as default_bootstrap
from bench.shoppers import mixed_events

STEPS = ("throughput", "latency", "growth", "decision_cost", "restore", "learning", "baselines")
KAFKA_FREE_STEPS = ("baselines", "decision_cost")
PARTITIONS = 8
SAMPLE_INTERVAL_S = 0.1
SATURATED_P50_MS = 1_000.0
SATURATED_RATE_SHARE = 0.95
RATE_DEFINITION = ("events committed between the first sample with any committed offset and "
                   "the first with all committed, over the time between them (sampled every "
                   f"{SAMPLE_INTERVAL_S} s)")


@dataclass(frozen=True)
class Options:
    events: int = 100_000
    sessions: int = 5_000
    items: int = 2_000
    seed: int = 1
    event_time_rate: int = 1_000
    latency_rates: tuple[int, ...] = (500, 2_000, 5_000)
    latency_seconds: float = 20.0
    latency_warmup_seconds: float = 5.0
    growth: int = 10
    bare_transactional: bool = True
    throughput_runs: int = 3  # the throughput step's rounds (the median is reported)
    worker_checkout: str = str(REPO)
    restore_records: int = 1_000_000
    learning_rate: float = 50.0
    learning_seconds: float = 1_200.0
    worlds: tuple[str, ...] = suite_worlds.DEFAULT_WORLDS
    next_item_seconds: float = 600.0


QUICK = Options(events=3_000, latency_rates=(300,), latency_seconds=3.0,
                latency_warmup_seconds=1.0, bare_transactional=False, throughput_runs=1,
                restore_records=20_000, learning_seconds=20.0, next_item_seconds=30.0)


# --- measuring --------------------------------------------------------------------------


def prepare_inputs(bootstrap: str, options: Options, sessions: int, items: int) -> Settings:
    """Fresh topics holding ``options.events`` mixed events, produced and delivered."""
    settings = fresh_topics(bootstrap, partitions=PARTITIONS)
    step_ms = 1_000 / options.event_time_rate
    first_ts = int(time.time() * 1000 - options.events * step_ms)
    records = itertools.islice(mixed_events(options.seed, sessions, items), options.events)
    producer = Producer({**kafka_config(bootstrap), "linger.ms": 20,
                         "queue.buffering.max.messages": 200_000})
    send_all(producer, settings, (
        (topic, {**value, "ts": first_ts + int(n * step_ms)})
        for n, (topic, value) in enumerate(records)))
    return settings


def measure_group(settings: Settings, command: Sequence[str], group: str,
                  expected_events: int, cwd: Path = REPO) -> dict[str, Any]:
    """Start ``python command`` in ``cwd`` and time it by the committed offsets of ``group``
    on the join's input topics until they reach the end offsets; its memory on the way."""
    offsets = CommittedOffsets(settings.kafka.bootstrap_servers, group,
                               [settings.topic(t) for t in JOIN_INPUT_TOPICS])
    total = offsets.total
    if total != expected_events:
        raise RuntimeError(f"the input topics hold {total} records, not {expected_events}")
    timeout_s = 120 + total / 50
    process = start_worker(settings, command, cwd)
    finished = False
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    try:
        while not samples or samples[-1][1] < total:
            process.check_alive()
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise SystemExit(f"{' '.join(command)}: {samples[-1][1]} of {total} events "
                                 f"committed after {timeout_s:.0f} s; see {process.data_dir}")
            samples.append((elapsed, offsets.committed()))
            time.sleep(SAMPLE_INTERVAL_S)
        rss, peak = process.rss_bytes(), process.peak_rss_bytes()
        finished = True
    finally:
        process.stop(remove_data=finished)  # a failed run keeps its log
        offsets.close()
    return {"events": total, **committed_rate(samples, total),
            "rss_mb_when_done": round(rss / 2**20, 1), "rss_mb_peak": round(peak / 2**20, 1)}


def measure_worker(bootstrap: str, options: Options, sessions: int, items: int
                   ) -> tuple[Settings, dict[str, Any]]:
    settings = prepare_inputs(bootstrap, options, sessions, items)
    figures = measure_group(settings, WORKER_COMMAND, settings.app_id, options.events,
                            Path(options.worker_checkout))
    return settings, {"topic_prefix": settings.kafka.topic_prefix, "sessions": sessions,
                      "items": items,
                      **figures}


def step_growth_run(bootstrap: str, options: Options, sessions: int, items: int
                    ) -> dict[str, Any]:
    settings, figures = measure_worker(bootstrap, options, sessions, items)
    delete_topics(settings)
    return figures


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient(kafka_config(bootstrap))
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)


def step_throughput(bootstrap: str, options: Options) -> dict[str, Any]:
    """``options.throughput_runs`` rounds, each on fresh topics with the same events: the
    worker, then the bare loops on its topics. The round whose worker / transactional loop
    ratio is the median is reported, with every round's ratios beside it."""
    rounds = [throughput_round(bootstrap, options) for _ in range(options.throughput_runs)]
    key = ("worker_to_bare_loop_transactional" if options.bare_transactional
           else "worker_to_bare_loop")
    ranked = sorted(rounds, key=lambda r: r[key] or 0.0)
    median = ranked[len(ranked) // 2]
    return {**median, "rounds": [
        {"worker_events_per_s": r["worker"]["events_per_s"],
         **{name: r[name]["events_per_s"] for name in ("bare_loop", "bare_loop_transactional")
            if name in r},
         "worker_to_bare_loop": r["worker_to_bare_loop"],
         "worker_to_bare_loop_transactional": r["worker_to_bare_loop_transactional"]}
        for r in rounds]}


def throughput_round(bootstrap: str, options: Options) -> dict[str, Any]:
    settings, worker = measure_worker(bootstrap, options, options.sessions, options.items)
    rankings, default_rankings = count_records(bootstrap, settings.topic(RANKINGS))
    rewards, _ = count_records(bootstrap, settings.topic(REWARDS))
    output = settings.topic("bench.bare-out")
    create_topic(bootstrap, output, PARTITIONS)
    loops = {"bare_loop": ()} | ({"bare_loop_transactional": ("--transactional",)}
                                 if options.bare_transactional else {})
    ceilings = {}
    for name, flags in loops.items():
        group = f"{settings.kafka.topic_prefix}{name}"
        command = ("-m", "bench.bare_loop", "--group", group, "--output", output, *flags)
        ceilings[name] = measure_group(settings, command, group, options.events)
    delete_topics(settings)
    worker_rate = worker["events_per_s"]
    bare_rate = ceilings["bare_loop"]["events_per_s"]
    return {
        "rate_definition": RATE_DEFINITION,
        "event_time_rate_events_per_s": options.event_time_rate,
        "partitions": PARTITIONS,
        "worker": {**worker, "rankings": rankings, "default_rankings": default_rankings,
                   "session_rankings": rankings - default_rankings, "rewards": rewards},
        **ceilings,
        "worker_to_bare_loop": ratio(worker_rate, bare_rate),
        "worker_to_bare_loop_transactional": ratio(
            worker_rate, ceilings.get("bare_loop_transactional", {}).get("events_per_s")),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def saturated(figures: dict[str, Any]) -> bool:
    """Whether a latency run shows a worker that could not keep up."""
    p50 = figures.get("p50_ms")
    return (figures.get("rankings_missing_after_60s", 0) > 0 or p50 is None
            or p50 > SATURATED_P50_MS
            or figures["achieved_rate_events_per_s"]
            < SATURATED_RATE_SHARE * figures["target_rate_events_per_s"])


def step_latency(bootstrap: str, options: Options) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    saturated_at = None
    for rate in sorted(options.latency_rates):
        if saturated_at is not None:
            runs.append({"target_rate_events_per_s": rate,
                         "skipped": f"saturated at {saturated_at} events/s"})
            continue
        figures = latency.run(bootstrap, rate, options.latency_seconds,
                              options.latency_warmup_seconds, options.sessions, options.items,
                              Path(options.worker_checkout))
        figures["saturated"] = saturated(figures)
        if figures["saturated"]:
            saturated_at = rate
        runs.append(figures)
    return {"seconds": options.latency_seconds, "warmup_seconds": options.latency_warmup_seconds,
            "saturation": f"rankings missing after 60 s, under {SATURATED_RATE_SHARE:.0%} of "
                          f"the target rate produced, or p50 above {SATURATED_P50_MS:.0f} ms",
            "runs": runs}


def step_growth(bootstrap: str, options: Options,
                baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    g = options.growth
    shapes = {"baseline": (options.sessions, options.items),
              f"{g}x_sessions": (options.sessions * g, options.items),
              f"{g}x_items": (options.sessions, options.items * g)}
    runs = {}
    for name, (sessions, items) in shapes.items():
        if name == "baseline" and baseline is not None:
            runs[name] = {k: v for k, v in baseline.items()
                          if k not in ("rankings", "default_rankings", "session_rankings",
                                       "rewards")}
            continue
        runs[name] = step_growth_run(bootstrap, options, sessions, items)
    base_rate = runs["baseline"]["events_per_s"]
    for figures in runs.values():
        figures["throughput_vs_baseline"] = ratio(figures["events_per_s"], base_rate)
    return {"rate_definition": RATE_DEFINITION, "events": options.events, "runs": runs}


# --- reporting --------------------------------------------------------------------------


def events_per_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} events/s"


def group_rate(figures: dict[str, Any]) -> str:
    """A measured group's rate, or its lower bound when the samples cannot say more."""
    if figures["events_per_s"] is not None:
        return events_per_s(figures["events_per_s"])
    return (f"at least {events_per_s(figures['events_per_s_incl_startup'])} "
            "(all committed at once; start-up included)")


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def step_command(step: str, argv: Sequence[str]) -> str:
    """The command that reruns one step with the same options: ``argv`` without its
    ``--only`` choices, plus ``--only step``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--only":
            skip = True
        elif not arg.startswith("--only="):
            kept.append(arg)
    return " ".join(["python -m bench.suite", *kept, "--only", step])


def throughput_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    worker = figures["worker"]
    rows = [
        (f"worker throughput, mixed events ({worker['events']:,} pre-produced, "
         f"{figures['partitions']} partitions)",
         f"{group_rate(worker)} (all committed {worker['done_s']} s after start)"),
        ("bare confluent-kafka consume-produce-commit loop, same topics (ceiling)",
         group_rate(figures["bare_loop"])),
    ]
    if "bare_loop_transactional" in figures:
        rows.append(("same loop, one transaction per batch",
                     group_rate(figures["bare_loop_transactional"])))
    rounds = figures.get("rounds", [])

    def each(key: str) -> str:
        return (f"; rounds: {', '.join(percent(r[key]) for r in rounds)}"
                if len(rounds) > 1 else "")

    if "bare_loop_transactional" in figures:
        ratio_ = figures["worker_to_bare_loop_transactional"]
        rows.append(("worker / transactional loop (the figure we steer by; median round)",
                     percent(ratio_) + each("worker_to_bare_loop_transactional")
                     + goal(ratio_, 0.5, "≥ 50 %", higher=True)))
    rows.append(("worker / bare loop", percent(figures["worker_to_bare_loop"])
                 + each("worker_to_bare_loop")))
    rows.append((f"worker RSS after the {worker['events']:,}-event run",
                 f"{worker['rss_mb_when_done']} MB (peak {worker['rss_mb_peak']} MB)"
                 + goal(worker["rss_mb_when_done"], 200, "≤ 200 MB")))
    rows.append((f"records the worker published for {worker['events']:,} events",
                 f"{worker['rankings']:,} rankings ({worker['default_rankings']:,} default), "
                 f"{worker['rewards']:,} rewards"))
    return rows


def latency_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for run in figures["runs"]:
        what = f"event-to-ranking latency, {run['target_rate_events_per_s']:,} events/s"
        if "skipped" in run:
            rows.append((what, f"not run: {run['skipped']}"))
            continue
        text = f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, p999 {run['p999_ms']} ms"
        if run["saturated"]:
            text = (f"saturated ({run['achieved_rate_events_per_s']:,.0f} events/s produced, "
                    f"{run['rankings_missing_after_60s']:,} rankings missing): {text}")
        if run["target_rate_events_per_s"] == 2_000:
            text += goal(run["p99_ms"], 100, "p99 ≤ 100 ms")
        rows.append((what, text))
    within = [r["target_rate_events_per_s"] for r in figures["runs"]
              if "skipped" not in r and not r["saturated"] and r["p99_ms"] is not None
              and r["p99_ms"] <= 250]
    best = max(within, default=None)
    rows.append(("highest rate run with p99 ≤ 250 ms",
                 (f"{best:,} events/s" if best else "none of the rates run")
                 + goal(best or 0, 5_000, "≥ 5,000 events/s", higher=True)))
    return rows


def goal(value: float | None, limit: float, text: str, higher: bool = False) -> str:
    """`` (goal <text>: met)`` or ``not met``, for a figure and its goal."""
    met = value is not None and (value >= limit if higher else value <= limit)
    return f" (goal {text}: {'met' if met else 'not met'})"


def decision_cost_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    arms = ", ".join(f"`{arm}` {us} µs" for arm, us in figures["arm_items_us"].items())
    return [("one event through the engine alone (join, session, statistics, ranking)",
             f"{figures['engine_event_us']} µs"
             + goal(figures["engine_event_us"], 60, "≤ 60 µs")),
            ("one ranking decision (bandit choice + the arm's items)",
             f"{figures['ranking_decision_us']} µs (the arms' items alone: {arms})")]


def restore_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"restore of {figures['records']:,} changelog records onto an empty data "
             f"directory ({figures['partitions']} partitions)",
             f"{figures['restore_s']} s, {figures['records_per_s'] or 0:,} records/s; ready "
             f"{figures['start_to_ready_s']} s after start, RSS then "
             f"{figures['rss_mb_when_ready']} MB")]


def growth_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"worker at {run['sessions']:,} sessions, {run['items']:,} items ({name})",
             f"{group_rate(run)}; RSS {run['rss_mb_when_done']} MB when "
             f"done, peak {run['rss_mb_peak']} MB")
            for name, run in figures["runs"].items()]


ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {
    "throughput": throughput_rows, "latency": latency_rows, "growth": growth_rows,
    "decision_cost": decision_cost_rows, "restore": restore_rows,
    "learning": suite_worlds.learning_rows, "baselines": suite_worlds.baselines_rows}


def render_table(steps: dict[str, dict[str, Any]]) -> str:
    """The markdown table (measurement, result, command) of the steps' figures."""
    lines = ["| measurement | result | command |", "|---|---|---|"]
    for step in STEPS:
        if step not in steps:
            continue
        figures = steps[step]
        for what, result in ROWS[step](figures["figures"]):
            lines.append(f"| {what} | {result} | `{figures['command']}` |")
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (f"Measured {m['date']} at commit {(m['git_commit'] or '?')[:10]}"
            f"{' (with uncommitted changes)' if m['git_tracked_changes'] else ''} on "
            f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, "
            f"Kafka {m['kafka_version']}; broker, worker and load generator on this machine.\n"
            f"Throughput: {RATE_DEFINITION}.\n" + kept_steps(report)
            + "\n" + render_table(report["steps"]) + suite_worlds.world_tables(report["steps"]))


def kept_steps(report: dict[str, Any]) -> str:
    """A line naming the steps an ``--only`` run kept from earlier runs, with their dates and
    commits, so the header's commit is not taken for theirs."""
    started = report["machine"]["date"]
    kept = [f"{step} ({figures.get('date', '?')[:10]}, commit "
            f"{(figures.get('git_commit') or '?')[:10]})"
            for step, figures in report["steps"].items() if figures.get("date", "") < started]
    return f"Kept from earlier runs: {', '.join(kept)}.\n" if kept else ""


# --- entry point ------------------------------------------------------------------------


def parse_worlds(text: str) -> tuple[str, ...]:
    worlds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(worlds) - set(WORLDS))
    if unknown or not worlds:
        raise argparse.ArgumentTypeError(f"unknown worlds {unknown}; known: {', '.join(WORLDS)}")
    return worlds


def parse_rates(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, tiny sizes")
    parser.add_argument("--only", action="append", choices=STEPS,
                        help="run only this step (repeatable)")
    parser.add_argument("--events", type=int, help="events per throughput run")
    parser.add_argument("--sessions", type=int, help="live sessions of the baseline")
    parser.add_argument("--items", type=int, help="items of the baseline")
    parser.add_argument("--event-time-rate", type=int,
                        help="events per second of event time in the pre-produced stream")
    parser.add_argument("--latency-rates", type=parse_rates, help="e.g. 500,2000,5000")
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--latency-warmup-seconds", type=float)
    parser.add_argument("--growth", type=int, help="factor of more sessions / more items")
    parser.add_argument("--learning-rate", type=float, help="simulated events per second")
    parser.add_argument("--learning-seconds", type=float,
                        help="length of each world's simulated run (1200)")
    parser.add_argument("--worlds", type=parse_worlds,
                        help="comma-separated worlds of the learning and baselines steps "
                             f"(default {','.join(suite_worlds.DEFAULT_WORLDS)}; also arms)")
    parser.add_argument("--next-item-seconds", type=float,
                        help="length of the long-tail next-item evaluation (600; 0: none)")
    parser.add_argument("--seed", type=int, help="seed of the simulated shoppers and streams")
    parser.add_argument("--bare-transactional", action=argparse.BooleanOptionalAction,
                        help="also time the bare loop with one transaction per batch "
                             "(default: yes, but not with --quick)")
    parser.add_argument("--restore-records", type=int,
                        help="changelog records the restore step restores (1,000,000)")
    parser.add_argument("--throughput-runs", type=int,
                        help="rounds of the throughput step; the median is reported (3)")
    parser.add_argument("--worker-checkout", type=Path,
                        help="run the worker from this checkout (default: this one), e.g. "
                             "to compare two versions; the suite itself runs from here")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    options = QUICK if args.quick else Options()
    overrides = {name: getattr(args, name) for name in asdict(options)
                 if getattr(args, name, None) is not None}
    if args.worker_checkout is not None:
        overrides["worker_checkout"] = str(args.worker_checkout.resolve())
    return args, Options(**{**asdict(options), **overrides})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, options = parse_args(argv)
    selected = [step for step in STEPS if not args.only or step in args.only]
    # The in-process steps need no broker: do not start one for them alone.
    needs_kafka = any(step not in KAFKA_FREE_STEPS for step in selected)
    bootstrap = default_bootstrap() if needs_kafka else None
    stem = "suite-quick" if args.quick else "suite"
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    steps: dict[str, dict[str, Any]] = {}
    if args.only and json_path.exists():  # keep the other steps' figures
        previous = json.loads(json_path.read_text())
        steps = previous.get("steps", {})
        for kept in steps.values():  # a step measured in that run: that run's commit
            if "git_commit" not in kept and kept.get("date", "") >= previous["machine"]["date"]:
                kept["git_commit"] = previous["machine"].get("git_commit")
    command = " ".join(["python -m bench.suite", *argv])
    runners: dict[str, Callable[[Any, Options], dict[str, Any]]] = {
        "throughput": step_throughput, "latency": step_latency,
        "decision_cost": lambda b, o: decision_cost.measure(),
        "restore": lambda b, o: restore.run(b, o.restore_records, PARTITIONS),
        "learning": suite_worlds.step_learning,
        "baselines": lambda b, o: suite_worlds.step_baselines(o),
        "growth": lambda b, o: step_growth(b, o, baseline),
    }
    baseline = None
    machine = machine_info(bootstrap)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for step in selected:
        print(f"bench.suite: {step} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        figures = runners[step](bootstrap, options)
        if step == "throughput":
            baseline = figures["worker"]
        steps[step] = {"command": step_command(step, argv), "run_by": command,
                       "date": datetime.now(UTC).isoformat(timespec="seconds"),
                       "seconds": round(time.monotonic() - started, 1),
                       "git_commit": machine["git_commit"],
                       "options": asdict(options), "figures": figures}
        print(f"bench.suite: {step} done in {steps[step]['seconds']} s", file=sys.stderr,
              flush=True)
        # Written after every step: a later step that fails loses only its own figures.
        report = {"suite": "recoloop benchmark suite (issue #6)", "command": command,
                  "machine": machine, "steps": steps}
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        md_path.write_text(render_markdown(report))
    print(md_path.read_text())
    print(f"bench.suite: wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
