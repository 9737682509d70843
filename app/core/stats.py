"""A site's item statistics, and what each reaction teaches them.

Site statistics live under keys that start with the site id, so one site never reads
another's. Each reaction becomes an :class:`Engagement`, learned by :func:`learn_engagement`:
in the worker by the site's learner, into statistics every partition reads (the whole site's
traffic, :mod:`app.stream.site_stats`); in tools and unit tests, at once, into the store of
the partition that saw it (see :class:`app.core.engine.Engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from app.core.decay import DecayedScores
from app.core.events import Reaction
from app.core.keys import state_key
from app.core.knn import QUERY_ITEMS, Postings, vote
from app.core.session import ENGAGEMENT_WEIGHT, RECENT_ITEMS_KEPT, Session

HOUR_MS = 3_600_000
# name: (half-life, capacity)
STAT_SHAPES = {
    "sales": (7 * 24 * HOUR_MS, 300),  # basket adds: bestsellers
    "popular": (24 * HOUR_MS, 500),  # all engagement, long window: baseline and fallback
    "recent": (HOUR_MS // 6, 500),  # all engagement, short window: trending
    "category": (24 * HOUR_MS, 50),  # engagement within one category
    "cooc": (24 * HOUR_MS, 20),  # items engaged in the same sessions as one item
    "next": (24 * HOUR_MS, 30),  # items viewed right after one item (itself included)
}
# The newest items of a session whose postings are rewritten when it engages (fewer than a
# vote reads, app.core.knn.QUERY_ITEMS: older items keep an older picture of the session).
INDEXED_ITEMS = 5
VOTES_KEPT = 64  # a session's neighbours' leading items, kept for the next ask
# Reaction types whose order says "viewed next".
VIEW_TYPES = frozenset({"click", "detail_view"})

Getter = Callable[[str], Any]
Setter = Callable[[str, Any], None]


def stat_key(site_id: str, name: str, part: str = "") -> str:
    return state_key("stat", site_id, name, part)


def postings_key(site_id: str, item_id: str) -> str:
    return state_key("knn", site_id, item_id)


class SiteStats:
    """Read-through, write-back access to one site's statistics in a partition's state."""

    def __init__(self, site_id: str, get: Getter, put: Setter) -> None:
        self.site_id = site_id
        self._get = get
        self._put = put
        self._loaded: dict[str, Any] = {}
        self._dirty: set[str] = set()
        # The last vote: (query, how many items asked, the items).
        self._votes: tuple[tuple[object, ...], int, list[tuple[str, float]]] | None = None

    def postings(self, item_id: str) -> Postings | None:
        """The latest sessions that engaged ``item_id``, for session kNN."""
        key = postings_key(self.site_id, item_id)
        found = self._loaded.get(key)
        if found is None:
            found = self._get(key)
            if found is not None:
                self._loaded[key] = found
        return found

    def knn_votes(self, session_id: str, items: list[str], ts: int,
                  n: int) -> list[tuple[str, float]]:
        """:func:`app.core.knn.vote` of the session's neighbours, best ``n`` first. The last
        vote is kept until the postings change: a display's signals and the ranking it
        triggers ask for the same one."""
        query = (session_id, ts, *items[-QUERY_ITEMS:])
        last = self._votes
        if last is None or last[0] != query or last[1] < n:
            asked = max(n, VOTES_KEPT)
            last = self._votes = (query, asked, vote(self.postings, items, asked, session_id, ts))
        return last[2][:n]

    def observe_session(self, session_id: str, ts: int, items: list[str]) -> None:
        """The session's newest items find it as a neighbour now; its older items keep an
        older picture of it (a vote reads the newest picture it finds)."""
        self._votes = None
        for item in dict.fromkeys(items[-INDEXED_ITEMS:]):
            key = postings_key(self.site_id, item)
            postings = self.postings(item)
            if postings is None:
                postings = self._loaded[key] = Postings()
            postings.observe(session_id, ts, items)
            self._dirty.add(key)

    def scores(self, name: str, part: str = "") -> DecayedScores:
        key = stat_key(self.site_id, name, part)
        scores = self._loaded.get(key)
        if scores is None:
            scores = self._get(key)
            if scores is None:
                half_life, capacity = STAT_SHAPES[name]
                scores = DecayedScores(half_life, capacity)
            self._loaded[key] = scores
        return scores

    def add(self, name: str, part: str, item_id: str, weight: float, ts: int) -> None:
        self.scores(name, part).add(item_id, weight, ts)
        self._dirty.add(stat_key(self.site_id, name, part))

    def flush(self) -> None:
        for key in self._dirty:
            self._put(key, self._loaded[key])
        self._dirty.clear()


@dataclass(frozen=True)
class Engagement:
    """What one reaction teaches the site's statistics, as its session saw it: the session's
    previous item (co-engagement), its previous item of the same reaction type ("viewed
    next"), its region (regional bestsellers) and, for session kNN, its recent items. Small
    and plain, so it can travel to the site's learner on the decisions topic
    (:mod:`app.stream.site_stats`)."""

    site_id: str
    session_id: str
    item_id: str
    type: str
    ts: int
    category: str | None = None
    previous_item: str | None = None
    region: str | None = None
    session_items: tuple[str, ...] | None = None  # set when the site's arms use session kNN
    previous_same: str | None = None

    @classmethod
    def of(cls, session: Session, reaction: Reaction, sessions_index: bool) -> Engagement:
        """The engagement of ``reaction`` (call before ``session.engage``)."""
        item = reaction.item_id
        previous = session.recent_items[-1] if session.recent_items else None
        items = None
        if sessions_index and item != previous:  # as engage will have them
            kept = [i for i in session.recent_items if i != item][-(RECENT_ITEMS_KEPT - 1):]
            items = (*kept, item)
        region = session.context.get("region")
        return cls(reaction.site_id, reaction.session_id, item, reaction.type, reaction.ts,
                   reaction.category, previous, None if region is None else str(region), items,
                   session.last_of_type.get(reaction.type))

    def to_value(self) -> dict[str, Any]:
        return {"kind": "engagement", **asdict(self)}

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Engagement:
        """An engagement read back; KeyError or ValueError unless every field has its type."""
        items = value.get("session_items")
        if items is not None and not isinstance(items, list | tuple):
            raise ValueError("session_items must be a list")
        engagement = cls(value["site_id"], value["session_id"], value["item_id"],
                         value["type"], value["ts"], value.get("category"),
                         value.get("previous_item"), value.get("region"),
                         None if items is None else tuple(items), value.get("previous_same"))
        strings = (engagement.site_id, engagement.session_id, engagement.item_id,
                   engagement.type)
        optional = (engagement.category, engagement.previous_item, engagement.region,
                    engagement.previous_same)
        if not all(isinstance(v, str) for v in strings) \
                or not all(v is None or isinstance(v, str) for v in optional) \
                or type(engagement.ts) is not int \
                or not all(isinstance(i, str) for i in engagement.session_items or ()) \
                or len(engagement.session_items or ()) > RECENT_ITEMS_KEPT:
            raise ValueError("an engagement needs string ids, an integer ts and at most "
                             f"{RECENT_ITEMS_KEPT} session items")
        return engagement


def learn_engagement(stats: SiteStats, engagement: Engagement) -> None:
    """Teach the site's statistics one engagement."""
    e = engagement
    weight = ENGAGEMENT_WEIGHT.get(e.type, 1.0)
    stats.add("popular", "", e.item_id, weight, e.ts)
    stats.add("recent", "", e.item_id, weight, e.ts)
    if e.type == "basket_add":
        stats.add("sales", "", e.item_id, 1.0, e.ts)
        if e.region is not None:
            stats.add("sales", f"region={e.region}", e.item_id, 1.0, e.ts)
    if e.category:
        stats.add("category", e.category, e.item_id, weight, e.ts)
    # Co-occurrence both ways with the session's latest item: "sessions like this one".
    if e.previous_item is not None and e.previous_item != e.item_id:
        stats.add("cooc", e.item_id, e.previous_item, weight, e.ts)
        stats.add("cooc", e.previous_item, e.item_id, weight, e.ts)
    # "Viewed next", in the order of one reaction type (a page's click and its detail view
    # are one visit, not a return): a view of the same item again counts as following it.
    if e.type in VIEW_TYPES and e.previous_same is not None:
        stats.add("next", e.previous_same, e.item_id, 1.0, e.ts)
    if e.session_items is not None:
        stats.observe_session(e.session_id, e.ts, list(e.session_items))


def learn_into(get: Getter, put: Setter, engagement: Engagement) -> None:
    """Teach the statistics behind ``get`` and ``put`` one engagement, written back at once."""
    stats = SiteStats(engagement.site_id, get, put)
    learn_engagement(stats, engagement)
    stats.flush()


def record_reaction(stats: SiteStats, session: Session, reaction: Reaction,
                    sessions_index: bool = True) -> None:
    """Teach the site statistics one reaction at once (call before ``session.engage``); the
    session index only when ``sessions_index`` (the site's arms use session kNN)."""
    learn_engagement(stats, Engagement.of(session, reaction, sessions_index))
