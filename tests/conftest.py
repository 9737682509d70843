"""Shared fixtures.

``bootstrap_servers`` is the only one that needs Kafka: it uses ``RECOLOOP_BOOTSTRAP_SERVERS``
when set, and otherwise starts a local broker (``app.dev.local_kafka``, needs Java and Maven) on
127.0.0.1:``RECOLOOP_TEST_KAFKA_PORT`` (default 19092) for the session, one broker for all
the workers of a parallel run. Tests that do not ask for it run without a broker or a JVM.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.kafka import topic_admin
from app.settings import Settings
from tests.worker_process import WorkerProcess

# Under pytest-xdist the controller names a directory its workers share: the first worker
# that needs the broker starts it there (the others wait on the lock and use it), and the
# controller stops it once every worker is done.
SHARED_DIR_VARIABLE = "RECOLOOP_TEST_SHARED_DIR"


def _test_port() -> int:
    return int(os.environ.get("RECOLOOP_TEST_KAFKA_PORT", "19092"))


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ[SHARED_DIR_VARIABLE] = tempfile.mkdtemp(prefix="recoloop-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = os.environ.get(SHARED_DIR_VARIABLE)
    if not shared or hasattr(config, "workerinput"):
        return
    from app.dev import local_kafka

    if (Path(shared) / "started").exists():
        local_kafka.down(port=_test_port(), data_dir=Path(shared) / "kafka")
    shutil.rmtree(shared, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests (fault, outage, slow) first, so that parallel workers do not end
    the run on one of them."""
    items.sort(key=lambda item: not any(item.get_closest_marker(name)
                                        for name in ("fault", "outage", "slow")))


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RECOLOOP_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return

    from app.dev import local_kafka

    port = _test_port()
    shared = os.environ.get(SHARED_DIR_VARIABLE)
    if shared:
        with open(Path(shared) / "kafka.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not local_kafka.status(port):
                local_kafka.up(port=port, data_dir=Path(shared) / "kafka")
                (Path(shared) / "started").touch()
        yield f"127.0.0.1:{port}"
        return
    # A broker someone already runs on that port is used as is, and left running.
    started = not local_kafka.status(port)
    data_dir = tmp_path_factory.mktemp("kafka")  # fresh storage every session
    address = local_kafka.up(port=port, data_dir=data_dir)
    try:
        yield address
    finally:
        if started:
            local_kafka.down(port=port, data_dir=data_dir)


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to the test, e.g. ``t1a2b3c4d-``, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def worker_settings(bootstrap_servers: str, topic_prefix: str) -> Settings:
    """Settings of the test's worker; its contract topics exist (4 partitions)."""
    settings = Settings.of(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix,
                        partitions=4)
    report = topic_admin.apply(settings)
    assert report.ok, report.describe()
    return settings


@pytest.fixture
def start_worker(worker_settings: Settings, tmp_path: Path
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts ``recoloop worker`` processes on the test's topics with extra ``RECOLOOP_*``
    settings (``start_worker(arms="category1")``), each logging to ``log_name`` in the test's
    directory (appended to); all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(data_dir: str = "worker-data", log_name: str = "worker.log",
              **settings: str) -> WorkerProcess:
        process = WorkerProcess(worker_settings.kafka.bootstrap_servers,
                                worker_settings.kafka.topic_prefix,
                                tmp_path / data_dir, tmp_path / log_name, **settings)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_service(worker_settings: Settings, tmp_path: Path
                  ) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts ``recoloop serve`` processes (the rank service) on the test's topics, each
    waited for until ready; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        process = WorkerProcess(worker_settings.kafka.bootstrap_servers,
                                worker_settings.kafka.topic_prefix,
                                tmp_path / "serve-data", tmp_path / "serve.log", "serve",
                                **settings)
        started.append(process.start())
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A running ``recoloop worker`` on the test's topics, stopped with SIGTERM afterwards."""
    return start_worker()
