"""Baselines to beat in the item world, on the engine's own shoppers, in-process (issue 12).

    .venv/bin/python -m bench.baselines [--duration-s 600] [--rate 50] [--seed 1]
                                        [--sites 1] [--control-share 0.2] [--out PATH]

Each contender plays a fresh :class:`app.sim.items.ItemWorld` built as ``recoloop simulate``
builds it (:func:`app.sim.worlds.build_world`, same seed, rate, sites and control share), so
it faces the same shoppers, with the same random draws, as the engine in the suite's
``learning`` step. No Kafka and no waiting: the world's simulated clock jumps from one due
record to the next. A contender learns online from exactly what the engine is sent (the
catalog, displays, clicks, detail views and basket adds, organic ones included) and, after
every event of a session, publishes a ranking for it, as the engine does; the world shows
it at the session's next display (with no delay: the engine's rankings reach the simulator
a fraction of a second after the event).

- ``random``: a uniformly random list of the available items (the session's basket left
  out), like the control group's.
- ``popular``: the most engaged items so far (clicks, detail views and basket adds
  counted alike).
- ``coview``: the items most often viewed (clicked or opened) right after the session's
  last viewed item, in other sessions so far; filled with ``popular``'s.

Figures per contender, of the sessions shown its lists (the world's ``engine`` group): CTR
(displays clicked / displays) and reward per display with standard errors over sessions
(a session's displays are not independent), the expected reward of the lists shown and the
oracle's, and how much of the reward the contract credits to organic views; also per fifth of
the run, so learning and drift show. The control group's figures are the same in every run
(same shoppers, same random lists): ``same_shoppers`` checks it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.contract.topics import BASKET_ADDS, CATALOG, CLICKS, DETAIL_VIEWS, SERVED
from app.settings import DEFAULT_REWARDS, Settings
from app.sim.common import Outgoing, SimClock, World, by_fifth, figures, run_simulated
from app.sim.worlds import build_world, site_ids
from bench.engine_inprocess import InProcessEngine

START_MS = 1_800_000_000_000
VIEWS = (CLICKS, DETAIL_VIEWS)
ENGAGEMENT = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)


@dataclass(frozen=True)
class Options:
    duration_s: float = 600.0
    rate: float = 50.0
    seed: int = 1
    sites: int = 1
    control_share: float = 0.2
    window_ms: int = 20_000
    contenders: tuple[str, ...] = ("random", "popular", "coview")
    partitions: int = 8  # the engine contender's, as the suite's topics have


@dataclass
class Session:
    basket: set[str] = field(default_factory=set)
    last_viewed: str | None = None


class Contender:
    """What every baseline knows: the catalog's available items and each session's basket
    and last viewed item, from the records the world emits."""

    name = "contender"

    def __init__(self, seed: int, size: int) -> None:
        self.rng = random.Random(f"{seed}:{self.name}")
        self.size = size
        self.available: dict[str, dict[str, bool]] = {}  # site -> item -> available
        self.sessions: dict[tuple[str, str], Session] = {}

    def observe(self, topic: str, value: dict[str, Any]) -> None:
        site = value["site_id"]
        if topic == CATALOG:
            self.available.setdefault(site, {})[value["item_id"]] = value["available"]
            return
        session = self.sessions.setdefault((site, value["session_id"]), Session())
        if topic == SERVED:
            return
        item = value["item_id"]
        self.learn(site, session, topic, item)
        if topic == BASKET_ADDS:
            session.basket.add(item)
        if topic in VIEWS:
            session.last_viewed = item

    def learn(self, site: str, session: Session, topic: str, item: str) -> None:
        """Update the contender's model with one reaction, before the session's state."""

    def candidates(self, site: str, session: Session) -> list[str]:
        return [item for item, ok in self.available.get(site, {}).items()
                if ok and item not in session.basket]

    def rank(self, site: str, session: Session) -> list[str]:
        raise NotImplementedError

    def ranking(self, site: str, session_id: str, ts: int, number: int) -> dict[str, Any]:
        """A ``reco.rankings`` record for the session, as the engine would publish it."""
        items = self.rank(site, self.sessions[(site, session_id)])
        return {"ranking_id": f"{self.name}-{number}", "site_id": site,
                "session_id": session_id, "ts": ts, "arm": self.name, "propensity": 1.0,
                "items": [{"item_id": item, "score": float(len(items) - n)}
                          for n, item in enumerate(items)],
                "model_version": str(number), "context": {}}


class RandomItems(Contender):
    name = "random"

    def rank(self, site: str, session: Session) -> list[str]:
        pool = self.candidates(site, session)
        return self.rng.sample(pool, min(self.size, len(pool)))


class Popular(Contender):
    name = "popular"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        self.counts: dict[str, Counter[str]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str) -> None:
        if topic in ENGAGEMENT:
            self.counts.setdefault(site, Counter())[item] += 1

    def rank(self, site: str, session: Session, leave_out: frozenset[str] = frozenset()
             ) -> list[str]:
        counts = self.counts.get(site, Counter())
        pool = [item for item in self.candidates(site, session) if item not in leave_out]
        # Ties (unseen items above all) go by catalog order, so the list is reproducible.
        return heapq.nlargest(self.size, pool, key=lambda item: counts[item])


class CoView(Popular):
    """Co-view counts: ``follows[site][a][b]`` is how often ``b`` was viewed right after
    ``a`` in a session."""

    name = "coview"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        self.follows: dict[str, dict[str, Counter[str]]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str) -> None:
        super().learn(site, session, topic, item)
        last = session.last_viewed
        if topic in VIEWS and last is not None and last != item:
            self.follows.setdefault(site, {}).setdefault(last, Counter())[item] += 1

    def rank(self, site: str, session: Session, leave_out: frozenset[str] = frozenset()
             ) -> list[str]:
        last = session.last_viewed
        after = self.follows.get(site, {}).get(last, Counter()) if last else Counter()
        available = self.available.get(site, {})
        ranked = [item for item, _ in sorted(after.items(), key=lambda kv: -kv[1])
                  if available.get(item, True) and item not in session.basket
                  and item != last][:self.size]
        if len(ranked) < self.size:
            ranked += super().rank(site, session, frozenset(ranked) | {last or ""})[
                :self.size - len(ranked)]
        return ranked


CONTENDERS: dict[str, Callable[[int, int], Contender]] = {
    c.name: c for c in (RandomItems, Popular, CoView)}
# The engine's pure core, in-process (not a Contender: it answers with its own rankings).
ENGINE = "engine"


def play(name: str, options: Options) -> World:
    """One contender against a fresh item world for ``options.duration_s`` of simulated
    time; the world, with its settled displays, afterwards."""
    clock = SimClock(START_MS)
    sites = site_ids(options.sites)
    world = build_world("items", options.seed, clock, sites=sites, rate=options.rate,
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
    engine = InProcessEngine(replace(Settings.from_env(), partitions=options.partitions),
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
    return {"world": "items", "options": asdict(options),
            "same_shoppers": all(c == controls[0] for c in controls),
            "contenders": contenders}


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


def parse_args(argv: Sequence[str]) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    parser.add_argument("--duration-s", type=float, default=defaults.duration_s,
                        help="simulated seconds per contender (default 600)")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="simulated events per second (default 50)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--sites", type=int, default=defaults.sites)
    parser.add_argument("--control-share", type=float, default=defaults.control_share)
    parser.add_argument("--contenders", default=",".join(defaults.contenders),
                        help=f"comma-separated, of {', '.join(CONTENDERS)} and {ENGINE} "
                        "(the engine's core in-process, with RECOLOOP_* settings)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.contenders.split(",") if n.strip())
    unknown = sorted(set(names) - {*CONTENDERS, ENGINE})
    if unknown or not names:
        parser.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}, {ENGINE}")
    return Options(args.duration_s, args.rate, args.seed, args.sites, args.control_share,
                   contenders=names), args.out


def main(argv: Sequence[str] | None = None) -> int:
    options, out = parse_args(list(sys.argv[1:] if argv is None else argv))
    result = run(options)
    print(render(result))
    print(f"same shoppers in every run (identical control-group figures): "
          f"{result['same_shoppers']}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if result["same_shoppers"] else 1


if __name__ == "__main__":
    sys.exit(main())
