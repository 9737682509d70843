"""Session kNN with weighted voting: the sessions most like this one vote for their items.

After the session-based kNN of Ludewig and Jannach (2018; seed 004's V-SkNN): a session is
the set of items it engaged, the most recent weighing most; the neighbours are the recent
sessions of the site sharing items with it, by cosine similarity; each neighbour votes for
its other items with its similarity. It is incremental (one session's items change per
event) and bounded: a site keeps its last ``max_sessions`` sessions, and each item points
to its last ``per_item`` sessions (the candidate neighbours), so scoring visits at most
``len(items) * per_item`` sessions.

One index per site and partition, in the partition's state like the other statistics
(sessions are spread over partitions by key, so each sees a sample of the site's traffic):
it is then kept exactly once by the changelog, and rebuilt with it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

MAX_SESSIONS = 300
PER_ITEM = 12
MAX_ITEMS = 2_000
NEIGHBOURS = 20


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

    def observe(self, session_id: str, items: list[str]) -> None:
        """Session ``session_id`` has now engaged ``items`` (its recent ones, oldest first)."""
        self.sessions.pop(session_id, None)
        self.sessions[session_id] = list(items)
        while len(self.sessions) > MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        for item in items:
            posting = self.postings.pop(item, [])
            if session_id in posting:
                posting.remove(session_id)
            posting.append(session_id)
            self.postings[item] = posting[-PER_ITEM:]
        while len(self.postings) > MAX_ITEMS:
            del self.postings[next(iter(self.postings))]

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
