"""The ``recoloop`` command: ``kafka up|down|status``, ``topics apply``, ``worker``, ``serve``,
``keys create|revoke|list``, ``sites set|show|reset``, ``evaluate``, ``report``, ``simulate``,
``demo``, ``bench``."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings, SettingsError

# A subcommand's handler: the parsed arguments, the settings, and for the worker the stop
# event set up before the slow imports.
Handler = Callable[[argparse.Namespace, Settings, threading.Event | None], int]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A worker asked to stop while it starts (a pod replaced at once) must still exit 0:
    # its handler goes in before the slow imports (app.stream.worker.run takes it from there).
    stop = stop_on_signals() if argv[:1] == ["worker"] else None
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return run_bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"recoloop: bad configuration: {exc}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    return handler(args, settings, stop)


def build_parser() -> argparse.ArgumentParser:
    """The ``recoloop`` parser: one subcommand per row of :func:`subcommands`, each with its
    handler as ``handler``, and ``bench``, whose arguments all go to the suite."""
    parser = argparse.ArgumentParser(prog="recoloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in subcommands():
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
    # Everything after ``bench`` goes to the suite, --help included.
    commands.add_parser("bench", add_help=False,
                        help="the benchmark suite (python -m bench.suite; needs a checkout)")
    return parser


def subcommands() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]]:
    """Every subcommand but ``bench``: its name, help, arguments and handler."""
    from app.evaluation import offline
    from app.evaluation import report as kpi_report
    from app.sim import demo, runner

    return [
        ("kafka", "a local single-node Kafka broker (KRaft)", _kafka_arguments, _kafka),
        ("topics", "the contract's topics", _topics_arguments, _topics),
        ("worker", "run a stream-processing worker", _no_arguments, _worker),
        ("serve", "run the rank service (HTTP, RECOLOOP_SERVE_PORT)", _no_arguments, _serve),
        ("keys", "the rank service's per-site API keys", _keys_arguments, _keys),
        ("sites", "per-site settings and rules (reco.site-config)", _sites_arguments, _sites),
        ("evaluate", "off-policy estimates of candidate policies on a site's decisions",
         offline.add_arguments, lambda args, settings, _: offline.main(args, settings)),
        ("report", "KPIs per experiment variant with intervals, uplift and power "
         "(Markdown and PNG)",
         kpi_report.add_arguments, lambda args, settings, _: kpi_report.main(args, settings)),
        ("simulate", "play simulated shops against a running engine through the topics",
         _simulate_arguments, lambda args, settings, _: runner.main(args, settings)),
        ("demo", "broker, topics, a worker and the simulator: watch the engine learn",
         demo.add_arguments, lambda args, settings, _: demo.main(args, settings)),
    ]


# -- arguments ----------------------------------------------------------------------------

def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _kafka_arguments(kafka: argparse.ArgumentParser) -> None:
    kafka_cmds = kafka.add_subparsers(dest="kafka_command", required=True)
    up = kafka_cmds.add_parser("up", help="start the broker in the background")
    for sub in (up, kafka_cmds.add_parser("down", help="stop the broker"),
                kafka_cmds.add_parser("status", help="say whether the broker answers")):
        sub.add_argument("--port", type=int, default=9092)
        sub.add_argument("--data-dir", type=Path, default=None,
                         help="broker storage and logs (default: var/kafka)")


def _topics_arguments(topics: argparse.ArgumentParser) -> None:
    topics_cmds = topics.add_subparsers(dest="topics_command", required=True)
    topics_cmds.add_parser("apply", help="create missing topics and report drift")


def _keys_arguments(keys: argparse.ArgumentParser) -> None:
    keys_cmds = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_cmds.add_parser("create", help="print a new key (once)")
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--site", help="the site the key opens")
    owner.add_argument("--admin", action="store_true", help="a key that sets site configs")
    keys_cmds.add_parser("revoke", help="revoke a key by its id").add_argument("key_id")
    keys_cmds.add_parser("list", help="key ids and their sites").add_argument("--site")


def _sites_arguments(sites: argparse.ArgumentParser) -> None:
    sites_cmds = sites.add_subparsers(dest="sites_command", required=True)
    site_set = sites_cmds.add_parser("set", help="write a site's config from a JSON file")
    site_set.add_argument("site_id")
    site_set.add_argument("file", type=Path)
    sites_cmds.add_parser("show", help="a site's config").add_argument("site_id")
    sites_cmds.add_parser("reset", help="a site back to the defaults").add_argument("site_id")


def _simulate_arguments(simulate: argparse.ArgumentParser) -> None:
    from app.sim import runner

    runner.add_arguments(simulate, duration_s=60.0, sites=1)
    simulate.add_argument("--summary", type=Path, default=None,
                          help="write the JSON summary here")


# -- handlers -----------------------------------------------------------------------------

def _kafka(args: argparse.Namespace, settings: Settings, _: threading.Event | None) -> int:
    from app.dev import local_kafka

    data_dir = args.data_dir or settings.worker.data_dir / "kafka"
    if args.kafka_command == "up":
        print(local_kafka.up(port=args.port, data_dir=data_dir))
        return 0
    if args.kafka_command == "down":
        local_kafka.down(port=args.port, data_dir=data_dir)
        return 0
    answers = local_kafka.status(port=args.port)
    print(f"kafka on 127.0.0.1:{args.port}: {'up' if answers else 'down'}")
    return 0 if answers else 1


def _topics(args: argparse.Namespace, settings: Settings, _: threading.Event | None) -> int:
    from app.kafka import topic_admin

    report = topic_admin.apply(settings)
    print(report.describe())
    return 0 if report.ok else 1


def _worker(args: argparse.Namespace, settings: Settings, stop: threading.Event | None) -> int:
    from app.stream.worker import run as run_worker

    return run_worker(settings, stop or stop_on_signals())


def _serve(args: argparse.Namespace, settings: Settings, _: threading.Event | None) -> int:
    from app.serve.main import run as run_service

    return run_service(settings)


def _keys(args: argparse.Namespace, settings: Settings, _: threading.Event | None) -> int:
    from app.serve.main import keys_command

    return keys_command(settings, args.keys_command, getattr(args, "site", None),
                        getattr(args, "key_id", None))


def _sites(args: argparse.Namespace, settings: Settings, _: threading.Event | None) -> int:
    from app.serve.main import sites_command

    return sites_command(settings, args.sites_command, args.site_id,
                         getattr(args, "file", None))


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (instead of ending the process at once)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def run_bench(suite_args: list[str]) -> int:
    """``python -m bench.suite`` from the checkout this package lives in."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "suite.py").exists():
        print(f"recoloop bench: no bench/ beside {checkout / 'app'}; run it from a checkout",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench.suite", *suite_args], cwd=checkout)


if __name__ == "__main__":
    sys.exit(main())
