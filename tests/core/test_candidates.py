"""Candidate arms and the catalog, driven directly with event time."""

from __future__ import annotations

import pytest

from app.contract.codec import EncodedStore
from app.core.arms import KNOWN_ARMS
from app.core.candidates import arm_items
from app.core.catalog import StoreCatalog, apply_record
from app.core.events import Reaction
from app.core.session import Session
from app.core.stats import SiteStats, record_reaction
from app.core.store import MemoryStore

T0 = 1_700_000_000_000
ARMS = KNOWN_ARMS


def react(stats: SiteStats, session: Session, kind: str, item: str, category: str,
          ts: int) -> None:
    reaction = Reaction(f"{session.session_id}-{item}-{ts}", kind, session.site_id,
                        session.session_id, ts, item, category=category)
    record_reaction(stats, session, reaction)
    session.engage(reaction)
    session.touch(ts, {})


@pytest.fixture
def store() -> EncodedStore:
    return EncodedStore()


@pytest.fixture
def site(store: EncodedStore) -> SiteStats:
    """A site where other sessions engaged with shoes, hats and bags."""
    stats = SiteStats("shop", store.get, store.set)
    for n in range(30):
        other = Session("shop", f"other{n}")
        for i, (item, category) in enumerate([("shoe1", "shoes"), ("shoe2", "shoes"),
                                              ("hat1", "hats"), ("bag1", "bags"),
                                              (f"shoe{3 + n % 3}", "shoes")]):
            react(stats, other, "detail_view", item, category, T0 + n * 1_000 + i)
        react(stats, other, "basket_add", "bag1", "bags", T0 + n * 1_000 + 9)
    stats.flush()
    return SiteStats("shop", store.get, store.set)


def items_of(ranked: list[tuple[str, float]]) -> list[str]:
    return [item for item, _ in ranked]


def test_category1_shows_the_most_engaged_category_and_category2_the_next(site, store):
    session = Session("shop", "s1")
    react(site, session, "detail_view", "shoe1", "shoes", T0 + 100_000)
    react(site, session, "click", "shoe2", "shoes", T0 + 100_001)
    react(site, session, "click", "hat1", "hats", T0 + 100_002)
    catalog = StoreCatalog(MemoryStore())
    first = items_of(arm_items("category1", session, site, catalog, T0 + 100_003, 3))
    assert {"shoe1", "shoe2", "shoe3", "shoe4", "shoe5"} >= set(first) and len(first) == 3
    assert items_of(arm_items("category2", session, site, catalog, T0 + 100_003, 1)) == ["hat1"]


def test_every_arm_returns_a_full_list_even_for_a_new_session(site):
    catalog = StoreCatalog(MemoryStore())
    for arm in ARMS:
        ranked = arm_items(arm, Session("shop", "new"), site, catalog, T0 + 100_000, 5)
        assert len(ranked) == 5, arm


def test_a_brand_new_site_falls_back_to_available_catalog_items(store):
    catalog_store = MemoryStore()
    for n in range(4):
        apply_record(catalog_store, "fresh", f"i{n}",
                     {"category": "c", "available": n != 2, "ts": 1})
    stats = SiteStats("fresh", store.get, store.set)
    for arm in ARMS:
        ranked = arm_items(arm, Session("fresh", "s"), stats, StoreCatalog(catalog_store),
                           T0, 10)
        assert items_of(ranked) == ["i0", "i1", "i3"], arm


def test_basket_items_and_unavailable_items_are_never_recommended(site):
    catalog_store = MemoryStore()
    apply_record(catalog_store, "shop", "shoe2", {"category": "shoes", "available": False,
                                                  "ts": 1})
    session = Session("shop", "s1")
    react(site, session, "basket_add", "shoe1", "shoes", T0 + 100_000)
    for arm in ARMS:
        shown = items_of(arm_items(arm, session, site, StoreCatalog(catalog_store),
                                   T0 + 100_001, 8))
        assert "shoe1" not in shown and "shoe2" not in shown, arm
        assert len(shown) == len(set(shown)), arm


