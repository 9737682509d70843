"""Baselines to beat in every simulated world, on the engine's own shoppers, in-process.

    .venv/bin/python -m bench.baselines [--world items] [--contenders random,...,engine]
                                        [--duration-s 600] [--rate 50] [--seed 1]
                                        [--sites 1] [--control-share 0.2] [--out PATH]
    .venv/bin/python -m bench.baselines --world longtail --next-item   # bench.next_item

Each contender plays a fresh world (``--world``: ``items``, ``returns``, ``longtail``,
``slots`` or ``shifting``; the arm world is left out: its displays name an arm whose reward
is a hidden table's, so there are no item lists to compare) built as ``recoloop simulate``
builds it (:func:`app.sim.worlds.build_world`, same seed, rate, sites and control share), so
it faces the same shoppers, with the same random draws, as the engine in the suite's
``learning`` step. No Kafka and no waiting: the world's simulated clock jumps from one due
record to the next. A contender learns online from exactly what the engine is sent (the
catalog, displays, clicks, detail views and basket adds, organic ones included) and, after
every event of a session, publishes a ranking for it, as the engine does; the world shows
it at the session's next display (with no delay: the engine's rankings reach the simulator
a fraction of a second after the event). A view is a click or a detail view.

- ``random``: a uniformly random list of the available items (the session's basket left
  out), like the control group's.
- ``popular``: the most engaged items (clicks, detail views and basket adds alike),
  decayed with a half-life of one minute of event time.
- ``coview``: the items most often viewed right after the session's last viewed item, in
  every session so far, organic views included; an item follows itself when a visitor views
  it again (a detail view right after its own click is the same visit). Filled with
  ``popular``'s.
- ``recent``: the session's viewed items, the latest first (the page's own included),
  filled with ``popular``'s.
- ``sknn``: a plain session kNN: the 100 sessions most similar to this one (cosine over the
  sets of viewed items, unbounded memory), each voting its similarity for every item it
  viewed; filled with ``popular``'s. The offline baseline of :mod:`bench.next_item`.
- ``engine``: the engine's core in-process (:mod:`bench.engine_inprocess`), with the
  ``RECOLOOP_*`` settings (``RECOLOOP_ARMS``...).

Figures per contender, of the sessions shown its lists (the world's ``engine`` group): CTR
(displays clicked / displays) and reward per display with standard errors over sessions
(a session's displays are not independent), the expected reward of the lists shown and the
oracle's, and how much of the reward the contract credits to organic views; also per fifth of
the run, so learning and drift show. The control group's figures are the same in every run
(same shoppers, same random lists): ``same_shoppers`` checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.settings import DEFAULT_REWARDS, Settings
from app.sim.common import SimClock, World, run_simulated
from app.sim.figures import by_fifth, figures
from app.sim.shoppers import Outgoing
from app.sim.worlds import WORLDS, best_baseline, build_world, site_ids
from bench import next_item
from bench.contenders import CONTENDERS
from bench.engine_inprocess import InProcessEngine

START_MS = 1_800_000_000_000


@dataclass(frozen=True)
class Options:
    duration_s: float = 600.0
    rate: float = 50.0
    seed: int = 1
    sites: int = 1
    control_share: float = 0.2
    window_ms: int = 20_000
    contenders: tuple[str, ...] = ("random", "popular", "coview", "recent", "sknn")
    world: str = "items"
    partitions: int = 8  # the engine contender's, as the suite's topics have


# The engine's pure core, in-process (not a Contender: it answers with its own rankings).
ENGINE = "engine"


def play(name: str, options: Options) -> World:
    """One contender against a fresh item world for ``options.duration_s`` of simulated
    time; the world, with its settled displays, afterwards."""
    clock = SimClock(START_MS)
    sites = site_ids(options.sites)
    world = build_world(options.world, options.seed, clock, sites=sites, rate=options.rate,
                        control_share=options.control_share, window_ms=options.window_ms,
                        rewards=DEFAULT_REWARDS, arms={}, run_tag=name)
    if name == ENGINE:
        return _play_engine(world, clock, options)
    contender = CONTENDERS[name](options.seed, world.config.display_size)
    for record in world.catalog_records():
        contender.observe(record.topic, record.value)
    published = 0

    def respond(records: list[Outgoing]) -> None:
        nonlocal published
        touched = {}
        for record in records:
            contender.observe(record.topic, record.value)
            touched[(record.value["site_id"], record.value["session_id"])] = record.value["ts"]
        for (site, session), ts in touched.items():
            published += 1
            world.on_ranking(contender.ranking(site, session, ts, published))

    run_simulated(world, clock, world.start_ms + int(options.duration_s * 1000), respond)
    return world


def _play_engine(world: World, clock: SimClock, options: Options) -> World:
    """The engine's own core in-process (:mod:`bench.engine_inprocess`), with the settings of
    ``RECOLOOP_*`` variables (arms, exploration), as ``recoloop worker`` would have them."""
    engine = InProcessEngine(Settings.from_env().replace(partitions=options.partitions),
                             options.partitions)
    engine.respond(list(world.catalog_records()), clock.now)

    def respond(records: list[Outgoing]) -> None:
        for ranking in engine.respond(records, clock.now):
            world.on_ranking(ranking)

    run_simulated(world, clock, world.start_ms + int(options.duration_s * 1000), respond)
    return world


def contender_figures(world: World, options: Options) -> dict[str, Any]:
    duration_ms = options.duration_s * 1000
    return {"engine_group": figures(r for r in world.settled if r.group == "engine"),
            "control_group": figures(r for r in world.settled if r.group == "control"),
            "by_fifth": by_fifth(world.settled, world.start_ms, duration_ms,
                                 groups=("engine", "control")),
            "events": world.events_produced(), "unsettled": world.unsettled}


def run(options: Options) -> dict[str, Any]:
    """Every contender in ``options``, each on the same shoppers; their figures."""
    contenders: dict[str, Any] = {}
    for name in options.contenders:
        started = time.monotonic()
        world = play(name, options)
        contenders[name] = {**contender_figures(world, options),
                            "seconds": round(time.monotonic() - started, 1)}
    controls = [c["control_group"] for c in contenders.values()]
    return {"world": options.world, "options": asdict(options),
            "same_shoppers": all(c == controls[0] for c in controls),
            "stated_best": best_baseline(options.world), "best": best_of(contenders),
            "contenders": contenders}


def best_of(contenders: dict[str, Any]) -> str | None:
    """The baseline with the highest CTR (the engine is no baseline); None without any."""
    ctr = {name: c["engine_group"]["ctr"] or 0.0 for name, c in contenders.items()
           if name != ENGINE}
    return max(ctr, key=lambda name: ctr[name]) if ctr else None


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def render(result: dict[str, Any]) -> str:
    """A markdown table: each contender's CTR and reward per display (± standard error),
    the expected reward of its lists, the oracle's, and CTR and reward per fifth."""
    lines = ["| contender | displays | CTR | reward / display | expected | oracle | "
             "from organic views | CTR by fifth | reward by fifth |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, c["engine_group"], [f["engine"] for f in c["by_fifth"]])
            for name, c in result["contenders"].items()]
    if result["contenders"]:
        first = next(iter(result["contenders"].values()))
        rows.append(("control group (random lists, the world's own)", first["control_group"],
                     [f["control"] for f in first["by_fifth"]]))
    for name, f, fifths in rows:
        lines.append(f"| {name} | {f['decisions']:,} | {_pm(f['ctr'], f['ctr_se'])} | "
                     f"{_pm(f['reward'], f['reward_se'])} | {_pm(f['expected'], None)} | "
                     f"{_pm(f['oracle'], None)} | {_pm(f['organic'], None)} | "
                     + " ".join(_pm(x["ctr"], None) for x in fifths) + " | "
                     + " ".join(_pm(x["reward"], None) for x in fifths) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> tuple[Options, Path | None, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    parser.add_argument("--duration-s", type=float, default=defaults.duration_s,
                        help="simulated seconds per contender (default 600)")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="simulated events per second (default 50)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--world", choices=[w for w in WORLDS if w != "arms"],
                        default=defaults.world, help="the simulated world (default items)")
    parser.add_argument("--sites", type=int, default=defaults.sites)
    parser.add_argument("--control-share", type=float, default=defaults.control_share)
    parser.add_argument("--contenders", default=",".join(defaults.contenders),
                        help=f"comma-separated, of {', '.join(CONTENDERS)} and {ENGINE} "
                        "(the engine's core in-process, with RECOLOOP_* settings)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--next-item", action="store_true",
                        help="instead: next-item hit rate and MRR at 20 of each engine arm "
                             "alone and of an offline session kNN (bench.next_item)")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.contenders.split(",") if n.strip())
    unknown = sorted(set(names) - {*CONTENDERS, ENGINE})
    if unknown or not names:
        parser.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}, {ENGINE}")
    return Options(args.duration_s, args.rate, args.seed, args.sites, args.control_share,
                   contenders=names, world=args.world), args.out, args.next_item


def main(argv: Sequence[str] | None = None) -> int:
    options, out, next_item = parse_args(list(sys.argv[1:] if argv is None else argv))
    if next_item:
        return _next_item_main(options, out)
    result = run(options)
    print(render(result))
    print(f"same shoppers in every run (identical control-group figures): "
          f"{result['same_shoppers']}")
    print(f"best baseline in the {result['world']} world: {result['best']} (its docstring "
          f"says {result['stated_best']})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if result["same_shoppers"] else 1


def _next_item_main(options: Options, out: Path | None) -> int:
    result = next_item.run(next_item.NextItemOptions(
        world=options.world, duration_s=options.duration_s, rate=options.rate,
        seed=options.seed, sites=options.sites, partitions=options.partitions))
    print(next_item.render(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if all(r["same_sessions"] for r in result["rankers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
