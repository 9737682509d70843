"""The state backstop of the record bound: a store key whose changelog record would not fit
is watched while the batch is redone, input by input, to find the input that made it so."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from app.stream.runtime.protocol import check_size
from app.stream.runtime.store import ChangelogStore, Record

log = logging.getLogger(__name__)


class Oversized:
    """State keys whose changelog record came out too large, per partition."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: dict[int, set[str]] = {}

    def check(self, partition: int, state: ChangelogStore | None) -> None:
        """After an input of a redone batch: :class:`RecordTooLarge` if it made a watched
        key too large."""
        for key in self._keys.get(partition, ()):
            value = None if state is None else state.encoded(key)
            if value is not None:
                check_size(f"state {key!r}", key.encode(), value, self.limit)

    def found(self, changes: dict[int, list[Record]],
              states: Mapping[int, ChangelogStore]) -> bool:
        """Whether a state record is over the limit; if so the batch is redone watching it.

        Caps keep state small, so this is a last line of defence. Watched already, the key
        was made too large by a tick rather than an input: it is dropped, so that the
        partition goes on (logged, the only state ever given up)."""
        found = False
        for p, records in changes.items():
            for key, value in records:
                if len(key) + len(value or b"") <= self.limit:
                    continue
                name = key.decode()
                if name in self._keys.get(p, set()):
                    log.error("partition %s: state %r too large with no input to blame: "
                              "dropped", p, name)
                    states[p].delete(name)
                    changes[p] = states[p].changes()
                else:
                    log.warning("partition %s: state %r would be %d bytes: redoing the batch "
                                "to find the input", p, name, len(key) + len(value or b""))
                    self._keys.setdefault(p, set()).add(name)
                    found = True
        return found

    def clear(self) -> None:
        self._keys.clear()
