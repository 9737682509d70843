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
from operator import itemgetter

PER_ITEM = 50
# The ids a posting holds, in UTF-8 bytes, at most: its oldest sessions go first past it.
MAX_POSTING_BYTES = 192 * 1024
QUERY_ITEMS = 10  # the session's newest items whose postings are read
SNAPSHOT_ITEMS = 10  # the newest items of a neighbour kept
NEIGHBOURS = 100
NEIGHBOUR_HALF_LIFE_MS = 24 * 3_600_000
POSITION_DECAY = 0.9  # per step away from the shared item, in the neighbour's order
# A neighbour's item weights, by the position of the item it shares (its items past the
# row's end, from a posting written with more of them, do not vote).
_ROWS = tuple(tuple(POSITION_DECAY ** abs(position - anchor) for position in range(64))
              for anchor in range(64))


# (session id, ts, its items oldest first): a tuple of strings and numbers, which the
# garbage collector stops tracking, so a site's many postings cost no collection time.
Neighbour = tuple[str, int, tuple[str, ...]]


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
            if known[0] == session_id:
                self.id_bytes -= _entry_bytes(known)
                del self.sessions[n]
                break
        entry = (session_id, ts, tuple(items[-SNAPSHOT_ITEMS:]))
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
            other = neighbour[0]
            if other != session_id:
                known = latest.get(other)
                if known is None or known[1] < neighbour[1]:
                    latest[other] = neighbour
    norm = math.sqrt(len(weights))
    keys = weights.keys()
    scored: list[tuple[float, int, tuple[str, ...]]] = []
    for neighbour in latest.values():
        items = neighbour[2]
        common = keys & items  # set operations run in C: most neighbours share one item
        if not common:
            continue
        shared = sum(map(weights.__getitem__, common))
        anchor = items.index(max(common, key=weights.__getitem__))
        recency = 2.0 ** (min(0, neighbour[1] - ts) / NEIGHBOUR_HALF_LIFE_MS)
        scored.append((recency * shared / (norm * math.sqrt(len(items))), anchor, items))
    votes: dict[str, float] = {}
    get = votes.get
    for similarity, anchor, neighbour_items in heapq.nlargest(NEIGHBOURS, scored, key=_first):
        for item, decay in zip(neighbour_items, _ROWS[min(63, anchor)], strict=False):
            votes[item] = get(item, 0.0) + similarity * decay
    # nlargest is stable: equal votes keep the order they were first cast in.
    return heapq.nlargest(size, votes.items(), key=_first_value)


_first = itemgetter(0)
_first_value = itemgetter(1)


def _entry_bytes(entry: Neighbour) -> int:
    return len(entry[0].encode()) + sum(len(item.encode()) for item in entry[2])
