"""Where a saturated worker spends its time: py-spy on the throughput run.

    pip install -e '.[bench]'   # py-spy
    .venv/bin/python -m bench.profile [--events 100000] [--seconds 20] [--top 25]

Produces the throughput step's events (``bench.suite``: the mixed stream, 8 partitions,
pre-produced), starts one worker, lets it start consuming, and samples it with ``py-spy
record`` (100 Hz, every thread, native frames off) while it works through the backlog. Prints
the functions with the largest share of the samples of the loop's thread: inclusive (the
function or anything it calls) and self, and writes the collapsed stacks to
``bench/results/profile.txt`` (for a flame graph: ``flamegraph.pl`` or speedscope).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.common import RESULTS, bootstrap_servers, delete_topics, start_worker
from bench.suite import Options, prepare_inputs


def shares(collapsed: str) -> tuple[int, Counter[str], Counter[str]]:
    """Samples of the busiest thread, and per function its inclusive and self samples."""
    threads: Counter[str] = Counter()
    stacks = []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            thread = stack.split(";", 1)[0]
            threads[thread] += int(count)
            stacks.append((thread, stack.split(";")[1:], int(count)))
    busiest = threads.most_common(1)[0][0]
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for thread, frames, count in stacks:
        if thread != busiest or not frames:
            continue
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return threads[busiest], inclusive, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    options = Options(events=args.events)
    settings = prepare_inputs(bootstrap_servers(), options, options.sessions, options.items)
    worker = start_worker(settings)
    out = RESULTS / "profile.txt"
    try:
        time.sleep(8)  # started, partitions assigned and restored: consuming the backlog
        worker.check_alive()
        subprocess.run([py_spy, "record", "--pid", str(worker.process.pid), "--duration",
                        str(args.seconds), "--rate", "100", "--format", "raw", "--output",
                        str(out)], check=True, capture_output=True)
    finally:
        worker.stop(remove_data=True)
        delete_topics(settings)
    total, inclusive, own = shares(out.read_text())
    print(f"{total} samples of the loop's thread over {args.seconds} s; share of them:")
    print(f"{'inclusive':>9} {'self':>6}  function")
    for frame, count in inclusive.most_common(args.top):
        print(f"{count / total:9.1%} {own[frame] / total:6.1%}  {frame}")
    print("\nmost self time:\n" + "\n".join(
        f"{count / total:6.1%}  {frame}" for frame, count in own.most_common(12)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
