"""``recoloop evaluate``: what a candidate policy would have earned on a site's logged
decisions (``reco.rewards``, read committed), by IPS, self-normalised IPS and doubly robust.

Candidates (``--policy``): ``arm:NAME`` (always that arm), ``uniform`` (every arm alike),
``current`` (the site's bandit as it is now, from the models topic, in each decision's
context), ``epsilon:E`` and ``squarecb:G`` (the current bandit with another exploration).
The doubly robust estimate's reward model is the mean reward per arm and context, shrunk
toward the arm's mean (``PRIOR_DECISIONS`` pseudo-decisions), fitted on the same log.
Decisions of arms the site's bandit does not have (its own lists) are left out, and so are
other experiment variants' (``--variant`` picks one: its decisions and its model).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Message

from app.contract.codec import UndecodableRecord, decode_model
from app.contract.topics import REWARDS, Topics
from app.core.experiment import MAIN_VARIANT, model_key
from app.core.policy import ContextualBandit
from app.core.shadow import Chooser, candidate
from app.core.sites import SiteSettings
from app.evaluation.ope import Estimate, Logged, estimate_all
from app.kafka import clients
from app.kafka.reader import TopicReader
from app.settings import Settings

PRIOR_DECISIONS = 10.0


def _context_key(context: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in context.items()))


def reward_model(decisions: Iterable[Mapping[str, Any]]
                 ) -> Callable[[Mapping[str, Any], str], float]:
    """Mean reward per (context, arm), shrunk toward the arm's mean, then the overall one."""
    by_cell: dict[tuple[Any, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_arm: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    total = [0.0, 0.0]
    for d in decisions:
        for cell in (by_cell[(_context_key(d["context"]), d["arm"])], by_arm[d["arm"]], total):
            cell[0] += d["reward"]
            cell[1] += 1
    overall = total[0] / total[1] if total[1] else 0.0

    def predict(context: Mapping[str, Any], arm: str) -> float:
        arm_sum, arm_n = by_arm.get(arm, (0.0, 0.0))
        arm_mean = (arm_sum + PRIOR_DECISIONS * overall) / (arm_n + PRIOR_DECISIONS)
        cell_sum, cell_n = by_cell.get((_context_key(context), arm), (0.0, 0.0))
        return (cell_sum + PRIOR_DECISIONS * arm_mean) / (cell_n + PRIOR_DECISIONS)

    return predict


def evaluate(decisions: Sequence[Mapping[str, Any]], chooser: Chooser,
             arms: Sequence[str]) -> list[Estimate]:
    """The estimates of ``chooser`` on ``decisions`` (``reco.rewards`` values)."""
    usable = [d for d in decisions if d.get("arm") in arms and d.get("propensity", 0) > 0]
    model = reward_model(usable)
    rows = []
    for d in usable:
        context = d.get("context") or {}
        probabilities = chooser(context)
        rows.append(Logged(
            float(d["reward"]), float(d["propensity"]), probabilities.get(d["arm"], 0.0),
            model(context, d["arm"]),
            sum(p * model(context, arm) for arm, p in probabilities.items())))
    return estimate_all(rows)


def read_site(settings: Settings, topic: str, keep: Callable[[bytes | None, bytes], bool],
              ) -> list[bytes]:
    """Every committed record of ``topic`` up to its end as of now that ``keep`` keeps."""
    kept: list[bytes] = []

    def offer(message: Message) -> None:
        value = message.value()
        if value is not None and keep(message.key(), value):
            kept.append(value)

    reader = TopicReader(clients.committed_consumer(settings, f"{settings.app_id}-evaluate"),
                         topic, offer)
    try:
        if reader.assign(timeout_s=10):
            reader.read_to(reader.end_offsets(10))
        return kept
    finally:
        reader.close()


def site_decisions(settings: Settings, site_id: str) -> list[dict[str, Any]]:
    decisions = []
    for raw in read_site(settings, settings.topic(REWARDS), lambda key, value: True):
        value = orjson.loads(raw)
        if value.get("site_id") == site_id:
            decisions.append(value)
    return decisions


def site_model(settings: Settings, site_id: str,
               variant: str | None = None) -> ContextualBandit | None:
    """The site's (or its experiment variant's) newest bandit on the models topic."""
    wanted = model_key(site_id, variant).encode()
    found = read_site(settings, Topics.of(settings).models,
                      lambda key, value: key == wanted)
    for raw in reversed(found):
        try:
            return decode_model(raw)
        except UndecodableRecord:
            continue
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True)
    parser.add_argument("--policy", action="append", required=True,
                        help="arm:NAME, uniform, current, epsilon:E or squarecb:G (repeatable)")
    parser.add_argument("--variant", help="the experiment variant whose decisions and model "
                        "to use (default: the site's own engine)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    decisions = site_decisions(settings, args.site)
    variant = getattr(args, "variant", None)
    current = site_model(settings, args.site, variant)
    arms = current.arms if current is not None else SiteSettings(settings).arms_for(args.site)
    # One logging policy's decisions: a control's list or another variant's bandit would
    # leave the candidates' other arms without support.
    own = {None, MAIN_VARIANT} if variant in (None, MAIN_VARIANT) else {variant}
    logged = [d for d in decisions if d.get("arm") in arms and d.get("variant") in own]
    if not logged:
        print(f"recoloop evaluate: no decisions of site {args.site!r} on {REWARDS}",
              file=sys.stderr)
        return 1
    print(f"site {args.site}: {len(logged)} logged decisions of arms {list(arms)}; "
          f"logged reward per decision {sum(d['reward'] for d in logged) / len(logged):.4f}")
    print("| policy | estimator | value | 95 % interval | effective sample size |")
    print("|---|---|---|---|---|")
    for spec in args.policy:
        try:
            estimates = evaluate(logged, candidate(spec, arms, current), arms)
        except ValueError as exc:
            print(f"recoloop evaluate: {exc}", file=sys.stderr)
            return 2
        for e in estimates:
            print(f"| {spec} | {e.name} | {e.value:.4f} | {e.low:.4f} .. {e.high:.4f} | "
                  f"{e.effective_sample_size:,.0f} of {e.n:,} |")
    return 0
