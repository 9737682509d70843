"""The ``recoloop`` command: ``kafka up|down|status``, ``topics apply``, ``worker``, ``serve``,
``keys create|revoke|list``, ``sites set|show|reset``, ``evaluate``, ``report``, ``simulate``,
``demo``, ``bench``."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path

from app.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A worker asked to stop while it starts (a pod replaced at once) must still exit 0:
    # its handler goes in before the slow imports (app.stream.worker.run takes it from there).
    stop = stop_on_signals() if argv[:1] == ["worker"] else None
    parser = argparse.ArgumentParser(prog="recoloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    kafka = commands.add_parser("kafka", help="a local single-node Kafka broker (KRaft)")
    kafka_cmds = kafka.add_subparsers(dest="kafka_command", required=True)
    up = kafka_cmds.add_parser("up", help="start the broker in the background")
    for sub in (up, kafka_cmds.add_parser("down", help="stop the broker"),
                kafka_cmds.add_parser("status", help="say whether the broker answers")):
        sub.add_argument("--port", type=int, default=9092)
        sub.add_argument("--data-dir", type=Path, default=None,
                         help="broker storage and logs (default: var/kafka)")

    topics = commands.add_parser("topics", help="the contract's topics")
    topics_cmds = topics.add_subparsers(dest="topics_command", required=True)
    topics_cmds.add_parser("apply", help="create missing topics and report drift")

    commands.add_parser("worker", help="run a stream-processing worker")
    commands.add_parser("serve", help="run the rank service (HTTP, RECOLOOP_SERVE_PORT)")
    keys = commands.add_parser("keys", help="the rank service's per-site API keys")
    keys_cmds = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_cmds.add_parser("create", help="print a new key (once)")
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--site", help="the site the key opens")
    owner.add_argument("--admin", action="store_true", help="a key that sets site configs")
    keys_cmds.add_parser("revoke", help="revoke a key by its id").add_argument("key_id")
    keys_cmds.add_parser("list", help="key ids and their sites").add_argument("--site")
    sites = commands.add_parser("sites", help="per-site settings and rules (reco.site-config)")
    sites_cmds = sites.add_subparsers(dest="sites_command", required=True)
    site_set = sites_cmds.add_parser("set", help="write a site's config from a JSON file")
    site_set.add_argument("site_id")
    site_set.add_argument("file", type=Path)
    sites_cmds.add_parser("show", help="a site's config").add_argument("site_id")
    sites_cmds.add_parser("reset", help="a site back to the defaults").add_argument("site_id")

    from app.evaluation import offline
    from app.evaluation import report as kpi_report
    from app.sim import demo, runner

    offline.add_arguments(commands.add_parser(
        "evaluate", help="off-policy estimates of candidate policies on a site's decisions"))

    kpi_report.add_arguments(commands.add_parser(
        "report", help="KPIs per experiment variant with intervals, uplift and power "
        "(Markdown and PNG)"))

    simulate = commands.add_parser("simulate", help="play simulated shops against a running "
                                   "engine through the topics")
    runner.add_arguments(simulate, duration_s=60.0, sites=1)
    simulate.add_argument("--summary", type=Path, default=None,
                          help="write the JSON summary here")
    demo.add_arguments(commands.add_parser(
        "demo", help="broker, topics, a worker and the simulator: watch the engine learn"))
    # Everything after ``bench`` goes to the suite, --help included.
    commands.add_parser("bench", add_help=False,
                        help="the benchmark suite (python -m bench.suite; needs a checkout)")

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

    if args.command == "kafka":
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

    if args.command == "topics":
        from app.kafka import topic_admin

        report = topic_admin.apply(settings)
        print(report.describe())
        return 0 if report.ok else 1

    if args.command == "serve":
        from app.serve.main import run as run_service

        return run_service(settings)
    if args.command == "keys":
        from app.serve.main import keys_command

        return keys_command(settings, args.keys_command, getattr(args, "site", None),
                            getattr(args, "key_id", None))

    if args.command == "sites":
        from app.serve.main import sites_command

        return sites_command(settings, args.sites_command, args.site_id,
                             getattr(args, "file", None))

    if args.command == "evaluate":
        return offline.main(args, settings)
    if args.command == "report":
        return kpi_report.main(args, settings)
    if args.command == "simulate":
        return runner.main(args, settings)
    if args.command == "demo":
        return demo.main(args, settings)

    from app.stream.worker import run as run_worker

    return run_worker(settings, stop or stop_on_signals())


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
