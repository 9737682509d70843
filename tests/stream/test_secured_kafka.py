"""recoloop through a broker that takes clients only over SASL_SSL (TLS plus a SASL login).

The test starts its own broker on its own ports: a certificate authority and the broker's
certificate are made here with the openssl CLI, the broker serves them as a PEM keystore,
and its SASL_SSL listener takes PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and (unsecured JWT)
OAUTHBEARER logins; the SCRAM users are created when its storage is formatted. ACLs are
enforced (StandardAuthorizer): some principals are super users, the SCRAM-SHA-512 ones hold
only the README's ACLs. Clients get only the SASL_SSL address (the broker's plaintext port
serves its own controller traffic and status check).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from app.contract.topics import (
    BASKET_ADDS,
    CATALOG,
    CLICKS,
    DEAD_LETTER,
    DETAIL_VIEWS,
    RANKINGS,
    REWARDS,
    SERVED,
)
from app.dev import local_kafka
from app.kafka import topic_admin
from app.settings import Settings
from tests.kafka_io import collect, event, now_ms, produce, values
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# Super users (the OAUTHBEARER principal is the unsecured token's subject).
LOGINS = {"PLAIN": "alice", "SCRAM-SHA-256": "bob", "OAUTHBEARER": "dave"}
# Principals with only the README's ACLs (SCRAM-SHA-512 users).
WORKER, SITE, OPS = "acl-worker", "acl-site", "acl-ops"
# A refused login must end a command sooner than the admin calls' timeout: librdkafka alone
# retries the login until then, and then reports only a transport failure.
REFUSED_WITHIN_S = topic_admin.TIMEOUT_S


def since_first(process: subprocess.Popen[str], text: str) -> tuple[str, float]:
    """``process``'s whole output, and the seconds from its first line holding ``text`` (the
    client's first refused login, as it logs it) to its exit."""
    assert process.stdout is not None
    lines, first = [], None
    for line in process.stdout:  # stderr is line-buffered: each line comes as it is logged
        lines.append(line)
        if first is None and text in line:
            first = time.monotonic()
    process.wait(timeout=120)
    output = "".join(lines)
    assert first is not None, f"{text!r} never logged: {output}"
    return output, time.monotonic() - first


@dataclass
class SecuredBroker:
    bootstrap: str  # the SASL_SSL listener
    ca: Path  # the CA that signed the broker's certificate
    passwords: dict[str, str]  # user -> password, fresh for every run

    def env(self, mechanism: str, user: str | None = None, password: str | None = None,
            ca: Path | None = None) -> dict[str, str]:
        """The RECOLOOP_* variables of a client logging in with ``mechanism``."""
        env = {"RECOLOOP_BOOTSTRAP_SERVERS": self.bootstrap,
               "RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
               "RECOLOOP_KAFKA_SSL_CA_LOCATION": str(ca or self.ca),
               "RECOLOOP_KAFKA_SASL_MECHANISM": mechanism}
        user = user or LOGINS[mechanism]
        if mechanism == "OAUTHBEARER":
            return {**env, "RECOLOOP_KAFKA_SASL_OAUTHBEARER_CONFIG": f"principal={user}",
                    "RECOLOOP_KAFKA_ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT": "true"}
        return {**env, "RECOLOOP_KAFKA_SASL_USERNAME": user,
                "RECOLOOP_KAFKA_SASL_PASSWORD": password or self.passwords[user]}


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, private key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", key, "-out", cert)
    return cert, key


def make_keystore(directory: Path, ca: tuple[Path, Path]) -> Path:
    """The broker's PEM keystore: a PKCS#8 key and its certificate for 127.0.0.1 (clients
    check the address against the certificate), signed by ``ca``."""
    key, csr, cert = (directory / f"broker.{ext}" for ext in ("key", "csr", "pem"))
    extensions = directory / "broker.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", key, "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-extfile", extensions, "-out", cert)
    keystore = directory / "broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return keystore


def free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are all free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test's certificates")
    tls = tmp_path_factory.mktemp("tls")
    ca = make_ca(tls, "recoloop-test-ca")
    keystore = make_keystore(tls, ca)
    scram_users = {LOGINS["SCRAM-SHA-256"]: "SCRAM-SHA-256", WORKER: "SCRAM-SHA-512",
                   SITE: "SCRAM-SHA-512", OPS: "SCRAM-SHA-512"}
    passwords = {user: secrets.token_hex(12) for user in [LOGINS["PLAIN"], *scram_users]}
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    properties = {
        "sasl.enabled.mechanisms": ",".join(MECHANISMS),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{LOGINS["PLAIN"]}="{passwords[LOGINS["PLAIN"]]}";',
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
        # Kafka's default OAUTHBEARER validator takes unsecured JWTs: for tests only.
        "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config":
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # ANONYMOUS: the plaintext controller and status traffic.
        "super.users": ";".join(f"User:{u}" for u in ["ANONYMOUS", *LOGINS.values()]),
    }
    users = [f"{mechanism}=[name={user},password={passwords[user]}]"
             for user, mechanism in scram_users.items()]
    port = free_ports(3)  # plaintext, controller, SASL_SSL
    data_dir = tmp_path_factory.mktemp("secured-kafka")
    local_kafka.up(port, data_dir, properties=properties, scram=users,
                   listeners=[local_kafka.Listener("SASL_SSL", port + 2, "SASL_SSL")])
    try:
        yield SecuredBroker(f"127.0.0.1:{port + 2}", ca[0], passwords)
    finally:
        local_kafka.down(port, data_dir)


