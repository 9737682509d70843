"""``recoloop simulate``: plays a simulated world's shops against a running engine.

The world is the item world (:mod:`app.sim.items`, ``--world items``, the default), the
arm-table world (:mod:`app.sim.arm_table`, ``--world arms``) or one of the item world's variants
(``returns``, ``longtail``, ``slots``, ``shifting``; :mod:`app.sim.worlds`). This is the
thin Kafka side of the simulator: it produces the catalog, then, in real time, the displays
and reactions the model emits (keyed by session, in event-time order), and feeds every
``reco.rankings`` record back into the model. It never waits for a ranking: the model shows
what the engine has published so far, or a default, or a random fallback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from app.contract.topics import RANKINGS
from app.core.sites import SiteSettings
from app.kafka import clients, topic_admin
from app.settings import Settings
from app.sim.common import World
from app.sim.figures import GROUPS
from app.sim.shoppers import Outgoing
from app.sim.worlds import WORLDS, build_world, site_ids

log = logging.getLogger(__name__)

# Default rankings republished this long ago still count: they may be all there is at first.
RANKINGS_LOOKBACK_MS = 60_000
POLL_S = 0.1
FLUSH_TIMEOUT_S = 30.0


class SimulatorError(RuntimeError):
    """The simulator cannot run against these topics; the message says why."""


@dataclass
class SimOptions:
    rate: float = 50.0
    duration_s: float = 60.0
    sites: int = 1
    seed: int = 1
    control_share: float = 0.2
    summary: Path | None = None
    world: str = WORLDS[0]


def add_arguments(parser: argparse.ArgumentParser, duration_s: float, sites: int) -> None:
    """The simulator's options, shared by ``simulate`` and ``demo``."""
    parser.add_argument("--rate", type=float, default=50.0,
                        help="target events per second over all sites (default 50)")
    parser.add_argument("--duration-s", type=float, default=duration_s,
                        help=f"how long to run (default {duration_s:g})")
    parser.add_argument("--sites", type=int, default=sites,
                        help=f"client sites to simulate (default {sites})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation")
    parser.add_argument("--control-share", type=float, default=0.2,
                        help="share of sessions shown a uniformly random list of items (or, "
                             "with --world arms, a random arm) (default 0.2)")
    parser.add_argument("--world", choices=WORLDS, default=WORLDS[0],
                        help="items: shoppers with tastes react to the items shown (default); "
                             "arms: a hidden reward table per arm and context; returns: "
                             "shoppers go back to what they viewed; longtail: thousands of "
                             "items, short sessions; slots: a block of one item; shifting: "
                             "hot items change during the run (docs/worlds.md)")


def options_from(args: argparse.Namespace, summary: Path | None = None) -> SimOptions:
    return SimOptions(args.rate, args.duration_s, args.sites, args.seed, args.control_share,
                      summary, args.world)


def run(settings: Settings, options: SimOptions,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        progress_every_s: float = 2.0) -> dict[str, Any]:
    """Play the simulated shops against the engine on ``settings``' broker and topics.

    Parameters
    ----------
    settings
        Broker, topic prefix, reward window and rewards, and each site's arms.
    options
        Rate, duration, sites, seed, control share, world and where to write the summary.
    on_progress
        Called about every ``progress_every_s`` with :meth:`app.sim.common.World.progress`.
    progress_every_s
        Seconds between progress calls.

    Returns
    -------
    dict
        The simulator's summary (see :data:`app.sim.figures.SUMMARY_FIELDS`), with the
        world, the seed, the topic prefix, whether Ctrl-C or SIGTERM stopped the run early,
        and how many records Kafka failed to take added to ``run``. Also written to
        ``options.summary``.

    Raises
    ------
    SimulatorError
        When the rankings topic is missing or the broker does not take the catalog.
    """
    _check(options)
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({**clients.idempotent_producer(settings), "linger.ms": 5, "logger": log})
    consumer = _rankings_consumer(settings, _now_ms() - RANKINGS_LOOKBACK_MS)
    sim = _world(settings, options)
    interrupted = False
    try:
        _send(producer, settings, sim.catalog_records(), delivered)
        if producer.flush(FLUSH_TIMEOUT_S) or failures:
            where = settings.kafka.bootstrap_servers
            raise SimulatorError(f"could not produce to Kafka at {where}: "
                                 f"{failures[:1] or 'timed out'}")
        _play(sim, producer, consumer, settings, delivered, options.duration_s,
              on_progress, progress_every_s)
    except KeyboardInterrupt:
        interrupted = True  # stop here; the summary covers what ran
    finally:
        undelivered = producer.flush(FLUSH_TIMEOUT_S)
        consumer.close()
    summary = sim.summary()
    summary["run"].update(world=options.world, seed=options.seed, duration_s=options.duration_s,
                          topic_prefix=settings.kafka.topic_prefix, interrupted=interrupted,
                          delivery_failures=len(failures) + undelivered)
    if options.summary is not None:
        write_json(options.summary, summary)
    return summary


def _check(options: SimOptions) -> None:
    if options.sites < 1 or options.duration_s <= 0:
        raise SimulatorError("--sites must be at least 1 and --duration-s positive")
    if options.world not in WORLDS:
        raise SimulatorError(f"--world must be one of {', '.join(WORLDS)}")


