"""Settings from RECOLOOP_* variables: parsing, defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.arms import KNOWN_ARMS
from app.core.sites import SiteConfig, SiteSettings
from app.settings import DEFAULT_ARMS, ServeSettings, Settings, SettingsError


def test_defaults_without_any_variable():
    settings = Settings.from_env({})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (settings.kafka.topic_prefix, settings.kafka.partitions) == ("", 8)
    assert (settings.join.reward_window_s, settings.join.grace_s) == (20.0, 5.0)
    assert settings.join.rewards == {"basket_add": 3.0, "detail_view": 1.0, "click": 1.0}
    assert settings.topic("reco.served") == "reco.served"


def test_variables_are_parsed_into_typed_fields():
    settings = Settings.from_env({
        "RECOLOOP_TOPIC_PREFIX": "staging.", "RECOLOOP_PARTITIONS": "4",
        "RECOLOOP_DATA_DIR": "/tmp/x", "RECOLOOP_REWARD_WINDOW_S": "2.5",
        "RECOLOOP_ARMS": "bestsellers, trending", "RECOLOOP_REWARDS": "click=0.5",
        "RECOLOOP_SITE_ARMS": "a=category1,similar;b=trending",
    })
    assert settings.topic("reco.served") == "staging.reco.served"
    assert settings.app_id == "staging.recoloop"
    assert (settings.kafka.partitions, settings.worker.data_dir) == (4, Path("/tmp/x"))
    assert settings.join.reward_window_s == 2.5
    assert settings.bandit.arms == ("bestsellers", "trending")
    assert settings.join.rewards["click"] == 0.5 and settings.join.rewards["basket_add"] == 3.0
    sites = SiteSettings(settings)
    assert sites.arms_for("a") == ("category1", "similar")
    assert sites.arms_for("unknown-site") == ("bestsellers", "trending")


@pytest.mark.parametrize("variable, value", [
    ("RECOLOOP_PARTITIONS", "eight"),
    ("RECOLOOP_PARTITIONS", "0"),
    ("RECOLOOP_METRICS_PORT", "70000"),
    ("RECOLOOP_GRACE_S", "-1"),
    ("RECOLOOP_EXPLORATION", "1.5"),
    ("RECOLOOP_ARMS", "bestsellers,astrology"),
    ("RECOLOOP_REWARDS", "purchase=5"),
    ("RECOLOOP_SITE_ARMS", "a=nothing"),
    ("RECOLOOP_REWARDS", "click=-1"),
    ("RECOLOOP_REWARDS", "click=0,detail_view=0,basket_add=0"),
    ("RECOLOOP_REWARDS", "click=nan"),
    ("RECOLOOP_SESSION_TIMEOUT_S", "10"),
    ("RECOLOOP_REWARD_WINDOW_S", "inf"),
    ("RECOLOOP_WEB_PORT", "9464"),
])
def test_a_bad_value_stops_start_up_with_a_message_naming_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_settings_are_frozen_to_the_bottom():
    settings = Settings.from_env({"RECOLOOP_SITE_JOIN": "a=click:2",
                                  "RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SSL"})
    with pytest.raises(AttributeError):
        settings.kafka.partitions = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.kafka = settings.kafka  # type: ignore[misc]
    for mapping in (settings.join.rewards, settings.join.site_join, settings.kafka.security,
                    settings.join.site_join["a"].rewards, settings.sites):
        with pytest.raises(TypeError):
            mapping["click"] = 0  # type: ignore[index]


def test_sections_name_their_variables_and_build_from_them():
    assert Settings().bandit.arms == DEFAULT_ARMS
    assert ServeSettings.var("port") == "RECOLOOP_SERVE_PORT"
    assert len(Settings.variables()) == len(set(Settings.variables()))
    built = Settings.of(serve_port=9000, reward_window_s=3, kafka_security={})
    assert (built.serve.port, built.join.reward_window_s) == (9000, 3)
    assert built.replace(serve_port=9001).serve.port == 9001
    with pytest.raises(TypeError, match="no setting"):
        Settings.of(port=1)
    with pytest.raises(SettingsError, match="RECOLOOP_SERVE_PORT"):
        Settings.of(serve_port=0)


def test_one_pair_syntax_for_rewards_everywhere():
    """``name:value`` pairs, as per-site values write them; ``name=value`` as documented."""
    for rewards in ("click:2,basket_add=4", "click=2,basket_add:4"):
        settings = Settings.from_env({"RECOLOOP_REWARDS": rewards,
                                      "RECOLOOP_SITE_JOIN": f"a={rewards}"})
        assert dict(settings.join.rewards) == {"basket_add": 4, "detail_view": 1, "click": 2}
        assert dict(settings.sites["a"].rewards) == {"basket_add": 4, "click": 2}


def test_environment_site_values_are_site_configs_checked_like_records():
    """RECOLOOP_SITE_* values and reco.site-config records are one type, one check."""
    settings = Settings.from_env({"RECOLOOP_SITE_ARMS": "a=trending",
                                  "RECOLOOP_SITE_JOIN": "a=grace_s:2",
                                  "RECOLOOP_SITE_EXPLORATION": "a=epsilon:0.2"})
    assert settings.sites["a"] == SiteConfig("a", arms=("trending",), grace_s=2.0,
                                             exploration=("epsilon", 0.2))
    sites = SiteSettings(settings)
    assert sites.problem(SiteConfig("a", arms=("trending", "astrology"))) == (
        f"arms: unknown arms ['astrology']; known: {', '.join(KNOWN_ARMS)}")
    with pytest.raises(SettingsError, match="RECOLOOP_SITE_ARMS site 'a': arms: unknown arms"):
        Settings.from_env({"RECOLOOP_SITE_ARMS": "a=trending,astrology"})
    # A record laid over the site's environment config: its join keeps the grace of 2 s.
    assert sites.offer(SiteConfig("a", reward_window_s=30)) is None
    assert sites.join_for("a")[:2] == (30, 2.0)
    assert sites.arms_for("a") == ("trending",)


def test_site_join_overrides_are_parsed_and_validated():
    settings = Settings.from_env({
        "RECOLOOP_SITE_JOIN": "a=reward_window_s:30,grace_s:2,basket_add:5;b=click:0"})
    sites = SiteSettings(settings)
    assert sites.join_for("a") == (30.0, 2.0, {"basket_add": 5.0, "detail_view": 1.0,
                                                "click": 1.0})
    assert sites.join_for("b")[2]["click"] == 0.0
    assert sites.join_for("other") == (20.0, 5.0, settings.join.rewards)
    for bad in ("a=window:3", "a=grace_s:-1", "a=basket_add:0,click:0,detail_view:0",
                "a=reward_window_s:1800"):
        with pytest.raises(SettingsError, match="RECOLOOP_SITE_JOIN|RECOLOOP_SESSION_TIMEOUT_S"):
            Settings.from_env({"RECOLOOP_SITE_JOIN": bad})


def test_the_worker_id_is_stable_per_data_dir_unless_set(tmp_path):
    a, b = Settings.of(data_dir=tmp_path / "a"), Settings.of(data_dir=tmp_path / "b")
    assert a.instance_id == Settings.of(data_dir=tmp_path / "a").instance_id  # across restarts
    assert a.instance_id != b.instance_id  # two workers on one host need two data dirs
    named = Settings.from_env({"RECOLOOP_WORKER_ID": "eu-1", "RECOLOOP_DATA_DIR": str(tmp_path)})
    assert named.instance_id == "eu-1"


SCRAM = {"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
         "RECOLOOP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
         "RECOLOOP_KAFKA_SASL_USERNAME": "worker-1", "RECOLOOP_KAFKA_SASL_PASSWORD": "s3cr3t-pw"}


def test_kafka_security_variables_become_librdkafka_properties_of_every_client():
    settings = Settings.from_env({**SCRAM, "RECOLOOP_BOOTSTRAP_SERVERS": "kafka:9093",
                                  "RECOLOOP_KAFKA_LIB_DIR": "/opt/kafka/libs"})  # not a property
    assert settings.kafka_config() == {
        "bootstrap.servers": "kafka:9093", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "worker-1",
        "sasl.password": "s3cr3t-pw"}
    assert Settings().kafka_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_a_config_file_holds_the_base_and_variables_override_it(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed by recoloop")
    config = tmp_path / "client.properties"
    config.write_text(f"# secured\nsecurity.protocol = SSL\n\nssl.ca.location={ca}\n"
                      "ssl.key.password=key-pw\n")
    settings = Settings.from_env({"RECOLOOP_KAFKA_CONFIG_FILE": str(config),
                                  "RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                  "RECOLOOP_KAFKA_SASL_MECHANISM": "PLAIN",
                                  "RECOLOOP_KAFKA_SASL_USERNAME": "u",
                                  "RECOLOOP_KAFKA_SASL_PASSWORD": "p"})
    assert settings.kafka.security == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": str(ca),
        "ssl.key.password": "key-pw", "sasl.mechanism": "PLAIN", "sasl.username": "u",
        "sasl.password": "p"}


def test_secrets_never_show_in_repr_str_or_errors(tmp_path: Path):
    secrets = {"RECOLOOP_KAFKA_SASL_PASSWORD": "s3cr3t-pw",
               "RECOLOOP_KAFKA_SSL_KEY_PASSWORD": "key-pw-1",
               "RECOLOOP_KAFKA_SSL_KEY_PEM": "-----BEGIN PRIVATE KEY-----xyz"}
    settings = Settings.from_env({**SCRAM, **secrets})
    for shown in (repr(settings), str(settings), f"{settings}", repr(settings.kafka.security)):
        assert not any(secret in shown for secret in secrets.values()), shown
        assert "'sasl.username': 'worker-1'" in shown and "'sasl.password': '***'" in shown
    # Built directly, too.
    direct = Settings.of(kafka_security={"security.protocol": "SASL_SSL",
                                      "sasl.mechanism": "OAUTHBEARER",
                                      "sasl.oauthbearer.method": "oidc",
                                      "sasl.oauthbearer.client.secret": "oidc-secret"})
    assert "oidc-secret" not in repr(direct) and "'sasl.oauthbearer.method': 'oidc'" in repr(direct)
    # Errors name the variable, never the value of a secret.
    bad = [{**SCRAM, **secrets, "RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
           {**secrets, "RECOLOOP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
           {**SCRAM, "RECOLOOP_KAFKA_SASL_USERNAME": ""}]
    for env in bad:
        with pytest.raises(SettingsError, match="RECOLOOP_KAFKA_") as error:
            Settings.from_env(env)
        assert not any(secret in str(error.value) for secret in secrets.values()), error.value
    config = tmp_path / "client.properties"
    config.write_text("sasl.password s3cr3t-pw\n")  # no '=': the line is not echoed
    with pytest.raises(SettingsError, match="line 1") as error:
        Settings.from_env({"RECOLOOP_KAFKA_CONFIG_FILE": str(config)})
    assert "s3cr3t-pw" not in str(error.value)


@pytest.mark.parametrize("env, variable", [
    # Only security properties: exactly-once depends on the rest being recoloop's own.
    ({"RECOLOOP_KAFKA_TRANSACTIONAL_ID": "x"}, "RECOLOOP_KAFKA_TRANSACTIONAL_ID"),
    ({"RECOLOOP_KAFKA_ISOLATION_LEVEL": "read_uncommitted"}, "RECOLOOP_KAFKA_ISOLATION_LEVEL"),
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "TLS"}, "RECOLOOP_KAFKA_SECURITY_PROTOCOL"),
    # SASL or TLS properties the protocol would silently ignore.
    ({"RECOLOOP_KAFKA_SASL_USERNAME": "u"}, "RECOLOOP_KAFKA_SASL_USERNAME"),
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "RECOLOOP_KAFKA_SSL_CA_LOCATION": "probe", "RECOLOOP_KAFKA_SASL_MECHANISM": "PLAIN"},
     "RECOLOOP_KAFKA_SSL_CA_LOCATION"),
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "RECOLOOP_KAFKA_SASL_MECHANISM"),
    ({**SCRAM, "RECOLOOP_KAFKA_SASL_MECHANISM": "scram-sha-512"},
     "RECOLOOP_KAFKA_SASL_MECHANISM"),
    ({**SCRAM, "RECOLOOP_KAFKA_SASL_MECHANISMS": "PLAIN"}, "RECOLOOP_KAFKA_SASL_MECHANISM"),
    ({**SCRAM, "RECOLOOP_KAFKA_SASL_PASSWORD": ""}, "RECOLOOP_KAFKA_SASL_PASSWORD"),
    # OAUTHBEARER without OIDC or unsecured tokens would wait for a token forever.
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
      "RECOLOOP_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "RECOLOOP_KAFKA_SASL_OAUTHBEARER_METHOD"),
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SSL",
      "RECOLOOP_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION": "maybe"},
     "RECOLOOP_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION"),
    ({"RECOLOOP_KAFKA_SECURITY_PROTOCOL": "SSL",
      "RECOLOOP_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "RECOLOOP_KAFKA_SSL_CA_LOCATION"),
    ({"RECOLOOP_KAFKA_CONFIG_FILE": "/nonexistent/client.properties"},
     "RECOLOOP_KAFKA_CONFIG_FILE"),
])
def test_a_bad_kafka_security_setting_stops_start_up_naming_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_a_config_file_may_set_only_security_properties(tmp_path: Path):
    config = tmp_path / "client.properties"
    config.write_text("security.protocol=SSL\nenable.idempotence=false\n")
    with pytest.raises(SettingsError, match=r"RECOLOOP_KAFKA_CONFIG_FILE .*line 2.*"
                                            "enable.idempotence"):
        Settings.from_env({"RECOLOOP_KAFKA_CONFIG_FILE": str(config)})


def test_every_kafka_client_starts_from_the_settings_config():
    """No client builds its own connection config (it would miss the security properties):
    only settings.py names bootstrap.servers, and local_kafka, whose status check probes
    the local plaintext broker."""
    root = Path(__file__).resolve().parents[1]
    naming = sorted(str(path.relative_to(root)) for folder in ("app", "bench")
                    for path in (root / folder).rglob("*.py")
                    if '"bootstrap.servers"' in path.read_text())
    assert naming == ["app/dev/local_kafka.py", "app/settings/__init__.py"]


def test_exploration_rules_per_site_and_the_ones_the_bandit_implements():
    from app.core import policy
    from app.settings import EXPLORATION_RULES

    assert EXPLORATION_RULES == policy.EXPLORATION_RULES
    settings = Settings.from_env({"RECOLOOP_EXPLORATION_RULE": "squarecb",
                                  "RECOLOOP_SQUARECB_GAMMA": "3",
                                  "RECOLOOP_SITE_EXPLORATION": "a=epsilon:0.05;b=squarecb:8"})
    sites = SiteSettings(settings)
    assert sites.exploration_for("other") == ("squarecb", 0.1, 3.0)
    assert sites.exploration_for("a") == ("epsilon", 0.05, 3.0)
    assert sites.exploration_for("b") == ("squarecb", 0.1, 8.0)
    for bad in ("a=greedy:1", "a=epsilon:2", "a=squarecb:0", "a=squarecb"):
        with pytest.raises(SettingsError, match="RECOLOOP_SITE_EXPLORATION"):
            Settings.from_env({"RECOLOOP_SITE_EXPLORATION": bad})
    with pytest.raises(SettingsError, match="RECOLOOP_EXPLORATION_RULE"):
        Settings.from_env({"RECOLOOP_EXPLORATION_RULE": "ucb"})


def test_an_arm_named_twice_is_refused():
    for env in ({"RECOLOOP_ARMS": "trending,trending"},
                {"RECOLOOP_SITE_ARMS": "shop=trending,similar,trending"}):
        with pytest.raises(SettingsError, match="twice"):
            Settings.from_env(env)
