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
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.contract.topics import BASKET_ADDS, CATALOG, CLICKS, DETAIL_VIEWS, SERVED
from app.settings import DEFAULT_REWARDS, Settings
from app.sim.common import Outgoing, SimClock, World, by_fifth, figures, run_simulated
from app.sim.worlds import WORLDS, best_baseline, build_world, site_ids
from bench.engine_inprocess import InProcessEngine

START_MS = 1_800_000_000_000
VIEWS = (CLICKS, DETAIL_VIEWS)
ENGAGEMENT = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)
HALF_LIFE_MS = 60_000  # popular's
ORDER_REFRESH_MS = 1_000


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


@dataclass(eq=False)  # hashed by identity: sessions index other sessions
class Session:
    basket: set[str] = field(default_factory=set)
    last_viewed: str | None = None
    viewed: dict[str, None] = field(default_factory=dict)  # distinct items, oldest first
    clicked_last: bool = False  # the last view was a click (its detail view is the same visit)


class Contender:
    """What every baseline knows: the catalog's available items and each session's basket
    and viewed items, from the records the world emits."""

    name = "contender"

    def __init__(self, seed: int, size: int) -> None:
        self.rng = random.Random(f"{seed}:{self.name}")
        self.size = size
        self.available: dict[str, dict[str, bool]] = {}  # site -> item -> available
        self.sessions: dict[tuple[str, str], Session] = {}
        self._pools: dict[str, list[str]] = {}  # site -> its available items

    def observe(self, topic: str, value: dict[str, Any]) -> None:
        site = value["site_id"]
        if topic == CATALOG:
            self.available.setdefault(site, {})[value["item_id"]] = value["available"]
            self._pools.pop(site, None)
            return
        session = self.sessions.setdefault((site, value["session_id"]), Session())
        if topic == SERVED:
            return
        item = value["item_id"]
        self.learn(site, session, topic, item, value["ts"])
        if topic == BASKET_ADDS:
            session.basket.add(item)
        if topic in VIEWS:
            session.viewed.pop(item, None)
            session.viewed[item] = None
            session.last_viewed = item
            session.clicked_last = topic == CLICKS

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        """Update the contender's model with one reaction, before the session's state."""

    def candidates(self, site: str, session: Session) -> list[str]:
        pool = self._pools.get(site)
        if pool is None:
            pool = self._pools[site] = [item for item, ok in self.available.get(site, {}).items()
                                        if ok]
        return [item for item in pool if item not in session.basket] if session.basket \
            else pool

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

    def usable(self, site: str, session: Session, items: Iterable[str]) -> list[str]:
        """``items`` without unknown-unavailable ones and the session's basket, in order."""
        available = self.available.get(site, {})
        return [item for item in items
                if available.get(item, True) and item not in session.basket]


class RandomItems(Contender):
    name = "random"

    def rank(self, site: str, session: Session) -> list[str]:
        pool = self.candidates(site, session)
        return self.rng.sample(pool, min(self.size, len(pool)))


class Popular(Contender):
    """The most engaged items (clicks, detail views and basket adds alike), decayed with a
    half-life of ``HALF_LIFE_MS`` of event time, as a shop's own best-seller block follows
    the recent past. Its order is refreshed once per second of event time."""

    name = "popular"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        # Forward decay: an event at ts adds 2 ** (ts / half-life), so the order of the sums
        # is the order of the decayed counts at any later time.
        self.counts: dict[str, Counter[str]] = {}
        self.ref_ts: int | None = None
        self.now = 0
        self._order: dict[str, tuple[int, list[str]]] = {}  # site -> (ts, items best first)

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        if topic in ENGAGEMENT:
            if self.ref_ts is None or ts - self.ref_ts > 500 * HALF_LIFE_MS:
                self._rebase(ts)
            weight = 2.0 ** ((ts - self.ref_ts) / HALF_LIFE_MS)
            self.counts.setdefault(site, Counter())[item] += weight
            self.now = ts

    def _rebase(self, ts: int) -> None:
        """Move the reference time to ``ts``, far from float overflow."""
        factor = 2.0 ** ((ts - self.ref_ts) / HALF_LIFE_MS) if self.ref_ts is not None else 1.0
        for counts in self.counts.values():
            for item in counts:
                counts[item] /= factor
        self.ref_ts = ts

    def order(self, site: str) -> list[str]:
        """Every available item, the most engaged first (ties by catalog order)."""
        now = self.now
        cached = self._order.get(site)
        if cached is None or now - cached[0] >= ORDER_REFRESH_MS:
            counts = self.counts.get(site, Counter())
            available = [item for item, ok in self.available.get(site, {}).items() if ok]
            cached = self._order[site] = (now, sorted(available, key=lambda i: -counts[i]))
        return cached[1]

    def rank(self, site: str, session: Session) -> list[str]:
        return self.popular(site, session, frozenset())

    def popular(self, site: str, session: Session, leave_out: Container[str]) -> list[str]:
        picked: list[str] = []
        for item in self.order(site):
            if item not in leave_out and item not in session.basket:
                picked.append(item)
                if len(picked) == self.size:
                    break
        return picked

    def filled(self, site: str, session: Session, ranked: list[str]) -> list[str]:
        """``ranked`` cut to the list's size, or filled with the most popular items."""
        ranked = ranked[:self.size]
        if len(ranked) < self.size:
            ranked += self.popular(site, session, frozenset(ranked))[:self.size - len(ranked)]
        return ranked


