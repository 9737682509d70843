"""Each site's bandit: the newest committed version wins, an aborted update vanishes, and
only the plain encoding is ever read from the models topic."""

from __future__ import annotations

import pickle

import pytest

from app.contract.codec import decode_model, encode_model, model_version
from app.core.sites import SiteConfig, SiteSettings
from app.settings import Settings
from app.stream.bandits import BanditModels
from tests.stream.test_state import Exploit

SETTINGS = Settings.of(arms=("category1", "trending"))


def learn(models: BanditModels, site: str, times: int) -> list[tuple[str, bytes]]:
    for _ in range(times):
        models.learning(site).update("trending", {"season": "winter"}, 1.0)
    changes = models.changes()
    models.committed(changes)
    return changes


def test_committed_updates_count_and_aborted_ones_vanish():
    models = BanditModels(SETTINGS)
    learn(models, "shop", 3)
    models.learning("shop").update("trending", {}, 1.0)
    assert models.current("shop")[1] == 4  # rankings in the open transaction see it
    models.aborted()
    assert models.current("shop")[1] == 3
    assert model_version(dict(learn(models, "shop", 1))["shop"]) == 4


def test_the_newest_version_from_the_models_topic_wins():
    writer, reader = BanditModels(SETTINGS), BanditModels(SETTINGS)
    old = dict(learn(writer, "shop", 2))["shop"]
    new = dict(learn(writer, "shop", 3))["shop"]
    reader.offer("shop", new)
    reader.offer("shop", old)  # a compacted topic read again, or an older copy: ignored
    policy, version = reader.current("shop")
    assert version == 5 and policy.n_updates == 5


def test_models_round_trip_through_the_plain_encoding_and_follow_reconfigured_arms():
    models = BanditModels(SETTINGS)
    raw = dict(learn(models, "shop", 2))["shop"]
    assert decode_model(raw).n_updates == 2
    wider = BanditModels(Settings.of(arms=("category1", "trending", "similar")))
    wider.offer("shop", raw)
    policy, version = wider.current("shop")
    assert policy.arms == ("category1", "trending", "similar") and version == 2
    assert encode_model(policy).startswith(b"2\n")


def test_a_crafted_pickle_on_the_models_topic_is_skipped_counted_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    skipped = []
    models = BanditModels(SETTINGS, on_undecodable=lambda: skipped.append(1))
    crafted = pickle.dumps(Exploit(str(marker)))
    for raw in (b"9\n" + crafted, crafted, b"9\n\x01not msgpack", b""):
        models.offer("shop", raw)
    assert len(skipped) == 4 and not marker.exists()
    assert models.current("shop")[1] == 0  # still the fresh bandit


def test_idle_sites_leave_memory_and_come_back_from_disk(tmp_path):
    from app.stream.bandits import SpilledModels

    now = [0.0]
    models = BanditModels(Settings.of(arms=("category1", "trending"), site_idle_s=60),
                          spill=SpilledModels(tmp_path / "models"), clock=lambda: now[0])
    for n in range(100):
        learn(models, f"site-{n}", 2)
    assert models.in_memory() == 100
    now[0] = 30.0
    learn(models, "site-0", 1)
    now[0] = 61.0
    assert models.retire_idle() == 99 and models.in_memory() == 1
    assert models.current("site-7")[1] == 2  # back from disk, as learned
    assert models.in_memory() == 2
    models.offer("site-8", dict(learn(BanditModels(SETTINGS), "site-8", 5))["site-8"])
    assert models.current("site-8")[1] == 5  # a newer version read while it was retired
    models.spill.close()


def test_a_model_record_claiming_more_than_a_model_may_hold_is_skipped():
    from app.contract.codec import MAX_MODEL_FEATURES, UndecodableRecord
    from app.core.policy import ContextualBandit

    policy = ContextualBandit(("category1", "trending"), max_features=MAX_MODEL_FEATURES * 4)
    for n in range(MAX_MODEL_FEATURES * 2):
        policy.update("trending", {"visitor": f"v{n}"}, 1.0)
    with pytest.raises(UndecodableRecord):
        decode_model(encode_model(policy))  # it would be re-published past the bound


def test_a_site_config_read_before_its_model_keeps_what_the_model_learned_of_its_arms():
    """A worker reads the sites' configs before the models: a model whose site's config
    adds arms to the defaults must come back with those arms' learning (fitted to the
    defaults first, with_arms would have blanked them)."""
    configured = SiteSettings(SETTINGS)
    configured.offer(SiteConfig("shop", arms=("category1", "trending", "similar")))
    writer = BanditModels(SETTINGS, sites=configured)
    for _ in range(50):
        writer.learning("shop").update("similar", {}, 1.0)
    raw = dict(writer.changes())["shop"]
    writer.committed([("shop", raw)])

    sites = SiteSettings(SETTINGS)
    reader = BanditModels(SETTINGS, sites=sites)
    sites.offer(SiteConfig("shop", arms=("category1", "trending", "similar")))  # config first
    reader.offer("shop", raw)
    assert reader.current("shop")[0].estimates({})["similar"] > 0.5
    # and a config change between transactions re-reads the committed model under it
    sites.offer(SiteConfig("shop", arms=("similar", "learned")))
    reader.reconfigured("shop")
    policy = reader.current("shop")[0]
    assert policy.arms == ("similar", "learned") and policy.estimates({})["similar"] > 0.5
