"""Next-item evaluation in a simulated world: how often a ranking holds the item the visitor
views next, for each engine arm alone and for a plain session kNN.

    .venv/bin/python -m bench.baselines --world longtail --next-item [--duration-s 600]

Each ranker plays a fresh world with the same seed (the same shoppers: their organic pages
do not depend on what they are shown). After each organic page view (an organic click) the
ranking the ranker publishes for the session in answer to it is taken, and compared with the
item of the session's next organic page view. Only views of the last ``test_share`` (20 %)
of the run count: the rankers learn online from everything before, organic views included,
as the engine does (so both the engine's arms and the session kNN see the same history).

- An engine arm: :class:`bench.engine_inprocess.InProcessEngine` with ``RECOLOOP_ARMS`` set
  to that arm alone and rankings of ``k`` items; every arm of
  :data:`app.settings.KNOWN_ARMS`.
- ``sknn (offline baseline)``: :class:`bench.contenders.SessionKnn` (cosine over the sets of
  items viewed, 100 neighbours, unbounded memory), its top ``k``.

Figures: hit rate at ``k`` (the next item in the top ``k``) and MRR at ``k`` (1 / its rank,
0 beyond ``k``), also for the next views that return to an item the session viewed earlier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from app.contract.topics import CLICKS
from app.core.arms import KNOWN_ARMS
from app.settings import Settings
from app.sim.common import SimClock, run_simulated
from app.sim.shoppers import ORGANIC, Outgoing
from app.sim.worlds import build_world, site_ids
from bench.contenders import SessionKnn
from bench.engine_inprocess import InProcessEngine

K = 20
OFFLINE = "sknn (offline baseline)"
# A ranker: given one batch of the world's records, the ranked items it now has for each
# session those records touched.
Ranker = Callable[[list[Outgoing], int], dict[tuple[str, str], list[str]]]


class View(NamedTuple):
    """An organic page view and the ranking the ranker published in answer to it."""

    site_id: str
    session_id: str
    ts: int
    item_id: str
    ranked: tuple[str, ...]


@dataclass(frozen=True)
class NextItemOptions:
    world: str = "longtail"
    duration_s: float = 600.0
    rate: float = 50.0
    seed: int = 1
    sites: int = 1
    test_share: float = 0.2
    k: int = K
    partitions: int = 8


def engine_ranker(arm: str, options: NextItemOptions) -> Ranker:
    settings = Settings.from_env().replace(arms=(arm,), site_arms={},
                       ranking_size=options.k, partitions=options.partitions)
    engine = InProcessEngine(settings, options.partitions)

    def rank(records: list[Outgoing], now: int) -> dict[tuple[str, str], list[str]]:
        return {(r["site_id"], r["session_id"]): [e["item_id"] for e in r["items"]]
                for r in engine.respond(records, now)}
    return rank


def sknn_ranker(options: NextItemOptions) -> Ranker:
    sknn = SessionKnn(options.seed, options.k)

    def rank(records: list[Outgoing], now: int) -> dict[tuple[str, str], list[str]]:
        touched = {}
        for record in records:
            sknn.observe(record.topic, record.value)
            key = (record.value["site_id"], record.value.get("session_id", ""))
            if record.topic == CLICKS and record.value.get("source") == ORGANIC:
                touched[key] = sknn.rank(key[0], sknn.sessions[key])
        return touched
    return rank


def play(make: Callable[[], Ranker], options: NextItemOptions) -> tuple[int, list[View]]:
    """The run's start and each organic page view with the ranking answering it."""
    clock = SimClock(1_800_000_000_000)
    world = build_world(options.world, options.seed, clock, sites=site_ids(options.sites),
                        rate=options.rate, control_share=0.0, window_ms=20_000,
                        rewards={"click": 1.0, "detail_view": 1.0, "basket_add": 3.0},
                        arms={}, run_tag="next")
    ranker = make()
    ranker(list(world.catalog_records()), clock.now)
    views: list[View] = []

    def respond(records: list[Outgoing]) -> None:
        latest = ranker(records, clock.now)
        for record in records:
            value = record.value
            if record.topic == CLICKS and value.get("source") == ORGANIC:
                key = (value["site_id"], value["session_id"])
                views.append(View(*key, value["ts"], value["item_id"],
                                  tuple(latest.get(key, [])[:options.k])))

    run_simulated(world, clock, world.start_ms + int(options.duration_s * 1000), respond)
    return world.start_ms, views


def score(start_ms: int, views: list[View], options: NextItemOptions) -> dict[str, Any]:
    """Hit rate and MRR at k against each session's next organic view, over the test part."""
    test_from = start_ms + (1 - options.test_share) * options.duration_s * 1000
    by_session: dict[tuple[str, str], list[View]] = {}
    for view in views:
        by_session.setdefault((view.site_id, view.session_id), []).append(view)
    cases = hits = returns = return_hits = 0
    reciprocal = 0.0
    for session in by_session.values():
        for n, (view, following) in enumerate(zip(session, session[1:], strict=False)):
            if view.ts < test_from:
                continue
            target, ranked = following.item_id, view.ranked
            cases += 1
            earlier = {v.item_id for v in session[:n + 1]}
            returns += target in earlier
            if target in ranked:
                hits += 1
                return_hits += target in earlier
                reciprocal += 1.0 / (ranked.index(target) + 1)
    return {"cases": cases, "hit_rate": round(hits / cases, 4) if cases else None,
            "mrr": round(reciprocal / cases, 4) if cases else None, "hits": hits,
            "next_is_a_return": returns, "hits_on_returns": return_hits}


def run(options: NextItemOptions) -> dict[str, Any]:
    """Every engine arm alone and the offline session kNN, on the same sessions."""
    results: dict[str, Any] = {}
    targets = None
    makers: dict[str, Callable[[], Ranker]] = {
        arm: (lambda arm=arm: engine_ranker(arm, options)) for arm in KNOWN_ARMS}
    makers[OFFLINE] = lambda: sknn_ranker(options)
    for name, make in makers.items():
        start_ms, views = play(make, options)
        path = [view[:4] for view in views]
        if targets is None:
            targets = path
        results[name] = {**score(start_ms, views, options), "same_sessions": path == targets}
    return {"world": options.world, "k": options.k, "options": asdict(options),
            "rankers": results}


def render(result: dict[str, Any]) -> str:
    k = result["k"]
    lines = [f"| ranking ({result['world']} world) | next item in the top {k} | MRR@{k} | "
             "hits on returns to an earlier item | cases |", "|---|---|---|---|---|"]
    for name, r in result["rankers"].items():
        label = name if name == OFFLINE else f"`{name}` alone (engine, in-process)"
        lines.append(f"| {label} | {_percent(r['hit_rate'])} | {_percent(r['mrr'])} | "
                     f"{r['hits_on_returns']} of {r['hits']} (returns: "
                     f"{r['next_is_a_return']}) | {r['cases']:,} |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
