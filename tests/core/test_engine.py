"""The engine's core, driven directly: event time only, no clock, no Kafka."""

from __future__ import annotations

import pytest

from app.contract.codec import EncodedStore
from app.core.catalog import StoreCatalog, apply_record
from app.core.engine import Effects, Engine, session_key
from app.core.events import Reaction, Served, Tick
from app.core.policy import ContextualBandit
from app.core.sites import SiteConfig
from app.core.store import MemoryStore
from app.settings import Settings

T0 = 1_700_000_000_000


class FixedPolicies:
    def __init__(self, settings: Settings) -> None:
        self.policy = ContextualBandit(settings.bandit.arms, settings.bandit.exploration, seed=1)

    def current(self, site_id: str) -> tuple[ContextualBandit, int]:
        return self.policy, self.policy.n_updates


@pytest.fixture
def settings() -> Settings:
    return Settings.of(reward_window_s=20, grace_s=5, idle_close_s=5)


@pytest.fixture
def catalog_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def engine(settings: Settings, catalog_store: MemoryStore) -> Engine:
    return Engine(settings, FixedPolicies(settings), StoreCatalog(catalog_store))


def served(event_id: str, ts: int, items=("i1", "i2"), session="s1", site="shop",
           ranking_id=None) -> Served:
    return Served(event_id, site, session, ts, tuple(items), ranking_id=ranking_id,
                  arm="trending", propensity=0.5, context={"region": "eu"})


def reaction(event_id: str, kind: str, ts: int, item="i1", session="s1", site="shop",
             served_id=None) -> Reaction:
    return Reaction(event_id, kind, site, session, ts, item, served_id=served_id,
                    category="shoes")


KINDS = ("served", "click", "detail_view", "basket_add")


def read_all_kinds_up_to(engine: Engine, store: EncodedStore, ts: int) -> Effects:
    """One event of every input kind at ``ts`` from an unrelated session: the watermark
    (the smallest of the kinds' latest times) reaches ``ts``, and sessions due before the
    second it is in are settled. Returns what that settled, for other sessions."""
    effects = Effects()
    events = [served(f"clock-d{ts}", ts, items=("z",), session="clock")]
    events += [reaction(f"clock-{kind}{ts}", kind, ts, item="none", session="clock")
               for kind in KINDS[1:]]
    for event in events:
        more = engine.handle(store, event)
        effects.rewards += [r for r in more.rewards if r.session_id != "clock"]
        effects.unattributed += [r for r in more.unattributed if r.session_id != "clock"]
        effects.late += more.late
    return effects


def everything_read_up_to(engine: Engine, store: EncodedStore, ts: int) -> list:
    return read_all_kinds_up_to(engine, store, ts).rewards