class CoView(Popular):
    """Co-view counts: ``follows[site][a][b]`` is how often a view of ``b`` came right after
    a view of ``a`` in a session; ``a`` follows itself when a visitor views it again. A view
    is a click, or a detail view that is not the one right after the click of its item (the
    same visit)."""

    name = "coview"

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        self.follows: dict[str, dict[str, Counter[str]]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        super().learn(site, session, topic, item, ts)
        last = session.last_viewed
        same_visit = topic == DETAIL_VIEWS and item == last and session.clicked_last
        if topic in VIEWS and last is not None and not same_visit:
            self.follows.setdefault(site, {}).setdefault(last, Counter())[item] += 1

    def rank(self, site: str, session: Session) -> list[str]:
        last = session.last_viewed
        after = self.follows.get(site, {}).get(last, Counter()) if last else Counter()
        ranked = sorted(after, key=lambda item: -after[item])  # ties: first counted first
        return self.filled(site, session, self.usable(site, session, ranked))


class Recent(Popular):
    """The session's viewed items, the latest view first; filled with the most popular."""

    name = "recent"

    def rank(self, site: str, session: Session) -> list[str]:
        return self.filled(site, session,
                           self.usable(site, session, reversed(session.viewed)))


class SessionKnn(Popular):
    """A plain session kNN (Jannach and Ludewig's SKNN): the ``neighbours`` past sessions
    most similar to this one (cosine over the sets of items viewed), each voting its
    similarity for every item it viewed; unbounded memory. Filled with the most popular."""

    name = "sknn"
    neighbours = 100

    def __init__(self, seed: int, size: int) -> None:
        super().__init__(seed, size)
        # (site, item) -> the sessions that viewed it, in order (dict keys: reproducible ties)
        self.sessions_of: dict[tuple[str, str], dict[Session, None]] = {}

    def learn(self, site: str, session: Session, topic: str, item: str, ts: int) -> None:
        super().learn(site, session, topic, item, ts)
        if topic in VIEWS:
            self.sessions_of.setdefault((site, item), {})[session] = None

    def scores(self, site: str, session: Session) -> dict[str, float]:
        """Each item's vote: the summed similarity of the neighbours that viewed it."""
        mine = session.viewed.keys()
        overlap: Counter[Session] = Counter()
        for item in mine:
            overlap.update(self.sessions_of.get((site, item), {}).keys())
        overlap.pop(session, None)
        size = len(mine)
        similar = heapq.nlargest(
            self.neighbours, overlap,
            key=lambda other: overlap[other] / math.sqrt(size * len(other.viewed)))
        votes: dict[str, float] = {}
        for other in similar:
            weight = overlap[other] / math.sqrt(size * len(other.viewed))
            for item in other.viewed:
                votes[item] = votes.get(item, 0.0) + weight
        return votes

    def rank(self, site: str, session: Session) -> list[str]:
        votes = self.scores(site, session) if session.viewed else {}
        ranked = sorted(votes, key=lambda item: -votes[item])
        return self.filled(site, session, self.usable(site, session, ranked))


CONTENDERS: dict[str, Callable[[int, int], Contender]] = {
    c.name: c for c in (RandomItems, Popular, CoView, Recent, SessionKnn)}
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
    from bench import next_item  # it imports this module

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
