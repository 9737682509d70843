"""The clients factory: the properties exactly-once depends on, on top of the settings'
bootstrap servers and security properties."""

from __future__ import annotations

from pathlib import Path

from app.kafka import clients
from app.settings import Settings

SECURED = Settings.of(bootstrap_servers="broker:9093",
                   kafka_security={"security.protocol": "SASL_PLAINTEXT",
                                   "sasl.mechanism": "PLAIN", "sasl.username": "u",
                                   "sasl.password": "p"})


def test_a_committed_consumer_reads_committed_records_and_commits_nothing_itself() -> None:
    config = clients.committed_consumer(SECURED, "readers")
    assert config == {**SECURED.kafka_config(), "group.id": "readers",
                      "enable.auto.commit": False, "isolation.level": "read_committed"}


def test_producers_keep_the_security_properties() -> None:
    transactional = clients.transactional_producer(SECURED, "app-worker-1")
    assert transactional["transactional.id"] == "app-worker-1"
    assert transactional.items() >= {**SECURED.kafka_config(),
                                     **clients.TRANSACTIONAL_TUNING}.items()
    assert clients.idempotent_producer(SECURED) == {**SECURED.kafka_config(),
                                                    "enable.idempotence": True}


def test_each_call_returns_a_dict_of_its_own() -> None:
    first = clients.committed_consumer(SECURED, "g")
    first["auto.offset.reset"] = "earliest"
    assert "auto.offset.reset" not in clients.committed_consumer(SECURED, "g")


def test_only_the_factory_sets_what_exactly_once_depends_on() -> None:
    """In app and bench, isolation.level, transactional.id and enable.idempotence are set in
    app.kafka.clients only; bench/faust_compare.py's contender, the loop written out small
    for that comparison, keeps its own producer."""
    root = Path(__file__).resolve().parents[2]
    names = ('"isolation.level"', '"transactional.id"', '"enable.idempotence"')
    setting = sorted(str(path.relative_to(root)) for folder in ("app", "bench")
                     for path in (root / folder).rglob("*.py")
                     if any(name in path.read_text() for name in names))
    assert setting == ["app/kafka/clients.py", "bench/faust_compare.py"]