def recoloop(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``recoloop <command>`` started as users run it, with ``env`` on top of ours."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", *command.split()],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@dataclass
class Round:
    """``topics apply``, a worker, a site's display and click, and the reward read back, on
    fresh topics; ``worker``'s login for all of it unless ``site``/``ops`` name others."""

    directory: Path
    worker_login: dict[str, str]
    site_login: dict[str, str] = field(default_factory=dict)
    ops_login: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"sec{secrets.token_hex(4)}-")

    def env(self, login: dict[str, str]) -> dict[str, str]:
        return {**(login or self.worker_login), "RECOLOOP_TOPIC_PREFIX": self.prefix,
                "RECOLOOP_PARTITIONS": "2"}

    def settings(self, login: dict[str, str]) -> Settings:
        return Settings.from_env(self.env(login))

    def apply_topics(self) -> subprocess.Popen[str]:
        return recoloop("topics apply", self.env(self.ops_login))

    def start_worker(self) -> WorkerProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A click is the best reaction here, so it closes its display at once (max_reward).
        self.worker = WorkerProcess(self.worker_login["RECOLOOP_BOOTSTRAP_SERVERS"], self.prefix,
                                    self.directory / "data", self.directory / "worker.log",
                                    idle_close_s="1", rewards="basket_add=1,detail_view=1,click=1")
        self.worker.env.update(self.env(self.worker_login))
        return self.worker.start()

    def send_display_and_click(self) -> None:
        site = self.settings(self.site_login)
        t = now_ms()
        produce(site, [
            event(site.topic(SERVED), {"event_id": "d1", "site_id": "shop", "session_id": "s1",
                                       "ts": t, "items": ["a", "b"]}),
            event(site.topic(CLICKS), {"event_id": "c1", "site_id": "shop", "session_id": "s1",
                                       "ts": t + 500, "item_id": "b", "served_id": "d1"})])

    def rewards(self, reader: dict[str, str]) -> list[tuple[str, float, str]]:
        settings = self.settings(reader)
        found = values(collect(settings, [settings.topic(REWARDS)], bool, timeout_s=30),
                       settings.topic(REWARDS))
        return [(r["served_id"], r["reward"], r["closed_by"]) for r in found]


def check_applied(process: subprocess.Popen[str], prefix: str) -> None:
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0 and f"created {prefix}{SERVED}" in output, output


def readme_acls(prefix: str) -> list[AclBinding]:
    """The README's "Securing Kafka" ACLs (its kafka-acls.sh commands) for ``prefix``."""
    app_id = f"{prefix}recoloop"
    inputs = [f"{prefix}{t}" for t in (SERVED, CLICKS, DETAIL_VIEWS, BASKET_ADDS, CATALOG)]
    outputs = [f"{prefix}{t}" for t in (RANKINGS, REWARDS, DEAD_LETTER)]
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    op = AclOperation
    rules = [
        (OPS, topic, prefixed, [f"{prefix}reco."],
         [op.CREATE, op.DESCRIBE, op.DESCRIBE_CONFIGS]),
        (SITE, topic, literal, inputs, [op.WRITE]),
        (SITE, topic, literal, [f"{prefix}{RANKINGS}"], [op.READ]),
        (SITE, group, prefixed, [SITE], [op.READ]),
        (WORKER, topic, literal, inputs, [op.READ]),
        (WORKER, topic, literal, outputs, [op.WRITE]),
        (WORKER, topic, prefixed, [f"{app_id}-"], [op.CREATE, op.READ, op.WRITE]),
        (WORKER, group, prefixed, [app_id], [op.READ]),
        (WORKER, txn, prefixed, [f"{app_id}-"], [op.WRITE]),
    ]
    return [AclBinding(kind, name, pattern, f"User:{user}", "*", operation,
                       AclPermissionType.ALLOW)
            for user, kind, pattern, names, operations in rules
            for name in names for operation in operations]


def grant(admin: AdminClient, acls: list[AclBinding]) -> None:
    for future in admin.create_acls(acls).values():
        future.result(30)
    # The broker authorizes from its copy of the metadata: wait until it has them all.
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    deadline = time.monotonic() + 15
    while not set(acls) <= set(admin.describe_acls(everything).result(15)):
        assert time.monotonic() < deadline, "the ACLs did not show up"
        time.sleep(0.1)


