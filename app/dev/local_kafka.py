"""A real single-node Apache Kafka broker (KRaft), started from the project's own files.

Development and the integration tests need a real broker (transactions, consumer groups,
compacted changelogs), but not everyone has Docker. The broker's jars come from Maven
Central through ``app/dev/kafka/pom.xml`` (resolved once into a cache), and the broker runs
as a plain background ``java`` process with its config, storage, logs and pid file in one
data directory. Only 127.0.0.1 is used: data port ``port``, KRaft controller port
``port + 1``. ``docker-compose.kafka.yml`` is the same broker for people who have Docker.

By default the data port is PLAINTEXT and nothing else listens. ``up`` can add client
listeners (e.g. SASL_SSL for the security tests), broker properties and SCRAM users; the
plaintext port stays, so ``status`` and the broker's own traffic keep working unchanged.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

# Package data beside this module, so `recoloop kafka up` works from a regular install too.
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
_LIB_MARKER = ".recoloop-complete"
# Brokers started by this process, so their exit is noticed (and reaped) while waiting.
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalKafkaError(RuntimeError):
    """The local broker could not be prepared, started or stopped; the message says why."""


@dataclass(frozen=True)
class Listener:
    """An extra client listener on 127.0.0.1:``port``. ``name`` is what the broker's
    ``listener.name.<name lower-cased>.*`` properties refer to."""

    name: str
    port: int
    protocol: str  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL


def status(port: int = 9092, timeout: float = 2.0) -> bool:
    """Whether a Kafka broker answers a metadata request on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            pass
    except OSError:
        return False
    # log_level 0: librdkafka should not print connection errors while probing.
    admin = AdminClient({"bootstrap.servers": f"{HOST}:{port}", "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return False


def up(port: int = 9092, data_dir: Path = Path("var/kafka"), *,
       listeners: Sequence[Listener] = (), properties: Mapping[str, str] | None = None,
       scram: Sequence[str] = ()) -> str:
    """Start a broker on 127.0.0.1:``port`` (no-op if one answers) and return its address.

    ``listeners`` are added beside the plaintext one, ``properties`` override or extend the
    broker's config, and each of ``scram`` (``SCRAM-SHA-256=[name=u,password=p]``) creates
    a SCRAM user when the storage is first formatted (``kafka-storage format --add-scram``).
    """
    address = f"{HOST}:{port}"
    if status(port):
        return address
    data_dir = data_dir.resolve()
    pid = _running_pid(data_dir)
    if pid is None and not _ports_free(port, [listener.port for listener in listeners]):
        # Perhaps another `up` (another test session) is starting a broker there right now.
        if _wait_for(port, timeout=20.0):
            return address
        raise LocalKafkaError(
            f"cannot start Kafka on {address}: port {port}, the controller port {port + 1} "
            f"or a listener's port is taken by something that does not answer as a Kafka broker"
        )
    if pid is None:  # not still starting from an earlier `up`: start it now
        java = _require("java", "Java 17+ (e.g. `apt-get install openjdk-17-jre-headless`)")
        lib = _lib_dir()
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = _write_config(port, data_dir, listeners, properties or {})
        log4j = data_dir / "log4j2.properties"
        jvm = ["-cp", str(lib / "*"), f"-Dlog4j2.configurationFile={log4j}"]
        if not (data_dir / "data" / "meta.properties").exists():
            _format([java, *jvm], props, scram)
        with open(logs / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true", *jvm,
                 "kafka.Kafka", str(props)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=data_dir, start_new_session=True,
            )
        _children[proc.pid] = proc
        (data_dir / "kafka.pid").write_text(f"{proc.pid}\n")
        pid = proc.pid
    if _wait_for(port, START_TIMEOUT_S, pid):
        return address
    if not _alive(pid):
        (data_dir / "kafka.pid").unlink(missing_ok=True)
        if status(port):  # another process won a race to start a broker on this port
            return address
        raise LocalKafkaError(f"the broker exited during startup{_log_tail(data_dir)}")
    raise LocalKafkaError(
        f"the broker (pid {pid}) did not answer on {address} within {START_TIMEOUT_S:.0f} s; "
        f"it is still running, stop it with `recoloop kafka down`{_log_tail(data_dir)}"
    )


def down(port: int = 9092, data_dir: Path = Path("var/kafka")) -> None:
    """Stop the broker started from ``data_dir``: SIGTERM, then SIGKILL after 30 s.

    A no-op when none runs from ``data_dir``, even if another broker answers on ``port``.
    """
    data_dir = data_dir.resolve()
    pid = _running_pid(data_dir)
    if pid is None:
        (data_dir / "kafka.pid").unlink(missing_ok=True)
        if status(port):
            print(f"recoloop: the broker on {HOST}:{port} was not started from {data_dir}; "
                  "left running", file=sys.stderr)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    (data_dir / "kafka.pid").unlink(missing_ok=True)


def _wait_for(port: int, timeout: float, pid: int | None = None) -> bool:
    """Whether the port answers within ``timeout``; gives up early once ``pid`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (pid is None or _alive(pid)):
        if status(port):
            return True
        time.sleep(0.5)
    return False


def _ports_free(port: int, extra: Sequence[int] = ()) -> bool:
    """Whether the broker port, the controller port (port + 1) and ``extra`` can be bound."""
    for p in (port, port + 1, *extra):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, p))
            except OSError:
                return False
    return True


def _require(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalKafkaError(f"`{tool}` is not on PATH; the local Kafka broker needs {what}")
    return path


def kafka_version() -> str | None:
    """The Kafka version the local broker runs, from ``app/dev/kafka/pom.xml``."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    return ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)


def _lib_dir() -> Path:
    """The broker's jars, resolved with Maven from the pom on first use and then reused."""
    version = kafka_version()
    override = os.environ.get("RECOLOOP_KAFKA_LIB_DIR")
    lib = Path(override) if override else (
        Path.home() / ".cache" / "recoloop" / f"kafka-{version}" / "lib"
    )
    if (lib / _LIB_MARKER).exists():
        return lib
    mvn = _require("mvn", "Apache Maven (e.g. `apt-get install maven`) to fetch the Kafka jars")
    lib.mkdir(parents=True, exist_ok=True)
    # Brokers started at once (parallel test workers) fetch once: the others wait here.
    with open(lib.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (lib / _LIB_MARKER).exists():
            _fetch(mvn, version, lib)
    return lib


def _fetch(mvn: str, version: str | None, lib: Path) -> None:
    print(f"recoloop: fetching Kafka {version} jars into {lib} (first run only)", file=sys.stderr)
    done = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise LocalKafkaError(f"Maven could not resolve {POM}:\n{tail}")
    (lib / _LIB_MARKER).write_text(f"{version}\n")


def _write_config(port: int, data_dir: Path, listeners: Sequence[Listener],
                  properties: Mapping[str, str]) -> Path:
    extra = "".join(f",{x.name}://{HOST}:{x.port}" for x in listeners)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{port + 1}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{port + 1}{extra}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}{extra}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        + "".join(f",{x.name}:{x.protocol}" for x in listeners),
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": (data_dir / "data").as_posix(),
        "num.partitions": "8",
        "auto.create.topics.enable": "true",
        "min.insync.replicas": "1",
        # One broker: every internal topic has one replica; fewer partitions start faster.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.segment.bytes": str(64 * 1024 * 1024),
        **properties,
    }
    props = data_dir / "server.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    log = (data_dir / "logs" / "server.log").as_posix()
    (data_dir / "log4j2.properties").write_text(
        "status = warn\n"
        "appender.file.type = RollingFile\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log}\n"
        f"appender.file.filePattern = {log}.%i\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "appender.file.policies.type = Policies\n"
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
        "appender.file.policies.size.size = 20MB\n"
        "appender.file.strategy.type = DefaultRolloverStrategy\n"
        "appender.file.strategy.max = 3\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.file.ref = file\n"
        # The full config dumps and per-partition state changes drown everything else.
        "logger.config.name = org.apache.kafka.common.config.AbstractConfig\n"
        "logger.config.level = warn\n"
        "logger.state.name = state.change.logger\n"
        "logger.state.level = warn\n"
    )
    return props


def _format(base: list[str], props: Path, scram: Sequence[str]) -> None:
    """Format the KRaft storage once, with a fresh cluster id (and the SCRAM users)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):  # Kafka's ids never start with "-" (CLI-safe)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    done = subprocess.run(
        [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
         *(arg for user in scram for arg in ("--add-scram", user))],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise LocalKafkaError(f"formatting the broker storage failed:\n{done.stdout}{done.stderr}")


def _running_pid(data_dir: Path) -> int | None:
    """The pid in ``data_dir/kafka.pid`` if that process is alive and is a Kafka broker."""
    try:
        pid = int((data_dir / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): trust the pid file
    return pid if b"kafka.Kafka" in cmdline else None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps it, so no zombie counts as alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_tail(data_dir: Path, lines: int = 15) -> str:
    """The broker's errors (without stack frames), or else its last log lines."""
    tails = []
    for name in ("server.log", "stdout.log"):
        try:
            text = (data_dir / "logs" / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        errors = [line for line in text if " ERROR " in line or line.startswith("Caused by")]
        if errors or text:
            what = "errors" if errors else "last lines"
            tails.append(f"\n--- {data_dir / 'logs' / name} ({what}) ---\n"
                         + "\n".join((errors or text)[-lines:]))
    return "".join(tails)
