"""Every topic's real name comes from one place: a deployment's prefix in front of the
contract's names, the app id in front of the worker's own."""

from __future__ import annotations

from app.contract.topics import CATALOG, CLICKS, JOIN_INPUT_TOPICS, RANKINGS, SERVED, Topics
from app.settings import Settings


def test_a_deployment_names_every_topic_under_its_prefix() -> None:
    settings = Settings.of(topic_prefix="staging.")
    topics = Topics.of(settings)
    assert topics.rankings == settings.topic(RANKINGS) == "staging.reco.rankings"
    assert topics.join_inputs == tuple(settings.topic(t) for t in JOIN_INPUT_TOPICS)
    assert settings.app_id == "staging.recoloop"
    assert (topics.decisions, topics.changelog, topics.models, topics.site_stats,
            topics.api_keys) == ("staging.recoloop-decisions",
                                 "staging.recoloop-engine-state-changelog",
                                 "staging.recoloop-bandit-models",
                                 "staging.recoloop-site-statistics", "staging.recoloop-api-keys")
    assert topics.logical[topics.catalog] == CATALOG
    assert topics.input_kinds == {settings.topic(SERVED): "served",
                                  settings.topic(CLICKS): "click",
                                  "staging.reco.detail-views": "detail_view",
                                  "staging.reco.basket-adds": "basket_add"}


def test_no_prefix_keeps_the_contract_names() -> None:
    topics = Topics.of(Settings())
    assert (topics.rewards, topics.models) == ("reco.rewards", "recoloop-bandit-models")
