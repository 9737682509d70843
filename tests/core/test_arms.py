"""The simple arms a shop would build itself, the site's rule on viewed items, the fill-ins,
and the bandit choosing only among arms with items of their own."""

from __future__ import annotations

import pytest

from app.contract.codec import EncodedStore
from app.contract.site_config import decode_site_config
from app.core.arms import ARMS, KNOWN_ARMS
from app.core.candidates import arm_items
from app.core.catalog import StoreCatalog
from app.core.engine import Engine
from app.core.events import Reaction
from app.core.policy import ContextualBandit
from app.core.rules import Rules
from app.core.session import Session
from app.core.stats import SiteStats
from app.core.store import MemoryStore
from app.settings import Settings
from tests.core.test_candidates import T0, items_of, react

CATALOG = StoreCatalog(MemoryStore())


@pytest.fixture
def store() -> EncodedStore:
    return EncodedStore()


def stats_of(store: EncodedStore) -> SiteStats:
    """The site's statistics as stored (each engagement below is written back at once)."""
    return FlushingStats("shop", store.get, store.set)


class FlushingStats(SiteStats):
    def add(self, name: str, part: str, item_id: str, weight: float, ts: int) -> None:
        super().add(name, part, item_id, weight, ts)
        self.flush()


def test_recent_shows_the_sessions_items_newest_first(store):
    session = Session("shop", "s")
    for n, item in enumerate(["a", "b", "c", "b"]):
        react(stats_of(store), session, "detail_view", item, "x", T0 + n)
    assert items_of(arm_items("recent", session, stats_of(store), CATALOG, T0 + 9, 3)) == \
        ["b", "c", "a"]


def test_coview_counts_what_was_viewed_next_and_an_item_after_itself_on_a_return(store):
    # Visitors go a -> b, and return to a after looking elsewhere: a click and its detail
    # view of one page are one visit, never counted as a's return to itself.
    for n in range(5):
        visitor = Session("shop", f"v{n}")
        for step, item in enumerate(["a", "b", "a", "a"]):
            for kind in ("click", "detail_view"):
                react(stats_of(store), visitor, kind, item, "x", T0 + 100 * n + 10 * step)
    once = Session("shop", "once")
    for kind in ("click", "detail_view"):
        react(stats_of(store), once, kind, "c", "x", T0 + 1_000)
    session = Session("shop", "me")
    react(stats_of(store), session, "detail_view", "a", "x", T0 + 2_000)
    ranked = arm_items("coview", session, stats_of(store), CATALOG, T0 + 2_001, 2)
    assert set(items_of(ranked)) == {"a", "b"}  # a -> b five times, a -> a (a return) five
    assert ranked[0][1] == pytest.approx(ranked[1][1])
    assert stats_of(store).scores("next", "c").raw == {}  # one visit: no self-transition


def test_popular_is_the_most_engaged_items(store):
    for n, item in enumerate(["a", "b", "b", "c", "b", "c"]):
        react(stats_of(store), Session("shop", f"s{n}"), "click", item, "x", T0 + n)
    assert items_of(arm_items("popular", Session("shop", "new"), stats_of(store), CATALOG,
                              T0 + 10, 2)) == ["b", "c"]


@pytest.mark.parametrize("rule, hidden", [("none", set()), ("page", {"c"}),
                                          ("session", {"a", "b", "c"})])
def test_hiding_viewed_items_is_the_sites_rule(store, rule, hidden):
    session = Session("shop", "s")
    for n, item in enumerate(["a", "b", "c"]):
        react(stats_of(store), session, "detail_view", item, "x", T0 + n)
    shown = items_of(arm_items("recent", session, stats_of(store), CATALOG, T0 + 9, 3,
                               rules=Rules(exclude_viewed=rule)))
    assert set(shown) == {"a", "b", "c"} - hidden
    config = decode_site_config(b"shop", b'{"site_id": "shop", "rules": {"exclude_viewed": "%s"}}'
                                % rule.encode())
    assert config.rules.exclude_viewed == rule


def test_fill_ins_leave_out_the_page_item_unless_nothing_else_is_known(store):
    for n, item in enumerate(["page", "page", "other"]):
        react(stats_of(store), Session("shop", f"s{n}"), "click", item, "x", T0 + n)
    session = Session("shop", "me")
    react(stats_of(store), session, "click", "page", "x", T0 + 10)
    placed: dict[str, str] = {}
    shown = items_of(arm_items("category2", session, stats_of(store), CATALOG, T0 + 11, 2,
                               placed_by=placed))
    assert shown == ["other", "page"] and placed == {"other": "popular", "page": "session"}
    # A brand-new site knows only the item on the page: the first ranking still has it.
    fresh = Session("new-site", "first")
    fresh.engage(Reaction("e", "click", "new-site", "first", T0, "only"))
    empty = EncodedStore()
    new_site = FlushingStats("new-site", empty.get, empty.set)
    assert items_of(arm_items("category1", fresh, new_site, CATALOG, T0, 3)) == ["only"]


def test_the_bandit_chooses_only_among_arms_with_items_of_their_own(store):
    settings = Settings.of(arms=("category1", "bestsellers", "recent", "popular"))
    bandit = ContextualBandit(settings.bandit.arms, seed=1, rule="squarecb")

    class Policies:
        def current(self, key):
            return bandit, 0

    engine = Engine(settings, Policies(), CATALOG)
    ranking = engine.handle(store, Reaction("e1", "click", "shop", "s", T0, "shoe")).rankings[0]
    # The click names no category and nobody has added to a basket yet: category1 and
    # bestsellers would show fill-ins only, so they get no probability.
    assert set(ranking.explain["arms"]) == set(settings.bandit.arms)
    chosen = {a for a, v in ranking.explain["arms"].items() if v["probability"] > 0}
    assert chosen == {"recent", "popular"}
    assert ranking.propensity == pytest.approx(ranking.explain["arms"][ranking.arm]["probability"])
    assert sum(v["probability"] for v in ranking.explain["arms"].values()) == pytest.approx(1.0)


def test_every_registered_arm_has_a_summary_and_the_settings_know_it():
    assert set(KNOWN_ARMS) == set(ARMS)
    assert all(arm.summary for arm in ARMS.values())
    Settings.of(arms=KNOWN_ARMS[:8])  # every arm is a valid setting
    with pytest.raises(ValueError, match="RECOLOOP_ARMS"):
        Settings.of(arms=("recent", "no_such_arm"))
