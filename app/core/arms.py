"""The arms: every candidate generator the bandit chooses from, in one registry.

An arm is a name, the items it ranks for a session (best first, with scores) and whether it
has items of its own for that session at all. Adding an arm is one entry in :data:`ARMS`:
the settings, the site-config check (the topic schema's arm pattern is tested against it),
the bandit, the candidate generator and the ``learned`` arm's candidate pool all read this
table; :data:`DEFAULT_ARMS` names the arms a site has without settings of its own.

The simple arms are the strategies a shop would build itself: re-show what the visitor
viewed (``recent``), what others viewed next (``coview``), the site's most engaged items
(``popular``), sessions like this one (``session_knn``). Whether a site hides items the
visitor has viewed is its business rule (``exclude_viewed``, :mod:`app.core.rules`), not an
arm's assumption. ``learned`` (:mod:`app.core.candidates`) ranks the union of the others'
leading items with an item model learned from what visitors clicked.

>>> sorted(ARMS) == sorted(KNOWN_ARMS)
True
>>> [arm for arm in KNOWN_ARMS if ARMS[arm].session_index]
['session_knn', 'learned']
>>> [arm for arm in KNOWN_ARMS if ARMS[arm].item_model]
['learned']
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from app.core.session import Session
from app.core.stats import SiteStats

TRENDING_SMOOTHING = 1.0  # one click on a brand-new item does not top the list
TRENDING_POOL = 64
SIMILAR_NEIGHBOURS = 5

Items = Callable[[Session, SiteStats, int, int], list[tuple[str, float]]]
Has = Callable[[Session, SiteStats], bool]


@dataclass(frozen=True)
class Arm:
    name: str
    summary: str
    items: Items  # (session, stats, ts, n) -> the arm's own items, best first
    has_items: Has  # whether the arm has items of its own for this session
    session_index: bool = False  # needs the site's session index (session kNN)
    # Ranks the other arms' leading items with the site's item model (app.core.candidates'
    # ItemSignals) instead of listing items of its own; never a control's fixed baseline.
    item_model: bool = False


def category(rank: int) -> Items:
    def items(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
        categories = session.top_categories(rank + 1)
        if len(categories) <= rank:
            return []
        return stats.scores("category", categories[rank]).top(n, ts)
    return items


def bestsellers(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    region = session.context.get("region")
    regional = stats.scores("sales", f"region={region}").top(n, ts) if region else []
    return regional + stats.scores("sales").top(n, ts)


def trending(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    """Lift of the short window over the item's own long-window baseline, among the items
    with the most recent engagement (an item cannot trend without any)."""
    recent, popular = stats.scores("recent"), stats.scores("popular")
    lift = {item: value / (popular.value(item, ts) + TRENDING_SMOOTHING)
            for item, value in recent.top(TRENDING_POOL, ts)}
    return heapq.nlargest(n, lift.items(), key=lambda kv: kv[1])


def similar_votes(session: Session, stats: SiteStats, ts: int) -> dict[str, float]:
    """Weighted voting: each recent item's co-engaged items vote, newer items with more
    weight; the session's recent items themselves are not voted for (other items "like"
    them: showing them again is ``recent``'s and ``coview``'s)."""
    votes: dict[str, float] = {}
    recent = session.recent_items[-SIMILAR_NEIGHBOURS:]
    for age, item in enumerate(reversed(recent)):
        for neighbour, weight in stats.scores("cooc", item).top(20, ts):
            if neighbour not in recent:
                votes[neighbour] = votes.get(neighbour, 0.0) + weight / (1 + age)
    return votes


def similar(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    return heapq.nlargest(n, similar_votes(session, stats, ts).items(), key=lambda kv: kv[1])


def recent(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    return [(item, 1.0 / (1 + age))
            for age, item in enumerate(reversed(session.recent_items[-n:]))]


def coview(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    if not session.recent_items:
        return []
    return stats.scores("next", session.recent_items[-1]).top(n, ts)


def popular(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    return stats.scores("popular").top(n, ts)


def session_knn(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    """What sessions like this one engaged besides the page's own item: the arm answers
    "what else"; showing the page's item again is ``recent``'s and ``coview``'s choice. The
    session's earlier items may come back (visitors return to them)."""
    page = session.recent_items[-1:]
    votes = stats.knn_votes(session.session_id, session.recent_items, ts, n + 1)
    return [(item, score) for item, score in votes if item not in page][:n]


def _stat(name: str) -> Has:
    return lambda session, stats: bool(stats.scores(name).raw)


def _viewed(session: Session, stats: SiteStats) -> bool:
    return bool(session.recent_items)


def _page_has(name: str) -> Has:
    """Whether the statistic ``name`` knows the page's item (one record, which the arm and
    the learned arm's signals read anyway)."""
    def has(session: Session, stats: SiteStats) -> bool:
        return bool(session.recent_items) and bool(
            stats.scores(name, session.recent_items[-1]).raw)
    return has


def _page_indexed(session: Session, stats: SiteStats) -> bool:
    return bool(session.recent_items) and stats.postings(session.recent_items[-1]) is not None


def _no_items(session: Session, stats: SiteStats, ts: int, n: int) -> list[tuple[str, float]]:
    raise AssertionError("the learned arm ranks through app.core.candidates.ItemSignals")


_ARMS = (
    Arm("similar", "weighted voting: items co-engaged in other sessions with the session's "
        "recent items, newer items weighing more", similar,
        _page_has("cooc")),
    Arm("category1", "the best items of the session's most engaged category (engagement "
        "weighted by type, 10-minute half-life)", category(0),
        lambda session, stats: len(session.categories.raw) >= 1),
    Arm("category2", "the same for its second-most engaged category", category(1),
        lambda session, stats: len(session.categories.raw) >= 2),
    Arm("bestsellers", "most basket adds, decayed over a week; the session's region first "
        "when its context has one", bestsellers, _stat("sales")),
    Arm("trending", "items whose last-10-minutes engagement rises most against their own "
        "one-day baseline", trending, _stat("recent")),
    Arm("recent", "the session's recently engaged items, newest first", recent, _viewed),
    Arm("coview", "the items most often viewed right after the session's last item, by "
        "every visitor (the item itself when visitors return to it)", coview,
        _page_has("next")),
    Arm("popular", "the site's most engaged items, decayed over a day", popular,
        _stat("popular")),
    Arm("session_knn", "session kNN (V-SKNN/STAN): the 100 recent sessions most like this "
        "one vote for their items, by similarity and closeness to the item they share",
        session_knn, _page_indexed, session_index=True),
    Arm("learned", "the site's item model ranks the other arms' leading items by the "
        "signals the counters use, learned online from each closed display", _no_items,
        lambda session, stats: True, session_index=True, item_model=True),
)
ARMS: dict[str, Arm] = {arm.name: arm for arm in _ARMS}
KNOWN_ARMS: tuple[str, ...] = tuple(ARMS)
# The arms of a site without settings of its own, in the bandit's order (docs/learning.md
# says how they were chosen); RECOLOOP_ARMS and site configs may choose any of ARMS.
DEFAULT_ARMS: tuple[str, ...] = ("session_knn", "recent", "coview", "learned")
ITEM_MODEL_ARMS = frozenset(arm.name for arm in _ARMS if arm.item_model)


def uses_item_model(arms: tuple[str, ...]) -> bool:
    """Whether one of ``arms`` ranks with the item model (it needs the session's signals)."""
    return not ITEM_MODEL_ARMS.isdisjoint(arms)
