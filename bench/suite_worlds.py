"""The suite's ``learning`` and ``baselines`` steps, world by world (issue 24).

``learning``: in every world of ``--worlds`` at once, one ``recoloop worker`` on fresh topics
(a prefix of its own) and one ``recoloop simulate --world W`` against it, for
``--learning-seconds`` at ``--learning-rate`` events/s each (light load: the worlds run
side by side so that twenty minutes of each take twenty minutes). ``baselines``:
``bench.baselines`` in-process on the same worlds, seed, rate and length (the same shoppers),
and the long-tail world's next-item table (``bench.next_item``, ``--next-item-seconds``).

The report sets, per world, the engine beside each baseline (CTR ± standard error over
sessions), the ratio of the engine's CTR to the best baseline's, and the goals: at least
0.97 × the best in every world, at least 1.10 × in three worlds, and no fall of the
engine's CTR from the first fifth of the run to the last beyond the standard error of that
difference.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

from bench import baselines, next_item
from bench.common import delete_topics, fresh_topics, start_worker

DEFAULT_WORLDS = ("items", "returns", "longtail", "slots", "shifting")
NEXT_ITEM_WORLD = "longtail"
KEEP_UP, WIN, WINS_NEEDED = 0.97, 1.10, 3
PARTITIONS = 8


def step_learning(bootstrap: str, options: Any) -> dict[str, Any]:
    """Every world's simulation against its own worker, all at once; their summaries."""
    if importlib.util.find_spec("app.sim.runner") is None:
        return {"status": "not available",
                "reason": "app.sim.runner (recoloop simulate) does not exist in this checkout"}
    runs: dict[str, tuple[Any, Any, Any, Path]] = {}
    results: dict[str, Any] = {}
    try:
        for world in options.worlds:
            settings = fresh_topics(bootstrap, partitions=PARTITIONS)
            worker = start_worker(settings, cwd=Path(options.worker_checkout))
            summary_path = worker.data_dir / "simulation.json"
            simulate = start_worker(settings, (
                "-m", "app.cli", "simulate", "--world", world,
                "--rate", str(options.learning_rate),
                "--duration-s", str(options.learning_seconds), "--seed", str(options.seed),
                "--summary", str(summary_path)))
            runs[world] = (settings, worker, simulate, summary_path)
        deadline = time.monotonic() + options.learning_seconds + 180
        for world, (_, worker, simulate, path) in runs.items():
            code = simulate.process.wait(max(1.0, deadline - time.monotonic()))
            worker.check_alive()
            if code != 0 or not path.exists():
                raise SystemExit(f"recoloop simulate --world {world} exited with {code}; "
                                 f"see {simulate.data_dir}")
            results[world] = world_summary(json.loads(path.read_text()))
    finally:
        for settings, worker, simulate, _ in runs.values():
            simulate.stop()
            worker.stop()
            delete_topics(settings)
    return {"status": "ok", "seed": options.seed, "seconds": options.learning_seconds,
            "rate_events_per_s": options.learning_rate, "worlds": results}


def world_summary(summary: dict[str, Any]) -> dict[str, Any]:
    rewards = summary["reward_per_decision"]
    return {"world": summary["run"].get("world"), "engine": rewards.get("engine"),
            "random": rewards.get("control"), "oracle": rewards.get("oracle"),
            "uplift_vs_random": summary.get("uplift_vs_control"),
            "regret_per_decision": summary.get("regret", {}).get("per_decision"),
            "decisions": summary.get("decisions"),
            "events": summary.get("events", {}).get("total"),
            "ctr": summary.get("ctr"), "standard_error": summary.get("standard_error"),
            "by_fifth": summary.get("by_fifth"), "arm_share": summary.get("arm_share"),
            "summary": {k: v for k, v in summary.items() if k != "timeline"}}


def step_baselines(options: Any) -> dict[str, Any]:
    """``bench.baselines`` in every item world of ``options.worlds`` (the arm world has no
    item lists to compare: its displays name an arm, whose reward is a table's), then the
    long-tail world's next-item table."""
    worlds: dict[str, Any] = {}
    for world in options.worlds:
        if world == "arms":
            continue
        worlds[world] = baselines.run(baselines.Options(
            duration_s=options.learning_seconds, rate=options.learning_rate,
            seed=options.seed, world=world))
    result: dict[str, Any] = {"seed": options.seed, "seconds": options.learning_seconds,
                              "rate_events_per_s": options.learning_rate, "worlds": worlds}
    if NEXT_ITEM_WORLD in options.worlds and options.next_item_seconds > 0:
        result["next_item"] = next_item.run(next_item.NextItemOptions(
            world=NEXT_ITEM_WORLD, duration_s=options.next_item_seconds,
            rate=options.learning_rate, seed=options.seed))
    return result