def test_bestsellers_prefer_the_sessions_region(store):
    stats = SiteStats("shop", store.get, store.set)
    for n in range(5):
        buyer = Session("shop", f"eu{n}", context={"region": "eu"})
        react(stats, buyer, "basket_add", "eu-item", "x", T0 + n)
    for n in range(9):
        buyer = Session("shop", f"us{n}", context={"region": "us"})
        react(stats, buyer, "basket_add", "us-item", "x", T0 + n)
    catalog = StoreCatalog(MemoryStore())
    eu = Session("shop", "s", context={"region": "eu"})
    assert items_of(arm_items("bestsellers", eu, stats, catalog, T0 + 10, 2)) == [
        "eu-item", "us-item"]
    anywhere = Session("shop", "t")
    assert items_of(arm_items("bestsellers", anywhere, stats, catalog, T0 + 10, 2)) == [
        "us-item", "eu-item"]


def test_similar_votes_for_items_co_engaged_with_the_sessions_recent_items(site):
    session = Session("shop", "s1")
    react(site, session, "detail_view", "hat1", "hats", T0 + 100_000)
    shown = items_of(arm_items("similar", session, site, StoreCatalog(MemoryStore()),
                               T0 + 100_001, 2))
    assert shown[0] in {"shoe2", "bag1"}  # hat1's neighbours in other sessions


def test_trending_ranks_rising_items_above_steady_ones(store):
    stats = SiteStats("shop", store.get, store.set)
    hour = 3_600_000
    for n in range(48):  # a steady seller over two days
        react(stats, Session("shop", f"a{n}"), "detail_view", "steady", "x", T0 + n * hour)
    for n in range(6):  # a burst in the last minutes
        react(stats, Session("shop", f"b{n}"), "detail_view", "rising", "x",
              T0 + 48 * hour + n * 10_000)
    ranked = arm_items("trending", Session("shop", "s"), stats, StoreCatalog(MemoryStore()),
                       T0 + 48 * hour + 60_000, 2)
    assert items_of(ranked)[0] == "rising"


def test_newer_catalog_records_win_and_tombstones_remove_items():
    store = MemoryStore()
    catalog = StoreCatalog(store)
    assert apply_record(store, "shop", "a", {"category": "c", "available": False, "ts": 5})
    assert not apply_record(store, "shop", "a", {"category": "c", "available": True, "ts": 4})
    assert catalog.item("shop", "a").available is False
    assert catalog.site_items("shop") == []
    apply_record(store, "shop", "a", {"category": "c", "available": True, "ts": 6})
    assert catalog.site_items("shop") == ["a"]
    apply_record(store, "shop", "a", None)
    assert catalog.item("shop", "a") is None and catalog.site_items("shop") == []
    assert catalog.item("other-site", "a") is None


def test_decayed_scores_leaders_match_a_full_sort_through_evictions_and_rebases():
    import random

    from app.core.decay import DecayedScores

    rng = random.Random(3)
    scores = DecayedScores(half_life_ms=1_000, capacity=40)
    for n in range(5_000):
        ts = n * 50  # 250 s: several rebases of a 1 s half-life
        scores.add(f"k{rng.randrange(120)}", rng.random(), ts)
        if n % 97 == 0:
            expected = sorted(scores.raw.items(), key=lambda kv: kv[1], reverse=True)[:10]
            assert [k for k, _ in scores.top(10, ts)] == [k for k, _ in expected]


def test_decayed_scores_read_far_from_their_reference_without_overflow():
    from app.core.decay import DecayedScores

    scores = DecayedScores(half_life_ms=1_000, capacity=10)
    scores.add("a", 1.0, ts=10**13)  # a timestamp far in the future
    assert scores.value("a", ts=0) > 0 and scores.top(1, ts=0)[0][0] == "a"
    assert scores.value("a", ts=10**15) >= 0.0


def test_decayed_scores_with_a_small_capacity_never_lead_with_an_evicted_key():
    from app.core.decay import DecayedScores

    scores = DecayedScores(half_life_ms=10**9, capacity=4)
    for n in range(50):
        scores.add(f"k{n}", float(n % 7), ts=n)
        assert all(key in scores.raw for key, _ in scores.top(10, ts=n)), n