def test_every_sasl_mechanism_and_the_readme_acls(secured_broker: SecuredBroker,
                                                 tmp_path: Path) -> None:
    """A round per mechanism, all at once, each with its own topics and group: PLAIN,
    SCRAM-SHA-256 and OAUTHBEARER as super users; SCRAM-SHA-512 as a worker, a site and an
    operator that hold only the README's ACLs."""
    acl = {user: secured_broker.env("SCRAM-SHA-512", user) for user in (WORKER, SITE, OPS)}
    rounds = {m: Round(tmp_path / m, secured_broker.env(m)) for m in LOGINS}
    rounds["ACLs"] = Round(tmp_path / "acls", acl[WORKER], site_login=acl[SITE],
                           ops_login=acl[OPS])
    super_user = secured_broker.env("PLAIN")
    grant(topic_admin.admin_client(rounds["ACLs"].settings(super_user)),
          readme_acls(rounds["ACLs"].prefix))

    for name, applied in [(name, r.apply_topics()) for name, r in rounds.items()]:
        check_applied(applied, rounds[name].prefix)
    workers = [r.start_worker() for r in rounds.values()]
    try:
        for worker in workers:
            worker.wait_ready(60)
        for r in rounds.values():
            r.send_display_and_click()
        for name, r in rounds.items():
            assert r.rewards(super_user) == [("d1", 1.0, "max_reward")], (
                name, r.worker.log_tail())
        # The simulator's producer and rankings consumer, against one of the workers.
        r = rounds["PLAIN"]
        simulated = recoloop(f"simulate --duration-s 4 --rate 30 --summary {r.directory}/s.json",
                             r.env(r.worker_login))
        output = simulated.communicate(timeout=60)[0]
        summary = json.loads((r.directory / "s.json").read_text())
        assert simulated.returncode == 0 and summary["run"]["delivery_failures"] == 0, output
        assert summary["events"]["total"] > 0 and summary["rankings"]["session"] > 0, output
    finally:
        for worker in workers:
            worker.stop()
    for worker in workers:
        log = worker.log_path.read_text()
        assert all(secret not in log for secret in secured_broker.passwords.values())
    assert "AUTHORIZATION_FAILED" not in rounds["ACLs"].worker.log_path.read_text()

    # A site may not write what only workers write.
    refused: list[KafkaError] = []
    site = Producer(rounds["ACLs"].settings(acl[SITE]).kafka_config())
    site.produce(f"{rounds['ACLs'].prefix}{REWARDS}", b"{}", key=b"s1",
                 on_delivery=lambda error, _: refused.append(error))
    site.flush(30)
    assert [e.code() for e in refused] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_a_refused_login_or_certificate_fails_at_once_and_says_why(
        secured_broker: SecuredBroker, tmp_path: Path) -> None:
    """``topics apply`` and ``worker`` with a wrong PLAIN or SCRAM password or a CA that
    did not sign the broker's certificate: six commands, each ended with its reason before
    a login retried until the admin timeout could have ended it. The time counts from the
    client's first refused login, as it logs it, to the command's exit: the interpreter's
    start and imports before it are not the login's."""
    wrong_password = secrets.token_hex(12)
    other_ca = make_ca(tmp_path, "someone-else")[0]
    cases = {"PLAIN password": secured_broker.env("PLAIN", password=wrong_password),
             "SCRAM password": secured_broker.env("SCRAM-SHA-256", password=wrong_password),
             "CA": secured_broker.env("SCRAM-SHA-512", WORKER, ca=other_ca)}
    outputs, took = {}, {}
    for case, env in cases.items():
        for command in ("topics apply", "worker"):
            process = recoloop(command, {**env, "RECOLOOP_DATA_DIR": str(tmp_path / case),
                                         "RECOLOOP_TOPIC_PREFIX": f"sec{secrets.token_hex(4)}-"})
            why = "certificate verify failed" if case == "CA" else "Authentication failed"
            outputs[case, command], took[case, command] = since_first(process, why)
            assert process.returncode == (1 if command == "topics apply" else 2), \
                (case, command, outputs[case, command])
    # Each command's own error line says why (librdkafka's log lines say it too).
    problem = {"topics apply": "problem: talking to Kafka at",
               "worker": "recoloop worker: cannot reach Kafka"}
    for (case, command), output in outputs.items():
        starts = problem[command]
        [error] = [line for line in output.splitlines() if line.startswith(starts)]
        assert ("certificate verify failed" if case == "CA" else "Authentication failed"
                ) in error, (case, command, output)
        assert wrong_password not in output
        assert all(secret not in output for secret in secured_broker.passwords.values())
    assert max(took.values()) < REFUSED_WITHIN_S, (took, outputs)