def test_basket_add_two_seconds_after_display_closes_at_once_with_reward_3(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    # Not decided while a topic may still hold an earlier display for this session.
    assert engine.handle(store, reaction("r1", "basket_add", T0 + 2_000)).rewards == []
    [decision] = everything_read_up_to(engine, store, T0 + 3_000)
    assert (decision.served_id, decision.reward, decision.closed_by) == ("d1", 3.0, "max_reward")
    assert [(o.type, o.delay_ms) for o in decision.outcomes] == [("basket_add", 2_000)]


def test_detail_view_gives_reward_1_when_stream_time_passes_window_and_grace(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    engine.handle(store, reaction("r1", "detail_view", T0 + 3_000))
    assert everything_read_up_to(engine, store, T0 + 25_000) == []  # not past window + grace
    [decision] = everything_read_up_to(engine, store, T0 + 26_001)
    assert (decision.served_id, decision.reward, decision.closed_by) == ("d1", 1.0, "window")


def test_no_reaction_gives_reward_0_on_an_idle_partition_through_ticks(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    wall = T0  # the display happened now
    for second in range(25):  # quiet: the first 5 ticks count it in, then the wall clock runs
        assert engine.handle(store, Tick(wall + second * 1_000)).rewards == [], second
    closed = []
    for second in range(25, 40):
        closed += engine.handle(store, Tick(wall + second * 1_000)).rewards
    [decision] = closed
    assert (decision.reward, decision.closed_by) == (0.0, "idle")


def test_a_topic_that_went_quiet_does_not_hold_the_others_back(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    engine.handle(store, reaction("r1", "basket_add", T0 + 2_000))
    wall = T0
    closed = []
    for second in range(7):  # displays stop; basket adds do not (its time is ahead)
        closed += engine.handle(store, Tick(wall + second * 1_000)).rewards
        engine.handle(store, reaction(f"more{second}", "basket_add", T0 + 3_000 + second,
                                      session="other", item="q"))
    [decision] = closed
    assert (decision.served_id, decision.reward, decision.closed_by) == ("d1", 3.0, "max_reward")


def catch_up(engine, store, quiet_ticks_first: int) -> list:
    """Every kind seen, ``quiet_ticks_first`` ticks without traffic (a previous owner may
    have counted them), then a backlog read as a worker gets it: 40 s of displays and other
    reactions before the click on d1, the worker saying before each batch that clicks are
    still unread. Every reward closed along the way."""
    for kind in KINDS:  # every kind has been seen: each takes part in the watermark
        engine.handle(store, reaction("seen-" + kind, kind, T0, session="other")
                      if kind != "served" else served("seen", T0, session="other"))
    closed = []
    for second in range(quiet_ticks_first):
        closed += engine.handle(store, Tick(T0 + second * 1_000)).rewards
    unread = frozenset({"click"})
    engine.note_unread(store, unread)
    closed += engine.handle(store, served("d1", T0 + 1_000)).rewards
    for second in range(40):  # displays run 40 s ahead; clicks are behind them, unread
        engine.note_unread(store, unread)
        later = T0 + 1_000 + second * 1_000
        closed += engine.handle(store, served(f"later{second}", later,
                                              session=f"later{second}")).rewards
        for kind in ("detail_view", "basket_add"):  # every other kind keeps moving
            closed += engine.handle(store, reaction(f"{kind}{second}", kind, later,
                                                    session="other", item="q")).rewards
        closed += engine.handle(store, Tick(T0 + (quiet_ticks_first + second) * 1_000)).rewards
    assert "d1" not in [d.served_id for d in closed]
    closed += engine.handle(store, reaction("c1", "click", T0 + 3_000)).rewards
    return closed + everything_read_up_to(engine, store, T0 + 60_000)


@pytest.mark.parametrize("quiet_ticks_first", [0, 8])
def test_a_topic_with_records_still_unread_is_not_quiet(engine, quiet_ticks_first):
    """A worker reading a backlog gets one topic's fetch after another's: the clicks wait
    behind thousands of displays for longer than idle_close_s, but they are on the broker,
    so the displays must not close before they are read; also when the partition was quiet
    before (its clock restored by a new owner counts every kind as quiet)."""
    closed = catch_up(engine, EncodedStore(), quiet_ticks_first)
    [d1] = [d for d in closed if d.served_id == "d1"]
    assert d1.reward == 1.0


def test_a_repeated_event_id_is_applied_once(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    assert engine.handle(store, reaction("r1", "click", T0 + 1_000)).duplicate is False
    assert engine.handle(store, reaction("r1", "click", T0 + 1_000)).duplicate is True
    [decision] = everything_read_up_to(engine, store, T0 + 30_000)
    assert len(decision.outcomes) == 1


def test_reaction_read_before_its_display_is_attributed_once_the_display_is_read(engine):
    store = EncodedStore()
    engine.handle(store, reaction("r1", "basket_add", T0 + 1_000, served_id="d1"))
    engine.handle(store, served("d1", T0))
    [decision] = everything_read_up_to(engine, store, T0 + 2_000)
    assert (decision.served_id, decision.reward) == ("d1", 3.0)


def test_reaction_after_its_display_closed_is_late_and_not_applied(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    [closed] = everything_read_up_to(engine, store, T0 + 26_000)
    assert closed.reward == 0.0
    effects = engine.handle(store, reaction("r1", "basket_add", T0 + 10_000))
    assert [r.event_id for r in effects.late] == ["r1"] and effects.rewards == []


def test_a_reaction_without_a_display_is_unattributed_after_the_grace_period(engine):
    store = EncodedStore()
    engine.handle(store, reaction("r1", "click", T0, item="nowhere"))
    # A display produced late may still come within the grace period...
    assert read_all_kinds_up_to(engine, store, T0 + 4_000).unattributed == []
    # ...after it, the reaction is counted as unattributed.
    settled = read_all_kinds_up_to(engine, store, T0 + 7_000).unattributed
    assert [r.event_id for r in settled] == ["r1"]


def test_the_latest_display_showing_the_item_wins(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0, items=("a",)))
    assert engine.handle(store, served("d2", T0 + 1_000, items=("a",))).pending_displays == 2
    engine.handle(store, reaction("r1", "basket_add", T0 + 2_000, item="a"))
    [decision] = everything_read_up_to(engine, store, T0 + 3_000)
    assert decision.served_id == "d2"


def test_every_event_publishes_a_ranking_and_served_ranking_ids_are_authoritative(engine):
    store = EncodedStore()
    ranking, default = engine.handle(store, reaction("r0", "click", T0, item="a")).rankings
    assert ranking.ranking_id == "rk-r0" and ranking.session_id == "s1"
    # A site's first event also gets it a site-wide default ranking, without a tick.
    assert (default.session_id, default.segment, default.site_id) == ("*", "", "shop")
    assert engine.handle(store, reaction("r00", "click", T0, item="a")).rankings[0].segment \
        is None
    assert 0 < ranking.propensity <= 1
    engine.handle(store, served("d1", T0 + 1, items=("a",), ranking_id=ranking.ranking_id))
    engine.handle(store, reaction("r1", "basket_add", T0 + 5, item="a"))
    [decision] = everything_read_up_to(engine, store, T0 + 1_005)
    assert (decision.arm, decision.propensity) == (ranking.arm, ranking.propensity)


def test_sites_do_not_share_sessions(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0, site="a"))
    engine.handle(store, reaction("r1", "basket_add", T0 + 1, site="b"))
    assert everything_read_up_to(engine, store, T0 + 1) == []
    assert store.get(session_key("a", "s1")) is not None
    assert store.get(session_key("b", "s1")) is not None


def test_inactive_sessions_expire(engine, settings):
    store = EncodedStore()
    engine.handle(store, reaction("r1", "click", T0))
    read_all_kinds_up_to(engine, store, T0 + 1_000)
    assert store.get(session_key("shop", "s1")) is not None
    later = T0 + int(settings.join.session_timeout_s * 1000) + 120_000
    read_all_kinds_up_to(engine, store, later)
    assert store.get(session_key("shop", "s1")) is None


def test_reactions_without_a_category_take_it_from_the_catalog(engine, catalog_store):
    apply_record(catalog_store, "shop", "x", {"category": "hats", "available": True, "ts": 1})
    store = EncodedStore()
    engine.handle(store, Reaction("r1", "click", "shop", "s1", T0, "x"))
    assert store.get(session_key("shop", "s1")).top_categories(1) == ["hats"]


def test_default_rankings_per_segment_come_from_the_sites_home_partition(engine, settings):
    from app.core.default_rankings import home_partition

    home = home_partition("shop", 4)
    store = EncodedStore()
    engine.handle(store, Tick(1_000, home, 4))
    # The site's first event: its site-wide default at once.
    first = engine.handle(store, reaction("r1", "click", T0)).rankings  # no context
    assert [r.segment for r in first] == [None, ""]
    engine.handle(store, Reaction("r2", "click", "shop", "s2", T0, "a",
                                  context={"region": "eu", "device": "mobile"}))
    defaults = [first[1], *engine.handle(store, Tick(2_000, home, 4)).rankings]
    assert sorted(r.segment for r in defaults) == ["", "device=mobile|region=eu"]
    for ranking in defaults:
        assert ranking.session_id == "*" and ranking.key == f"shop|*|{ranking.segment}"
        assert 0 < ranking.propensity <= 1
    eu = next(r for r in defaults if r.segment)
    assert eu.context == {"region": "eu", "device": "mobile"}
    # Not again until the interval passes or the model changes.
    assert engine.handle(store, Tick(3_000, home, 4)).rankings == []
    interval_ms = int(settings.ranking.default_ranking_interval_s * 1000)
    assert len(engine.handle(store, Tick(2_000 + interval_ms, home, 4)).rankings) == 2

    elsewhere = EncodedStore()
    engine.handle(elsewhere, Tick(1_000, (home + 1) % 4, 4))
    engine.handle(elsewhere, reaction("r1", "click", T0))
    assert engine.handle(elsewhere, Tick(2_000, (home + 1) % 4, 4)).rankings == []


def test_a_site_can_override_the_window_and_the_rewards():
    settings = Settings.of(site_join={"quick": SiteConfig("quick", reward_window_s=2,
                                                          grace_s=1, rewards={"basket_add": 5})})
    engine = Engine(settings, FixedPolicies(settings), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    engine.handle(store, served("q1", T0, site="quick", session="a"))
    engine.handle(store, served("s1", T0, site="shop", session="b"))
    engine.handle(store, reaction("qr", "basket_add", T0 + 1_500, site="quick", session="a",
                                  item="i1"))
    engine.handle(store, reaction("late-for-quick", "click", T0 + 2_500, site="quick",
                                  session="a", item="i2"))
    closed = everything_read_up_to(engine, store, T0 + 5_000)
    assert [(d.served_id, d.reward, d.closed_by) for d in closed] == [
        ("q1", 5.0, "max_reward")]  # the site's own reward table and a 2 s window
    # The default site still has its 20 s window and 5 s grace.
    assert everything_read_up_to(engine, store, T0 + 25_000) == []
    [default] = everything_read_up_to(engine, store, T0 + 26_001)
    assert default.served_id == "s1"


def test_idle_sites_get_no_more_default_rankings_and_leave_the_clock():
    from app.core.default_rankings import home_partition
    from app.core.stream_time import CLOCK_KEY

    settings = Settings.of(site_idle_s=60)
    engine = Engine(settings, FixedPolicies(settings), StoreCatalog(MemoryStore()))
    store = EncodedStore()
    sites = [f"one-visit-{n}" for n in range(40)]
    home = {site: home_partition(site, 1) for site in sites}
    assert set(home.values()) == {0}
    engine.handle(store, Tick(1_000, 0, 1))
    firsts = [engine.handle(store, reaction(f"r{n}", "click", T0, site=site, session=f"s{n}"))
              for n, site in enumerate(sites)]
    assert sum(len(effects.rankings) - 1 for effects in firsts) == len(sites)  # at once
    assert len(engine.handle(store, Tick(11_000, 0, 1)).rankings) == len(sites)  # interval
    engine.handle(store, reaction("busy", "click", T0 + 30_000, site="busy", session="b"))
    # Stream time passes the idle limit (the wall clock, once the partition is quiet).
    engine.handle(store, reaction("late-busy", "click", T0 + 61_000, site="busy", session="b"))
    published = engine.handle(store, Tick(100_000, 0, 1)).rankings
    assert {r.site_id for r in published} == {"busy"}
    assert set(store.get(CLOCK_KEY).sites) == {"busy"}
    assert [key for key in store.data if "one-visit" in key and key.startswith(
        "defaults:")] == []  # their defaults are gone (statistics stay, on disk)


def test_a_session_keeps_its_newest_context_keys_and_a_bounded_basket():
    from app.core.session import BASKET_KEPT, CONTEXT_KEYS_KEPT, Session

    session = Session("shop", "s")
    for n in range(100):
        session.touch(T0 + n, {f"k{n}": "v"})
    assert list(session.context) == [f"k{n}" for n in range(100 - CONTEXT_KEYS_KEPT, 100)]
    for n in range(300):
        session.engage(Reaction(f"b{n}", "basket_add", "shop", "s", T0 + n, f"i{n}"))
    assert len(session.basket) == BASKET_KEPT and f"i{299}" in session.basket


def test_a_display_lists_bounded_outcomes_but_keeps_its_best_reward(engine):
    from app.core.join import OUTCOMES_KEPT

    store = EncodedStore()
    engine.handle(store, served("d1", T0))
    for n in range(200):
        engine.handle(store, reaction(f"c{n}", "click", T0 + 10 + n))
    engine.handle(store, reaction("buy", "basket_add", T0 + 5_000))
    [closed] = everything_read_up_to(engine, store, T0 + 6_000)
    assert closed.reward == 3.0 and closed.closed_by == "max_reward"
    assert len(closed.outcomes) == OUTCOMES_KEPT + 1 and closed.outcomes[-1].type == "basket_add"


def test_organic_reactions_feed_the_session_but_are_never_attributed(engine):
    store = EncodedStore()
    engine.handle(store, served("d1", T0, items=("a", "b")))
    organic = Reaction("o1", "detail_view", "shop", "s1", T0 + 100, "a", category="hats",
                       organic=True)
    effects = engine.handle(store, organic)
    assert effects.attributed == 0
    assert store.get(session_key("shop", "s1")).top_categories(1) == ["hats"]
    [closed] = everything_read_up_to(engine, store, T0 + 26_000)
    assert (closed.served_id, closed.reward, closed.outcomes) == ("d1", 0.0, ())


def test_every_ranking_names_its_trigger_and_a_burst_keeps_the_shown_one(engine):
    store = EncodedStore()
    shown = engine.handle(store, reaction("r0", "click", T0, item="a")).rankings[0]
    assert shown.trigger_event_id == "r0" and shown.ranking_id == "rk-r0"
    for n in range(40):  # a burst of browsing within the window publishes 40 more
        engine.handle(store, reaction(f"b{n}", "click", T0 + 10 + n, item="x"))
    engine.handle(store, served("d1", T0 + 100, items=("a",), ranking_id="rk-r0"))
    engine.handle(store, reaction("buy", "basket_add", T0 + 200, item="a"))
    [decision] = everything_read_up_to(engine, store, T0 + 1_200)
    assert (decision.arm, decision.propensity) == (shown.arm, shown.propensity)


def test_events_stamped_ahead_of_the_wall_clock_do_not_carry_stream_time_ahead(engine):
    """A backlog stamped up to 49 s ahead, a quiet minute, then live traffic: the live
    displays still get their reactions (stream time waited for the wall clock)."""
    store = EncodedStore()
    wall = T0
    engine.handle(store, served("early", T0 + 49_000, session="a"))
    for kind in KINDS[1:]:
        engine.handle(store, reaction(f"early-{kind}", kind, T0 + 49_000, session="a",
                                      item="none"))
    for second in range(70):  # quiet: stream time follows the wall clock, not beyond it
        engine.handle(store, Tick(wall + second * 1_000))
    live = T0 + 70_000
    engine.handle(store, served("d1", live, session="b"))
    engine.handle(store, reaction("r1", "detail_view", live + 3_000, session="b"))
    closed = everything_read_up_to(engine, store, live + 26_001)
    assert [(d.served_id, d.reward) for d in closed if d.served_id == "d1"] == [("d1", 1.0)]


def test_a_bot_session_keeps_bounded_join_state_and_every_display_one_reward(engine):
    from app.core.join import PENDING_KEPT, WAITING_KEPT

    store = EncodedStore()
    closed, unattributed = [], 0
    for n in range(PENDING_KEPT + 50):  # every display open at once
        closed += engine.handle(store, served(f"d{n}", T0 + n, items=("a",))).rewards
    for n in range(WAITING_KEPT + 40):  # reactions ahead of the watermark: they wait
        unattributed += len(engine.handle(store, reaction(f"r{n}", "click", T0 + 1_000 + n,
                                                          item="b")).unattributed)
    session = store.get(session_key("shop", "s1"))
    assert len(session.join.pending) == PENDING_KEPT and len(session.join.waiting) == WAITING_KEPT
    assert [d.closed_by for d in closed] == ["evicted"] * 50
    assert [d.served_id for d in closed] == [f"d{n}" for n in range(50)]  # the oldest
    assert unattributed == 40
    closed += everything_read_up_to(engine, store, T0 + 60_000)
    assert sorted(d.served_id for d in closed) == sorted(f"d{n}" for n in range(PENDING_KEPT + 50))
