"""Settings from RECOLOOP_* variables: parsing, defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import DEFAULT_ARMS, Settings, SettingsError


def test_defaults_without_any_variable():
    settings = Settings.from_env({})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert (settings.topic_prefix, settings.partitions) == ("", 8)
    assert (settings.reward_window_s, settings.grace_s) == (20.0, 5.0)
    assert settings.rewards == {"basket_add": 3.0, "detail_view": 1.0, "click": 1.0}
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
    assert (settings.partitions, settings.data_dir) == (4, Path("/tmp/x"))
    assert settings.reward_window_s == 2.5
    assert settings.arms == ("bestsellers", "trending")
    assert settings.rewards["click"] == 0.5 and settings.rewards["basket_add"] == 3.0
    assert settings.arms_for("a") == ("category1", "similar")
    assert settings.arms_for("unknown-site") == ("bestsellers", "trending")


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


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().partitions = 3  # type: ignore[misc]


def test_all_arms_by_default():
    assert Settings().arms == DEFAULT_ARMS


def test_site_join_overrides_are_parsed_and_validated():
    settings = Settings.from_env({
        "RECOLOOP_SITE_JOIN": "a=reward_window_s:30,grace_s:2,basket_add:5;b=click:0"})
    assert settings.join_for("a") == (30.0, 2.0, {"basket_add": 5.0, "detail_view": 1.0,
                                                   "click": 1.0})
    assert settings.join_for("b")[2]["click"] == 0.0
    assert settings.join_for("other") == (20.0, 5.0, dict(settings.rewards))
    for bad in ("a=window:3", "a=grace_s:-1", "a=basket_add:0,click:0,detail_view:0",
                "a=reward_window_s:1800"):
        with pytest.raises(SettingsError, match="RECOLOOP_SITE_JOIN|RECOLOOP_SESSION_TIMEOUT_S"):
            Settings.from_env({"RECOLOOP_SITE_JOIN": bad})


def test_the_worker_id_is_stable_per_data_dir_unless_set(tmp_path):
    a, b = Settings(data_dir=tmp_path / "a"), Settings(data_dir=tmp_path / "b")
    assert a.instance_id == Settings(data_dir=tmp_path / "a").instance_id  # across restarts
    assert a.instance_id != b.instance_id  # two workers on one host need two data dirs
    named = Settings.from_env({"RECOLOOP_WORKER_ID": "eu-1", "RECOLOOP_DATA_DIR": str(tmp_path)})
    assert named.instance_id == "eu-1"
