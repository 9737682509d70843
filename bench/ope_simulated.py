"""Off-policy evaluation checked where the truth is known: the arm-table world.

    .venv/bin/python -m bench.ope_simulated [--duration-s 600] [--seed 1]

The engine's core plays the arm-table world in-process (``bench.engine_inprocess``: the
worker's engine and bandit, no Kafka) with its five arms, logging every closed decision as
``reco.rewards`` would (arm, propensity, context, reward). Then ``recoloop evaluate``'s
estimators (:func:`app.evaluation.offline.evaluate`) estimate, from that log alone, what
always showing each arm, or every arm alike, would have earned per decision; the world's
hidden model gives the truth on the same decisions' contexts (its expected reward of that
arm there, within the reward window).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from app.core.shadow import candidate
from app.evaluation.offline import evaluate
from app.settings import DEFAULT_REWARDS, Settings
from app.sim.arm_table import Simulator
from app.sim.common import SimClock, run_simulated
from app.sim.worlds import build_world
from bench.engine_inprocess import InProcessEngine

ARMS = ("category1", "category2", "bestsellers", "trending", "similar")
START_MS = 1_800_000_000_000
SITE = "shop-1"


def logged_run(duration_s: float, seed: int) -> tuple[list[dict[str, Any]], Simulator]:
    clock = SimClock(START_MS)
    world = build_world("arms", seed, clock, sites=(SITE,), rate=50, control_share=0.0,
                        window_ms=20_000, rewards=DEFAULT_REWARDS, arms={SITE: ARMS},
                        run_tag="ope")
    assert isinstance(world, Simulator)
    engine = InProcessEngine(Settings.from_env().replace(arms=ARMS))
    decisions: list[dict[str, Any]] = []
    engine.on_decision = decisions.append
    engine.respond(list(world.catalog_records()), clock.now)

    def respond(records: list[Any]) -> None:
        for ranking in engine.respond(records, clock.now):
            world.on_ranking(ranking)

    run_simulated(world, clock, world.start_ms + int(duration_s * 1000), respond)
    return [d for d in decisions if d["arm"] in ARMS], world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ope_simulated", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    decisions, world = logged_run(args.duration_s, args.seed)
    model = world.models[SITE]
    logged = statistics.fmean(d["reward"] for d in decisions)
    print(f"{len(decisions):,} logged decisions, reward per decision {logged:.4f} "
          f"(seed {args.seed}, {args.duration_s:.0f} s at 50 events/s)")
    print("| policy | truth | ips | snips | dr | all three cover it |")
    print("|---|---|---|---|---|---|")
    covered: dict[str, int] = {}
    for spec in [f"arm:{arm}" for arm in ARMS] + ["uniform"]:
        chooser = candidate(spec, ARMS, None)
        truth = statistics.fmean(
            sum(p * model.expected_reward(arm, d["context"])
                for arm, p in chooser(d["context"]).items()) for d in decisions)
        estimates = evaluate(decisions, chooser, ARMS)
        cells = [f"{e.value:.3f} ({e.low:.3f} .. {e.high:.3f})" for e in estimates]
        for e in estimates:
            covered[e.name] = covered.get(e.name, 0) + e.covers(truth)
        hits = all(e.covers(truth) for e in estimates)
        print(f"| {spec} | {truth:.3f} | {' | '.join(cells)} | {'yes' if hits else 'no'} |")
    print("intervals covering the truth, of", len(ARMS) + 1, "policies:",
          ", ".join(f"{name} {n}" for name, n in covered.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
