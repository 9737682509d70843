"""The image's HEALTHCHECK: ``GET /health`` of the recoloop command the container runs.

``python healthcheck.py [PID]`` (default 1, the container's entry point) reads the process's
command line: ``recoloop serve`` answers on RECOLOOP_SERVE_PORT, ``recoloop worker`` on
RECOLOOP_WEB_PORT. Exit 0 when it answers 200, 1 otherwise. Standard library only.
"""

import os
import sys
import urllib.request
from pathlib import Path


def health_url(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    port = (os.environ.get("RECOLOOP_SERVE_PORT", "8080") if b"serve" in args
            else os.environ.get("RECOLOOP_WEB_PORT", "6066"))
    host = os.environ.get("RECOLOOP_BIND_HOST", "127.0.0.1")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/health"


def main() -> int:
    try:
        url = health_url(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
        with urllib.request.urlopen(url, timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except (OSError, ValueError) as exc:  # refused, 503 (HTTPError), no such process
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