def _world(settings: Settings, options: SimOptions) -> World:
    sites = site_ids(options.sites)
    defaults = SiteSettings(settings)  # each site's arms, from the environment
    return build_world(options.world, options.seed, _now_ms, sites=sites, rate=options.rate,
                       control_share=options.control_share,
                       window_ms=int(settings.join.reward_window_s * 1000),
                       rewards=settings.join.rewards,
                       arms={site: defaults.arms_for(site) for site in sites},
                       run_tag=f"sim{uuid.uuid4().hex[:6]}")


def _play(sim: World, producer: Producer, consumer: Consumer, settings: Settings,
          delivered: Callable[[KafkaError | None, Any], None], duration_s: float,
          on_progress: Callable[[dict[str, Any]], None] | None,
          progress_every_s: float) -> None:
    """In real time until ``duration_s`` after the world's start: send what falls due, and
    feed the world every ranking the engine publishes."""
    deadline = sim.start_ms + duration_s * 1000
    next_progress = time.monotonic() + progress_every_s
    while _now_ms() < deadline:
        due = sim.next_due_ms()
        wait_s = POLL_S if due is None else min(POLL_S, max(0.0, (due - _now_ms()) / 1000))
        for message in consumer.consume(500, timeout=wait_s):
            value = message.value() if message.error() is None else None
            if value:
                sim.on_ranking(orjson.loads(value))
        _send(producer, settings, sim.advance(), delivered)
        producer.poll(0)
        if on_progress is not None and time.monotonic() >= next_progress:
            next_progress += progress_every_s
            on_progress(sim.progress())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _send(producer: Producer, settings: Settings, records: list[Outgoing],
          delivered: Callable[[KafkaError | None, Any], None]) -> None:
    for record in records:
        while True:
            try:
                producer.produce(settings.topic(record.topic), key=record.key.encode(),
                                 value=orjson.dumps(record.value), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)


def _rankings_consumer(settings: Settings, since_ms: int) -> Consumer:
    """A consumer of every ``reco.rankings`` partition from ``since_ms`` on (no group
    membership: assigned directly, so it reads at once, without a rebalance)."""
    topic = settings.topic(RANKINGS)
    try:  # through the admin client: it says so when the broker refuses our login
        found = topic_admin.cluster_metadata(topic_admin.admin_client(settings)).topics
    except KafkaException as exc:
        raise SimulatorError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: "
                             f"{exc.args[0]}") from None
    metadata = found.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise SimulatorError(f"topic {topic} is missing on {settings.kafka.bootstrap_servers}: "
                             "run `recoloop topics apply` with the same RECOLOOP_TOPIC_PREFIX")
    consumer = Consumer({**settings.kafka_config(),
                         "group.id": f"{settings.app_id}-simulator-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "latest",
                         "logger": log})
    wanted = [TopicPartition(topic, p, since_ms) for p in metadata.partitions]
    consumer.assign(consumer.offsets_for_times(wanted, timeout=15))
    return consumer


def write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within it, SIGTERM acts like Ctrl-C, so a stopped run still writes what it measured."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProgressPrinter:
    """Prints one progress line per call: events/s since the previous line, decisions, and
    reward per decision and the engine's arm shares over the last minute."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self._last: tuple[float, int] | None = None

    def __call__(self, progress: dict[str, Any]) -> None:
        elapsed, events = progress["elapsed_s"], progress["events"]
        last_elapsed, last_events = self._last or (0.0, 0)
        self._last = (elapsed, events)
        rate = (events - last_events) / max(elapsed - last_elapsed, 1e-9)
        arms = " ".join(f"{arm} {share:.0%}" for arm, share in progress["arm_share"].items())
        print(f"{elapsed:5.0f} s | {rate:5.1f} events/s | {progress['decisions']:6d} decisions"
              f" | reward/decision (last min) engine {_fmt(progress['engine'])}"
              f" random {_fmt(progress['control'])} oracle {_fmt(progress['oracle'])}"
              f" | engine arms: {arms or '-'}", file=self.out, flush=True)


def describe(summary: dict[str, Any]) -> str:
    """The headline figures of a summary, for the terminal."""
    rewards, decisions = summary["reward_per_decision"], summary["decisions"]
    uplift, ctr = summary["uplift_vs_control"], summary["ctr"]
    lines = [
        f"{summary['events']['total']} events in {summary['run']['elapsed_s']:g} s "
        f"({summary['events']['per_s']} events/s); {decisions['total']} decisions settled: "
        + ", ".join(f"{g} {decisions[g]}" for g in GROUPS)
        + f" ({decisions['unsettled']} still in their window)",
        f"reward per decision: engine {_fmt(rewards['engine'])}, "
        f"random control {_fmt(rewards['control'])}, oracle {_fmt(rewards['oracle'])}"
        + ("" if uplift is None else f"; engine vs random {uplift:+.0%}"),
        f"clicks on displayed items per display (CTR): engine {_fmt(ctr['engine'])}, "
        f"random control {_fmt(ctr['control'])}",
        f"regret per engine decision {_fmt(summary['regret']['per_decision'])} "
        f"(oracle minus the expected reward of the engine's choices)",
    ]
    if summary["run"].get("interrupted"):
        lines.append("(interrupted: figures cover the run so far)")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``recoloop simulate``: against the engine on ``settings``' broker and topics."""
    try:
        with sigterm_interrupts():
            summary = run(settings, options_from(args, args.summary), ProgressPrinter())
    except SimulatorError as exc:
        print(f"recoloop simulate: {exc}", file=sys.stderr)
        return 1
    print(describe(summary))
    if args.summary is not None:
        print(f"summary: {args.summary}")
    return 130 if summary["run"]["interrupted"] else 0