# --- figures from earlier results files -------------------------------------------------


def learning_worlds(figures: dict[str, Any]) -> dict[str, Any]:
    """World -> figures of a learning step; results of one world (before issue 24) too."""
    if "worlds" in figures:
        return dict(figures["worlds"])
    return {figures.get("world") or "arms": figures}


def baselines_worlds(figures: dict[str, Any]) -> dict[str, Any]:
    if "worlds" in figures:
        return dict(figures["worlds"])
    return {figures.get("world", "items"): figures}


# --- verdicts and tables ----------------------------------------------------------------


def world_verdict(learning: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The engine against the best baseline in one world, and its fall over the run."""
    ctr, se = learning["ctr"]["engine"], learning["standard_error"]["ctr"]["engine"]
    best = max((name for name in base["contenders"] if name != baselines.ENGINE),
               key=lambda name: base["contenders"][name]["engine_group"]["ctr"] or 0.0)
    best_ctr = base["contenders"][best]["engine_group"]["ctr"]
    ratio = round(ctr / best_ctr, 3) if ctr is not None and best_ctr else None
    first, last = learning["by_fifth"][0]["engine"], learning["by_fifth"][-1]["engine"]
    fall = se_fall = None
    if first["ctr"] is not None and last["ctr"] is not None:
        fall = round(first["ctr"] - last["ctr"], 4)
        se_fall = round(math.hypot(first["ctr_se"] or 0.0, last["ctr_se"] or 0.0), 4)
    return {"engine_ctr": ctr, "engine_ctr_se": se, "best_baseline": best,
            "best_ctr": best_ctr, "ratio": ratio,
            "keeps_up": ratio is not None and ratio >= KEEP_UP,
            "wins": ratio is not None and ratio >= WIN,
            "first_fifth_ctr": first["ctr"], "last_fifth_ctr": last["ctr"],
            "fall": fall, "fall_se": se_fall,
            "no_fall": fall is not None and se_fall is not None and fall <= se_fall}


def _run_of(figures: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(seed, seconds, rate) of a learning or baselines step's figures, either format."""
    options = figures.get("options", {})
    return (figures.get("seed", options.get("seed")),
            figures.get("seconds", options.get("duration_s")),
            figures.get("rate_events_per_s", options.get("rate")))


def comparable(steps: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(learning, baselines) figures per world when both ran with the same seed, rate and
    length; empty otherwise."""
    learning = steps.get("learning", {}).get("figures", {})
    base = steps.get("baselines", {}).get("figures")
    if not base or learning.get("status") != "ok" or _run_of(learning) != _run_of(base):
        return {}, {}
    learned, based = learning_worlds(learning), baselines_worlds(base)
    worlds = [w for w in learned if w in based and learned[w].get("by_fifth")]
    return {w: learned[w] for w in worlds}, {w: based[w] for w in worlds}


def plus_minus(value: float | None, se: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _fifths(rows: list[dict[str, Any]], group: str) -> str:
    return " ".join(_number(row[group]["ctr"]) for row in rows)


def world_table(world: str, learning: dict[str, Any], base: dict[str, Any],
                verdict: dict[str, Any]) -> list[str]:
    """One world's table: the engine through Kafka, each baseline, the control group."""
    o, se = base["options"], learning["standard_error"]
    lines = [f"\n**{world} world** (seed {o['seed']}, {o['duration_s']:g} s at {o['rate']:g} "
             f"events/s; oracle {_number(learning['oracle'])} per display; its stated best "
             f"simple strategy `{base.get('stated_best')}`)\n",
             "| contender | CTR | reward / display | CTR by fifth |", "|---|---|---|---|",
             f"| engine (through Kafka) | "
             f"{plus_minus(learning['ctr']['engine'], se['ctr']['engine'])} | "
             f"{plus_minus(learning['engine'], se['reward_per_decision']['engine'])} | "
             f"{_fifths(learning['by_fifth'], 'engine')} |"]
    for name, c in base["contenders"].items():
        f = c["engine_group"]
        lines.append(f"| baseline `{name}` (in-process) | {plus_minus(f['ctr'], f['ctr_se'])} "
                     f"| {plus_minus(f['reward'], f['reward_se'])} | "
                     f"{_fifths(c['by_fifth'], 'engine')} |")
    lines.append(f"| random control group (engine run) | "
                 f"{plus_minus(learning['ctr']['control'], se['ctr']['control'])} | "
                 f"{plus_minus(learning['random'], se['reward_per_decision']['control'])} | "
                 f"{_fifths(learning['by_fifth'], 'control')} |")
    v = verdict
    lines.append(f"\nengine / best baseline (`{v['best_baseline']}`): {_number(v['ratio'])} "
                 f"(≥ {KEEP_UP}: {_met(v['keeps_up'])}; ≥ {WIN}: {'yes' if v['wins'] else 'no'}); "
                 f"engine CTR first fifth {_number(v['first_fifth_ctr'])}, last "
                 f"{_number(v['last_fifth_ctr'])} (fall {_number(v['fall'])}, its standard "
                 f"error {_number(v['fall_se'])}: no fall beyond it {_met(v['no_fall'])}; "
                 f"the best baseline's first and last fifths: "
                 f"{_fifth_ends(base['contenders'][v['best_baseline']]['by_fifth'])})")
    return lines


def _fifth_ends(rows: list[dict[str, Any]]) -> str:
    return f"{_number(rows[0]['engine']['ctr'])}, {_number(rows[-1]['engine']['ctr'])}"


def world_tables(steps: dict[str, dict[str, Any]]) -> str:
    """A table per world, the goals over all worlds, and the long-tail next-item table."""
    learned, based = comparable(steps)
    if not learned:
        return ""
    verdicts = {w: world_verdict(learned[w], based[w]) for w in learned}
    lines: list[str] = []
    for world, verdict in verdicts.items():
        lines += world_table(world, learned[world], based[world], verdict)
    wins = sum(v["wins"] for v in verdicts.values())
    ratios = ", ".join(f"{w} {_number(v['ratio'])}" for w, v in verdicts.items())
    lines += ["\n| goal | result |", "|---|---|",
              f"| engine CTR ≥ {KEEP_UP} × the best baseline's in every world | "
              f"{_met(all(v['keeps_up'] for v in verdicts.values()))} ({ratios}) |",
              f"| ≥ {WIN} × in at least {WINS_NEEDED} worlds | {_met(wins >= WINS_NEEDED)} "
              f"({wins} of {len(verdicts)}) |",
              "| no fall from the first fifth to the last beyond the standard error | "
              f"{_met(all(v['no_fall'] for v in verdicts.values()))} |"]
    base_figures = steps["baselines"]["figures"]
    if "next_item" in base_figures:
        lines += ["", next_item.render(base_figures["next_item"])]
    return "\n".join(lines) + "\n"


def learning_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    if figures.get("status") != "ok":
        return [("reward per decision over a simulated run",
                 f"{figures.get('status', 'not available')}: {figures.get('reason', '')}")]
    rows = []
    for world, f in learning_worlds(figures).items():
        run = f"; {figures['seconds']:g} s at {figures['rate_events_per_s']:g} events/s"
        uplift = f.get("uplift_vs_random")
        rows.append((f"reward per decision ({world} world, through Kafka): "
                     "engine / random / oracle",
                     f"{_number(f['engine'])} / {_number(f['random'])} / {_number(f['oracle'])}"
                     + ("" if uplift is None else f" (engine vs random {uplift:+.0%})") + run))
        ctr, se = f.get("ctr"), f.get("standard_error")
        if ctr and se:
            rows.append((f"CTR ({world} world): engine / random",
                         f"{plus_minus(ctr['engine'], se['ctr']['engine'])} / "
                         f"{plus_minus(ctr['control'], se['ctr']['control'])}" + run))
    return rows


def baselines_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for world, result in baselines_worlds(figures).items():
        o = result["options"]
        ctrs = ", ".join(
            f"`{name}` {plus_minus(c['engine_group']['ctr'], c['engine_group']['ctr_se'])}"
            for name, c in result["contenders"].items())
        rows.append((f"baselines' CTR ({world} world, in-process, the engine's shoppers)",
                     f"{ctrs}; {o['duration_s']:g} s at {o['rate']:g} events/s"))
        if not result["same_shoppers"]:
            rows.append((f"baselines' control groups ({world} world)",
                         "NOT identical: the shoppers differed"))
    return rows


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
