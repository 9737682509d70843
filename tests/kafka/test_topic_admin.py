"""Topic creation, drift reports and the co-partitioning check, against a real broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from app.contract import topics as contract
from app.contract.specs import load_specs
from app.kafka import topic_admin
from app.kafka.topic_admin import TopicLayoutError, apply, check_copartitioned, internal_topics
from app.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture
def settings(bootstrap_servers: str, topic_prefix: str) -> Settings:
    return Settings.of(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix,
                    partitions=PARTITIONS)


@pytest.fixture
def admin(settings: Settings) -> Iterator[AdminClient]:
    client = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    yield client
    # Leave the shared broker as we found it: delete this test's topics.
    ours = [t for t in client.list_topics(timeout=10).topics
            if t.startswith(settings.kafka.topic_prefix)]
    if ours:
        for future in client.delete_topics(ours, operation_timeout=15).values():
            future.result()


def create(admin: AdminClient, name: str, partitions: int,
           config: dict[str, str] | None = None) -> None:
    future = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})],
                                 operation_timeout=15)[name]
    future.result()


def topic_configs(admin: AdminClient, name: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([resource], request_timeout=15)[resource].result()
    return {key: entries[key].value for key in ("cleanup.policy", "retention.ms",
                                               "message.timestamp.type")}


def all_topics(settings: Settings) -> list[str]:
    return sorted(settings.topic(name) for name in load_specs())


def test_apply_creates_every_contract_topic_as_specified(settings: Settings,
                                                         admin: AdminClient) -> None:
    report = apply(settings)

    assert report.ok, report.describe()
    assert sorted(report.created) == all_topics(settings)
    assert len(report.created) == len(load_specs()) == 9
    assert report.unchanged == [] and report.drift == []
    served = settings.topic(contract.SERVED)
    assert f"created {served} ({PARTITIONS} partitions, delete, retention 7d)" in (
        report.describe().splitlines())

    topics = admin.list_topics(timeout=10).topics
    for name, spec in load_specs().items():
        real = settings.topic(name)
        assert len(topics[real].partitions) == spec.partition_count(PARTITIONS), real
        assert topic_configs(admin, real) == {
            "cleanup.policy": spec.cleanup_policy, "retention.ms": str(spec.retention_ms),
            "message.timestamp.type": spec.timestamp_type}
    assert topic_configs(admin, settings.topic(contract.CATALOG))["cleanup.policy"] == "compact"
    for name in contract.JOIN_INPUT_TOPICS:  # the broker's clock stamps what sites send
        assert topic_configs(admin, settings.topic(name))["message.timestamp.type"] == \
            "LogAppendTime", name


def test_second_apply_is_a_no_op(settings: Settings, admin: AdminClient) -> None:
    assert apply(settings).ok

    again = apply(settings)

    assert again.ok, again.describe()
    assert again.created == [] and again.drift == []
    assert sorted(again.unchanged) == all_topics(settings)
    assert "nothing created" in again.describe()


def test_wrong_partition_count_of_a_join_input_is_drift_and_not_ok(
        settings: Settings, admin: AdminClient) -> None:
    clicks = settings.topic(contract.CLICKS)
    create(admin, clicks, 2)

    report = apply(settings)

    assert not report.ok
    assert clicks in report.unchanged
    assert f"{clicks}: 2 partitions, RECOLOOP_PARTITIONS wants {PARTITIONS}" in report.drift
    assert any("same partition count" in p and clicks in p for p in report.problems)
    assert clicks in report.describe() and "NOT OK" in report.describe()
    # Everything else was still created, and the odd topic was left alone.
    assert sorted(report.created) == sorted(set(all_topics(settings)) - {clicks})
    assert len(admin.list_topics(timeout=10).topics[clicks].partitions) == 2


def test_config_drift_is_reported_but_does_not_fail(settings: Settings,
                                                    admin: AdminClient) -> None:
    catalog = settings.topic(contract.CATALOG)
    create(admin, catalog, PARTITIONS, {"cleanup.policy": "delete"})

    report = apply(settings)

    assert report.ok, report.describe()
    assert any(d.startswith(f"{catalog}: cleanup.policy=delete") for d in report.drift)
    assert topic_configs(admin, catalog)["cleanup.policy"] == "delete"  # not altered


def test_an_input_stamped_by_producers_is_drift(settings: Settings, admin: AdminClient) -> None:
    served = settings.topic(contract.SERVED)
    create(admin, served, PARTITIONS, {"message.timestamp.type": "CreateTime"})

    report = apply(settings)

    assert report.ok, report.describe()
    assert f"{served}: message.timestamp.type=CreateTime, spec wants LogAppendTime" in \
        report.drift


def test_check_copartitioned_names_missing_topics(settings: Settings, admin: AdminClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic_admin, "METADATA_WAIT_S", 0.5)
    with pytest.raises(TopicLayoutError) as caught:
        check_copartitioned(settings)
    message = str(caught.value)
    for name in contract.JOIN_INPUT_TOPICS:
        assert f"{settings.topic(name)} is missing" in message
    assert "recoloop topics apply" in message


def test_check_copartitioned_names_the_odd_topic(settings: Settings, admin: AdminClient) -> None:
    served = settings.topic(contract.SERVED)
    create(admin, served, 3)
    apply(settings)

    with pytest.raises(TopicLayoutError) as caught:
        check_copartitioned(settings)

    message = str(caught.value)
    assert f"{served} has 3" in message
    assert f"{settings.topic(contract.BASKET_ADDS)} has {PARTITIONS}" in message
    assert "recreate" in message


def test_check_copartitioned_passes_after_a_clean_apply(settings: Settings,
                                                        admin: AdminClient) -> None:
    assert apply(settings).ok

    counts = check_copartitioned(settings, admin)

    assert counts == {settings.topic(t): PARTITIONS for t in contract.JOIN_INPUT_TOPICS}


def test_unreachable_broker_is_a_problem_not_a_crash(topic_prefix: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic_admin, "TIMEOUT_S", 0.5)
    dead = Settings.of(bootstrap_servers="127.0.0.1:1", topic_prefix=topic_prefix)
    admin = AdminClient({"bootstrap.servers": dead.kafka.bootstrap_servers, "log_level": 0})

    report = apply(dead, admin)
    assert not report.ok and "Kafka at 127.0.0.1:1" in report.describe()
    with pytest.raises(TopicLayoutError, match="cannot reach Kafka"):
        check_copartitioned(dead, admin)


def test_internal_topics_are_created_once_and_must_match_the_inputs(
        settings: Settings, admin: AdminClient) -> None:
    topics = internal_topics(contract.Topics.of(settings), 4)
    topic_admin.ensure_internal_topics(settings, topics, admin)
    topic_admin.ensure_internal_topics(settings, topics, admin)  # a no-op the second time
    metadata = admin.list_topics(timeout=10).topics
    counts = {name: len(metadata[name].partitions) for name in topics}
    assert counts == {name: spec.partitions for name, spec in topics.items()}
    policies = {name: topic_configs(admin, name)["cleanup.policy"] for name in topics}
    assert policies == {name: spec.config.get("cleanup.policy", "delete")
                        for name, spec in topics.items()}
    with pytest.raises(TopicLayoutError, match="expected"):
        topic_admin.ensure_internal_topics(
            settings, internal_topics(contract.Topics.of(settings), 6), admin)