def test_session_knn_recommends_what_similar_sessions_engaged(site):
    # Earlier sessions: shoes go with socks and laces; hats go with scarves.
    for n in range(6):
        react(site, Session("shop", f"feet{n}"), "click", "shoe", "x", T0 + n)
    for n in range(6):
        feet, head = Session("shop", f"f{n}"), Session("shop", f"h{n}")
        for item in ("shoe", "sock", "lace"):
            react(site, feet, "click", item, "x", T0 + 100 + n)
        for item in ("hat", "scarf"):
            react(site, head, "click", item, "x", T0 + 100 + n)
    session = Session("shop", "now")
    react(site, session, "click", "shoe", "x", T0 + 1_000)
    shown = items_of(arm_items("session_knn", session, site, StoreCatalog(MemoryStore()),
                               T0 + 1_000, 2))
    # The neighbours' items besides the page's own: never the other sessions' hats and
    # scarves; next to the shared item in the neighbours' order weighs more.
    assert shown == ["sock", "lace"]
    react(site, session, "click", "sock", "x", T0 + 1_001)
    shown = items_of(arm_items("session_knn", session, site, StoreCatalog(MemoryStore()),
                               T0 + 1_001, 2))
    assert shown == ["shoe", "lace"]  # an earlier item of the session may come back


def test_session_knn_prefers_newer_neighbours_and_items_near_the_shared_one():
    from app.core.knn import Postings, vote

    postings: dict[str, Postings] = {}

    def observe(session: str, ts: int, items: list[str]) -> None:
        for item in items:
            postings.setdefault(item, Postings()).observe(session, ts, items)

    day = 24 * 3_600_000
    observe("old", 0, ["a", "x"])
    observe("new", 2 * day, ["a", "y"])
    observe("far", 2 * day, ["a", "b", "c", "z"])
    ranked = [item for item, _ in vote(postings.get, ["a"], 6, ts=2 * day)]
    assert ranked.index("y") < ranked.index("x")  # same overlap, newer neighbour
    assert ranked.index("b") < ranked.index("z")  # same neighbour, nearer the shared item
    assert "old" not in ranked and vote(postings.get, [], 5) == []


def test_the_session_index_stays_bounded_per_item_by_count_and_bytes():
    from app.core.knn import PER_ITEM, Postings

    postings = Postings()
    for n in range(5_000):
        postings.observe(f"s{n % 700}", n, [f"i{n % 3_000}", "common"])
    assert len(postings.sessions) == PER_ITEM
    assert [n[0] for n in postings.sessions][-1] == "s" + str(4_999 % 700)
    assert len({n[0] for n in postings.sessions}) == PER_ITEM  # one entry a session
def test_the_session_index_counts_its_bytes_and_stays_under_a_record_whatever_the_ids():
    import random

    from app.contract.codec import MAX_RECORD_BYTES, encode_state
    from app.core.knn import MAX_POSTING_BYTES, Postings

    rng, postings = random.Random(3), Postings()
    for n in range(300):  # ids of the longest allowed, in 4-byte characters
        session = f"{n}" + "\U0001f600" * 250
        items = [f"{rng.randrange(5_000)}" + "\U0001f6d2" * 250 for _ in range(10)]
        postings.observe(session, n, items)
    recount = sum(len(n[0].encode()) + sum(len(i.encode()) for i in n[2])
                  for n in postings.sessions)
    assert postings.id_bytes == recount <= MAX_POSTING_BYTES
    assert len(encode_state(postings)) < MAX_RECORD_BYTES // 2

def test_a_kept_session_knn_vote_is_cast_again_once_the_postings_change():
    """A display's signals and its ranking share one vote; a session engaging in between
    changes the neighbours, and the next ask sees it."""
    store = MemoryStore()
    stats = SiteStats("shop", store.get, store.set)
    stats.observe_session("a", 1, ["shoe", "sock"])
    first = stats.knn_votes("me", ["shoe"], 2, 5)
    assert [item for item, _ in first] == ["shoe", "sock"]
    assert stats.knn_votes("me", ["shoe"], 2, 1) == first[:1]  # the kept vote, shorter
    stats.observe_session("b", 2, ["shoe", "lace"])
    assert "lace" in [item for item, _ in stats.knn_votes("me", ["shoe"], 2, 5)]
