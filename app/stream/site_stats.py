"""Every site's item statistics as one worker knows them, and their learning.

Sessions are spread over partitions, so a partition sees a sample of a site's traffic; its
arms rank from the whole site's instead. Each reaction's :class:`Engagement` goes on the
decisions topic (keyed by site, like closed decisions), the worker owning the site's
partition of that topic learns it here inside its open transaction, and the changed
statistics go to the compacted site-statistics topic that every worker reads: one record
per statistic (``stat:<site>:<name>:<part>``, :mod:`app.core.keys`; ``knn:<site>`` for the
session index), ``b"<version>\\n"`` then the plain encoding of :mod:`app.contract.codec`.

As with the bandits (:mod:`app.stream.bandits`): an aborted transaction's learning is
forgotten (the learner works on copies decoded from the committed bytes), the newest
version of a record wins (a late copy of our own older record never undoes a newer one),
and a record that does not decode is skipped and counted, never run.

Memory: the committed bytes of every site's statistics, and a decoded copy of those read
since they last changed. A statistic holds at most its capacity of items
(:data:`app.core.stats.STAT_SHAPES`), one per item for co-views (about 1.2 KB each
encoded, with 12-character ids): a site with 10,000 co-viewed items keeps some 12 MB here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from app.contract.codec import (
    MAX_RECORD_BYTES,
    UndecodableRecord,
    decode_state,
    encode_state,
    model_version,
)
from app.core.stats import Engagement, learn_into

log = logging.getLogger(__name__)


class SiteStatistics:
    """The shared site statistics (a read-only :class:`app.core.store.Store` for the engine)
    and their learner.

    >>> stats = SiteStatistics()
    >>> stats.learn(Engagement("shop", "s1", "shoe", "click", ts=1_000))
    >>> sorted((key, raw.split(b"\\n")[0]) for key, raw in stats.changes())
    [('stat:shop:popular:', b'1'), ('stat:shop:recent:', b'1')]
    >>> stats.aborted()  # the transaction did not commit: nothing was learned
    >>> stats.get("stat:shop:popular:") is None
    True
    >>> stats.offer("stat:shop:popular:", b"1\\n\\x80\\x04crafted pickle")  # skipped, never run
    >>> stats.get("stat:shop:popular:") is None
    True
    """

    def __init__(self, on_undecodable: Callable[[], None] = lambda: None) -> None:
        self.on_undecodable = on_undecodable
        self._committed: dict[str, bytes] = {}  # newest committed record per key
        self._decoded: dict[str, Any] = {}  # readers' copies of committed records
        self._learning: dict[str, Any] = {}  # changed in the open transaction

    # -- what the engine reads ------------------------------------------------------------

    def get(self, key: str) -> Any:
        value = self._decoded.get(key)
        if value is None and key in self._committed:
            value = self._decoded[key] = _decode(key, self._committed[key])
        return value

    def set(self, key: str, value: Any) -> None:
        raise AssertionError("site statistics change only by learning engagements")

    def delete(self, key: str) -> None:
        raise AssertionError("site statistics change only by learning engagements")

    # -- the learner ----------------------------------------------------------------------

    def learn(self, engagement: Engagement) -> None:
        """Learn one engagement in the open transaction."""
        learn_into(self._learning_copy, self._learning.__setitem__, engagement)

    def _learning_copy(self, key: str) -> Any:
        """What the open transaction works on: its own changes, else a fresh copy of the
        committed record (never the readers' copy: an abort must leave that untouched)."""
        if key in self._learning:
            return self._learning[key]
        raw = self._committed.get(key)
        return None if raw is None else _decode(key, raw)

    def changes(self) -> list[tuple[str, bytes]]:
        """The statistics changed in the open transaction, as site-statistics records. A
        record over the limit (statistics are bounded by capacity, so never expected) is
        logged and left out: the committed one stays."""
        records = []
        for key, value in self._learning.items():
            version = model_version(self._committed[key]) + 1 if key in self._committed else 1
            raw = b"%d\n" % version + encode_state(value)
            if len(key) + len(raw) > MAX_RECORD_BYTES:
                log.error("site statistic %r would be %d bytes: not published", key, len(raw))
                continue
            records.append((key, raw))
        return records

    def committed(self, changes: list[tuple[str, bytes]]) -> None:
        self._learning.clear()
        for key, raw in changes:
            self._keep(key, raw)

    def aborted(self) -> None:
        self._learning.clear()

    # -- the topic every worker reads -----------------------------------------------------

    def offer(self, key: str, raw: bytes) -> None:
        """A committed record read from the site-statistics topic (maybe one we wrote)."""
        try:
            model_version(raw)
            _decode(key, raw)
        except UndecodableRecord as exc:
            log.warning("site statistics topic: skipped a record for %r: %s", key, exc)
            self.on_undecodable()
            return
        self._keep(key, raw)

    def _keep(self, key: str, raw: bytes) -> None:
        known = self._committed.get(key)
        if known is None or model_version(known) < model_version(raw):
            self._committed[key] = raw
            self._decoded.pop(key, None)


def _decode(key: str, raw: bytes) -> Any:
    if not key.startswith(("stat:", "knn:")):
        raise UndecodableRecord(f"{key!r} is not a site statistic's key")
    return decode_state(key, raw.partition(b"\n")[2])
