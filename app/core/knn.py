"""Session kNN: the sessions most like this one vote for their items.

After the session-based kNN variants of Ludewig and Jannach (2018, V-SKNN) and Garg et al.
(2019, STAN): a session is the list of items it engaged; the newer an item of the current
session, the more it weighs in the similarity; newer neighbour sessions weigh more; and a
neighbour votes for each of its items with its similarity times a weight that falls with
the item's distance (in the neighbour's own order) from the item the two sessions share
last. The session's own items can be voted for too: visitors return to items, and whether a
site shows them again is its business rule (:mod:`app.core.rules`), not the arm's.

Storage is per item: :class:`Postings` holds the latest sessions that engaged the item, each
with its items as they were last seen. Scoring reads the postings of the session's newest
items only, and learning a session rewrites the postings of its items. Every record is
bounded by construction (:data:`PER_ITEM` sessions and :data:`MAX_POSTING_BYTES` of ids),
so a site's index grows with its items, not its sessions: a busy shop's hundreds of
thousands of sessions a day leave each item its latest neighbours.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PER_ITEM = 48
# The ids a posting holds, in UTF-8 bytes, at most: its oldest sessions go first past it.
MAX_POSTING_BYTES = 192 * 1024
QUERY_ITEMS = 5  # the session's newest items whose postings are read
NEIGHBOURS = 100
NEIGHBOUR_HALF_LIFE_MS = 24 * 3_600_000
POSITION_DECAY = 0.5  # per step away from the shared item, in the neighbour's order


@dataclass
class Neighbour:
    session_id: str
    ts: int
    items: list[str]  # oldest first


@dataclass
class Postings:
    """The latest sessions that engaged one item, oldest first.

    Examples
    --------
    >>> postings = {}
    >>> def observe(session, ts, items):
    ...     for item in items:
    ...         postings.setdefault(item, Postings()).observe(session, ts, items)
    >>> observe("a", 1, ["shoe", "sock"])
    >>> observe("b", 2, ["shoe", "lace"])
    >>> observe("c", 3, ["hat"])
    >>> [item for item, _ in vote(postings.get, ["shoe"], 5, ts=3)]  # b is newer than a
    ['shoe', 'lace', 'sock']
    """

    sessions: list[Neighbour] = field(default_factory=list)
    id_bytes: int = 0

    def observe(self, session_id: str, ts: int, items: Sequence[str]) -> None:
        """Session ``session_id`` has engaged ``items`` (oldest first) by ``ts``."""
        for n, known in enumerate(self.sessions):
            if known.session_id == session_id:
                self.id_bytes -= _entry_bytes(known)
                del self.sessions[n]
                break
        entry = Neighbour(session_id, ts, list(items))
        self.sessions.append(entry)
        self.id_bytes += _entry_bytes(entry)
        while len(self.sessions) > PER_ITEM or \
                (self.id_bytes > MAX_POSTING_BYTES and len(self.sessions) > 1):
            self.id_bytes -= _entry_bytes(self.sessions.pop(0))


def vote(postings: Callable[[str], Postings | None], items: Sequence[str], size: int,
         session_id: str | None = None, ts: int = 0) -> list[tuple[str, float]]:
    """The ``size`` items the neighbours of a session with ``items`` (oldest first) vote for
    most; ``postings(item)`` reads an item's postings, ``ts`` is now."""
    query = list(items)[-QUERY_ITEMS:]
    weights = {item: 1.0 / (1 + age) for age, item in enumerate(reversed(query))}
    if not weights:
        return []
    latest: dict[str, Neighbour] = {}
    for item in weights:
        found = postings(item)
        for neighbour in found.sessions if found is not None else ():
            if neighbour.session_id != session_id:
                known = latest.get(neighbour.session_id)
                if known is None or known.ts < neighbour.ts:
                    latest[neighbour.session_id] = neighbour
    norm = math.sqrt(len(weights))
    scored: list[tuple[float, int, Neighbour]] = []
    for neighbour in latest.values():
        shared, anchor, best = 0.0, 0, 0.0
        for position, item in enumerate(neighbour.items):
            weight = weights.get(item)
            if weight is not None:
                shared += weight
                if weight >= best:
                    best, anchor = weight, position
        if shared:
            recency = 2.0 ** (min(0, neighbour.ts - ts) / NEIGHBOUR_HALF_LIFE_MS)
            similarity = recency * shared / (norm * math.sqrt(len(neighbour.items)))
            scored.append((similarity, anchor, neighbour))
    votes: dict[str, float] = {}
    for similarity, anchor, neighbour in heapq.nlargest(NEIGHBOURS, scored, key=_first):
        for position, item in enumerate(neighbour.items):
            weight = similarity * POSITION_DECAY ** abs(position - anchor)
            votes[item] = votes.get(item, 0.0) + weight
    return heapq.nlargest(size, sorted(votes.items()), key=_second)


def _first(entry: tuple[float, int, Neighbour]) -> float:
    return entry[0]


def _second(pair: tuple[str, float]) -> float:
    return pair[1]


def _entry_bytes(entry: Neighbour) -> int:
    return len(entry.session_id.encode()) + sum(len(item.encode()) for item in entry.items)
