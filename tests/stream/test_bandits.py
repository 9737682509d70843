"""Each site's bandit: the newest committed version wins, and an aborted update vanishes."""

from __future__ import annotations

import pickle

from app.settings import Settings
from app.stream.bandits import BanditModels, encode, version_of

SETTINGS = Settings(arms=("category1", "trending"))


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
    assert version_of(dict(learn(models, "shop", 1))["shop"]) == 4


def test_the_newest_version_from_the_models_topic_wins():
    writer, reader = BanditModels(SETTINGS), BanditModels(SETTINGS)
    old = dict(learn(writer, "shop", 2))["shop"]
    new = dict(learn(writer, "shop", 3))["shop"]
    reader.offer("shop", new)
    reader.offer("shop", old)  # a compacted topic read again, or an older copy: ignored
    policy, version = reader.current("shop")
    assert version == 5 and policy.n_updates == 5


def test_models_round_trip_through_pickle_and_follow_reconfigured_arms():
    models = BanditModels(SETTINGS)
    raw = dict(learn(models, "shop", 2))["shop"]
    assert pickle.loads(raw.partition(b"\n")[2]).n_updates == 2
    wider = BanditModels(Settings(arms=("category1", "trending", "similar")))
    wider.offer("shop", raw)
    policy, version = wider.current("shop")
    assert policy.arms == ("category1", "trending", "similar") and version == 2
    assert encode(policy).startswith(b"2\n")
