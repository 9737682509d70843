"""Off-policy evaluation checked on real logs: the Open Bandit Dataset's small sample.

    .venv/bin/python -m bench.ope_obd

Bernoulli Thompson Sampling's click-through rate, estimated (IPS, self-normalised IPS) from
the uniform random policy's log of the same campaign, against the rate TS's own log shows
(on-policy, with its 95 % interval). TS is not contextual, so its action distribution is
its own log's: each item's share of each position (obp simulates it from the policy's
priors instead). Data: ``tests/data/obd`` (CC BY 4.0, ZOZO, Inc.; see its README).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import Counter
from pathlib import Path

from app.evaluation.ope import Z_95, Estimate, Logged, estimate_all

OBD = Path(__file__).resolve().parents[1] / "tests" / "data" / "obd"


def read_log(policy: str) -> list[dict[str, str]]:
    with (OBD / f"{policy}-all.csv").open() as f:
        return list(csv.DictReader(f))


def thompson_on_random() -> tuple[list[Estimate], float, float]:
    """The estimates, TS's on-policy CTR and the half-width of its 95 % interval."""
    random_log, bts_log = read_log("random"), read_log("bts")
    shown = Counter((r["item_id"], r["position"]) for r in bts_log)
    per_position = Counter(r["position"] for r in bts_log)
    rows = [Logged(float(r["click"]), float(r["propensity_score"]),
                   shown[(r["item_id"], r["position"])] / per_position[r["position"]])
            for r in random_log]
    clicks = [float(r["click"]) for r in bts_log]
    half = Z_95 * statistics.pstdev(clicks) / len(clicks) ** 0.5
    return estimate_all(rows), statistics.fmean(clicks), half


def main() -> int:
    estimates, truth, half = thompson_on_random()
    print(f"Bernoulli TS on its own log (on-policy): CTR {truth:.5f} "
          f"({truth - half:.5f} .. {truth + half:.5f})")
    print("| estimator, from the random log | CTR | 95 % interval | effective sample size |")
    print("|---|---|---|---|")
    for e in estimates:
        print(f"| {e.name} | {e.value:.5f} | {e.low:.5f} .. {e.high:.5f} | "
              f"{e.effective_sample_size:,.0f} of {e.n:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
