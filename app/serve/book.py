"""The rank service's memory of ``reco.rankings``: each session's latest ranking, and each
site's default rankings per context segment, bounded by count; and of ``reco.catalog``, a
few available items per site.

Fed by one thread (:mod:`app.serve.feeds`), read by the request handlers. A session's entry
keeps the ranking's JSON bytes as published (a few hundred bytes) and the ids of the last
events that triggered its rankings, so "the ranking event E triggered, or a newer one" is a
set lookup. Past ``max_sessions`` the least recently updated session is forgotten: its next
request gets its segment's default ranking (flagged as such) until its next event.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

# Trigger ids remembered per session: a site asking for event E's ranking finds it even
# when a few newer events of the session came first.
TRIGGERS_KEPT = 16


# An entry: the latest ranking's value (as published but for its explain), its ts, its
# explain, and the trigger ids. A plain tuple of bytes, ints and strings, which the garbage
# collector stops tracking: its full passes, which stall the event loop, never walk the
# sessions held (a tuple subclass, a dataclass or a list would stay tracked).
Entry = tuple[bytes, int, bytes | None, tuple[str, ...]]


@dataclass(frozen=True)
class Answer:
    """What a ranking request gets: the ranking's JSON as published and where it came from
    (``session``, ``segment`` or ``site``), or available ``items`` of the site's catalog
    (``catalog``), or nothing (``none``)."""

    source: str
    raw: bytes | None
    ts: int | None = None  # the ranking's
    explain: bytes | None = None  # its "explain" field's JSON, kept apart
    items: list[str] = field(default_factory=list)  # source "catalog": no ranking, items

    @property
    def ranking(self) -> dict[str, Any] | None:
        return None if self.raw is None else orjson.loads(self.raw)


Waiter = Callable[[], None]


class RankingBook:
    """Latest rankings by (site, session) and default rankings by (site, segment, variant).

    >>> book = RankingBook(max_sessions=1)
    >>> book.offer({"site_id": "s", "session_id": "a", "ts": 1, "trigger_event_id": "e1",
    ...             "items": []})
    >>> book.answer("s", "a", "").source, book.has_answered("s", "a", "e1")
    ('session', True)
    >>> book.offer({"site_id": "s", "session_id": "b", "ts": 2, "trigger_event_id": "e2"})
    >>> book.answer("s", "a", "").source  # forgotten past max_sessions, no default yet
    'none'
    """

    def __init__(self, max_sessions: int = 100_000, max_defaults: int = 20_000) -> None:
        self.max_sessions = max_sessions
        self.max_defaults = max_defaults
        self._sessions: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._defaults: OrderedDict[tuple[str, str, str], Entry] = OrderedDict()
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def offer(self, ranking: dict[str, Any], raw: bytes | None = None) -> None:
        """Take one ranking record (``raw``: its bytes as read, to serve them unchanged)."""
        site, session = str(ranking["site_id"]), str(ranking["session_id"])
        explain: bytes | None = None
        if "explain" in ranking:  # served only when asked for: kept apart
            ranking = dict(ranking)
            explain, raw = orjson.dumps(ranking.pop("explain")), None
        raw = raw if raw is not None else orjson.dumps(ranking)
        stamped = ranking.get("ts")
        ts = stamped if isinstance(stamped, int) else 0
        with self._lock:
            if "segment" in ranking:  # only default rankings have one (a session may be "*")
                key = (site, str(ranking["segment"] or ""), str(ranking.get("variant") or ""))
                self._defaults.pop(key, None)
                self._defaults[key] = (raw, ts, explain, ())
                while len(self._defaults) > self.max_defaults:
                    self._defaults.popitem(last=False)
                return
            # A session's rankings are on one partition, read once in order: the last wins
            # (its ts is its event's, and a site's clocks may disagree).
            entry = self._sessions.pop((site, session), None)
            triggers = () if entry is None else entry[3]
            trigger = ranking.get("trigger_event_id")
            if isinstance(trigger, str):
                triggers = (*triggers[-(TRIGGERS_KEPT - 1):], trigger)
            self._sessions[(site, session)] = (raw, ts, explain, triggers)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            waiters = self._waiters.pop((site, session), [])
        for wake in waiters:
            try:
                wake()
            except RuntimeError:  # its event loop is closed: nobody waits any more
                pass

    def has_answered(self, site: str, session: str, event_id: str) -> bool:
        """Whether the ranking ``event_id`` triggered has arrived, or one of the next
        ``TRIGGERS_KEPT - 1`` of the session's rankings (an event further back reads as
        not answered: the wait runs out)."""
        with self._lock:
            entry = self._sessions.get((site, session))
            return entry is not None and event_id in entry[3]

    def on_next(self, site: str, session: str, wake: Waiter) -> None:
        """Call ``wake`` (from the feed's thread) at the session's next ranking."""
        with self._lock:
            self._waiters.setdefault((site, session), []).append(wake)

    def forget_waiter(self, site: str, session: str, wake: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get((site, session), [])
            if wake in waiters:
                waiters.remove(wake)
            if not waiters:
                self._waiters.pop((site, session), None)

    def answer(self, site: str, session: str, segment: str,
               catalog: CatalogItems | None = None, variant: str = "") -> Answer:
        """The session's latest ranking, else its segment's default, else the site's, else
        (source ``catalog``, no ranking) available items of ``catalog``. ``variant``: the
        session's experiment variant, whose defaults it gets (``""``: the site's engine's)."""
        with self._lock:
            entry = self._sessions.get((site, session))
            if entry is not None:
                return Answer("session", *entry[:3])
            for source, key in (("segment", (site, segment, variant)),
                                ("site", (site, "", variant))):
                default = self._defaults.get(key)
                if default is not None and (source == "site" or segment):
                    return Answer(source, *default[:3])
        items = catalog.available(site) if catalog is not None else []
        return Answer("catalog", None, items=items) if items else Answer("none", None)


class CatalogItems:
    """The first ``per_site`` available items of each of the last ``max_sites`` sites of
    ``reco.catalog``: what a site that has sent no event yet is shown.

    >>> catalog = CatalogItems(per_site=2)
    >>> for item, available in (("a", True), ("b", True), ("c", True), ("a", False)):
    ...     catalog.offer("shop", item, available)
    >>> catalog.available("shop")
    ['b']
    """

    def __init__(self, per_site: int = 200, max_sites: int = 10_000) -> None:
        self.per_site, self.max_sites = per_site, max_sites
        self._sites: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._lock = threading.Lock()

    def offer(self, site: str, item: str, available: bool) -> None:
        with self._lock:
            items = self._sites.pop(site, {})
            if not available:
                items.pop(item, None)
            elif len(items) < self.per_site:
                items[item] = None
            if items:
                self._sites[site] = items
            while len(self._sites) > self.max_sites:
                self._sites.popitem(last=False)

    def available(self, site: str, n: int = 10) -> list[str]:
        with self._lock:
            return list(self._sites.get(site, {}))[:n]
