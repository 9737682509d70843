"""Session kNN with weighted voting: the sessions most like this one vote for their items.

After the session-based kNN of Ludewig and Jannach (2018; seed 004's V-SkNN): a session is
the set of items it engaged, the most recent weighing most; the neighbours are the recent
sessions of the site sharing items with it, by cosine similarity; each neighbour votes for
its other items with its similarity. It is incremental (one session's items change per
event) and bounded: a site keeps its last ``max_sessions`` sessions, and each item points
to its last ``per_item`` sessions (the candidate neighbours), so scoring visits at most
``len(items) * per_item`` sessions.

One index per site, kept like the site's other statistics (:mod:`app.core.candidates`): it
is learned once per engagement, and rebuilt from the topic it is published on.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

MAX_SESSIONS = 300
PER_ITEM = 12
MAX_ITEMS = 2_000
NEIGHBOURS = 20
# The index's ids, in UTF-8 bytes, at most: the oldest sessions go first past it, so its
# state record stays well under Kafka's limit whatever the ids' lengths.
MAX_ID_BYTES = 192 * 1024


@dataclass
class SessionIndex:
    """The recent sessions of a site, by the items they engaged.

    Examples
    --------
    >>> index = SessionIndex()
    >>> index.observe("a", ["shoe", "sock"])
    >>> index.observe("b", ["shoe", "lace"])
    >>> index.observe("c", ["hat"])
    >>> [item for item, _ in index.vote(["shoe"], size=5)]  # b and a, equally like "shoe"
    ['lace', 'sock']
    """

    sessions: dict[str, list[str]] = field(default_factory=dict)  # oldest first
    postings: dict[str, list[str]] = field(default_factory=dict)  # item -> latest sessions
    id_bytes: int = 0  # the ids' UTF-8 bytes in sessions and postings, kept as they change

    def observe(self, session_id: str, items: list[str]) -> None:
        """Session ``session_id`` has now engaged ``items`` (its recent ones, oldest first)."""
        self._forget_session(session_id)
        self.sessions[session_id] = list(items)
        self.id_bytes += _size(session_id) + sum(map(_size, items))
        for item in items:
            posting = self.postings.pop(item, None)
            if posting is None:
                posting = []
                self.id_bytes += _size(item)
            if session_id in posting:
                posting.remove(session_id)
            else:
                self.id_bytes += _size(session_id)
            posting.append(session_id)
            for dropped in posting[:-PER_ITEM]:
                self.id_bytes -= _size(dropped)
            self.postings[item] = posting[-PER_ITEM:]
        while len(self.sessions) > MAX_SESSIONS or self.id_bytes > MAX_ID_BYTES:
            self._forget_session(next(iter(self.sessions)))
        while len(self.postings) > MAX_ITEMS:
            self._forget_item(next(iter(self.postings)))

    def _forget_session(self, session_id: str) -> None:
        items = self.sessions.pop(session_id, None)
        if items is None:
            return
        self.id_bytes -= _size(session_id) + sum(map(_size, items))
        for item in items:
            posting = self.postings.get(item)
            if posting is not None and session_id in posting:
                posting.remove(session_id)
                self.id_bytes -= _size(session_id)
                if not posting:
                    self._forget_item(item)

    def _forget_item(self, item: str) -> None:
        posting = self.postings.pop(item)
        self.id_bytes -= _size(item) + sum(map(_size, posting))

    def vote(self, items: list[str], size: int, session_id: str | None = None
             ) -> list[tuple[str, float]]:
        """The ``size`` items the neighbours of a session with ``items`` vote for most,
        excluding ``items`` themselves; newer items of the session weigh more."""
        weights = {item: 1.0 / (1 + age) for age, item in enumerate(reversed(items))}
        if not weights:
            return []
        norm = math.sqrt(len(weights))
        overlap: dict[str, float] = {}
        for item, weight in weights.items():
            for other in self.postings.get(item, ()):
                if other != session_id and other in self.sessions:
                    overlap[other] = overlap.get(other, 0.0) + weight
        similarity = {other: shared / (norm * math.sqrt(len(self.sessions[other])))
                      for other, shared in overlap.items()}
        votes: dict[str, float] = {}
        for other, sim in heapq.nlargest(NEIGHBOURS, similarity.items(), key=_second):
            for item in self.sessions[other]:
                if item not in weights:
                    votes[item] = votes.get(item, 0.0) + sim
        return heapq.nlargest(size, sorted(votes.items()), key=_second)


def _second(pair: tuple[str, float]) -> float:
    return pair[1]


def _size(text: str) -> int:
    return len(text.encode())
