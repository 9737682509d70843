"""A partition's state: RocksDB on local disk, a changelog topic in Kafka, and the open
transaction's changes in memory.

Changes stay in memory until the Kafka transaction that carries them (their changelog
records, the outputs they caused and the input offsets) has committed. Only then do they go
to RocksDB, in one write batch with the changelog offset they bring it to. So local state
never runs ahead of what Kafka committed: after a crash it can only be behind, and reading
the changelog's committed records after that offset brings it up to date. Aborted
transactions' records are skipped by ``read_committed`` readers; a deleted data directory is
rebuilt from the whole changelog.

No Kafka here: :mod:`app.stream.runtime.partitions` reads the changelog back, and
:mod:`app.stream.runtime.runtime` produces its records. Values are encoded by the
processor's :class:`Codec`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

log = logging.getLogger(__name__)

# Keys of the state are text; this one cannot collide with them.
OFFSET_KEY = b"\x00changelog-offset"
WRITTEN_AT_KEY = b"\x00written-at-ms"
# The encoding of the values; a copy without it predates it and holds pickles, which are
# never read: it is rebuilt from the changelog.
FORMAT_KEY = b"\x00format"
FORMAT = b"1"
_DELETED = object()

Record = tuple[bytes, bytes | None]  # a changelog record: key, and value or None (deleted)

# Every RocksDB of the process (one per partition, the spilled models) shares one memory
# budget instead of RocksDB's per-database defaults (two 64 MB memtables and a block cache
# each); the memtables are charged to the shared block cache.
ROCKSDB_CACHE_BYTES = 64 * 2**20
ROCKSDB_MEMTABLES_BYTES = 32 * 2**20
ROCKSDB_MEMTABLE_BYTES = 4 * 2**20  # per database; a flush writes a small L0 file
_shared: tuple[Cache, WriteBufferManager] | None = None


def rocksdb_options() -> Options:
    """Raw-mode options (bytes in, bytes out: nothing is pickled) on the shared budget."""
    global _shared
    if _shared is None:
        cache = Cache(ROCKSDB_CACHE_BYTES)
        _shared = cache, WriteBufferManager.new_write_buffer_manager_with_cache(
            ROCKSDB_MEMTABLES_BYTES, False, cache)
    cache, manager = _shared
    options = Options(raw_mode=True)
    options.set_write_buffer_size(ROCKSDB_MEMTABLE_BYTES)
    options.set_write_buffer_manager(manager)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    options.set_block_based_table_factory(table)
    return options


@dataclass(frozen=True)
class RestorePlan:
    rebuild: bool  # wipe the local copy first
    read_from: int | None  # the changelog offset to read from; None: nothing to read


def restore_plan(stored: int | None, written_at_ms: int | None, low: int, high: int,
                 now_ms: int, max_age_ms: int) -> RestorePlan:
    """How to bring local state at changelog offset ``stored`` up to the changelog's
    committed end ``high`` (``low`` is its first offset).

    >>> restore_plan(None, None, 0, 0, now_ms=0, max_age_ms=10)  # new, nothing written yet
    RestorePlan(rebuild=False, read_from=None)
    >>> restore_plan(41, 0, 0, 43, now_ms=5, max_age_ms=10)  # clean restart: only a marker
    RestorePlan(rebuild=False, read_from=None)
    >>> restore_plan(41, 0, 0, 90, now_ms=5, max_age_ms=10)  # behind: read what follows
    RestorePlan(rebuild=False, read_from=42)
    """
    too_old = written_at_ms is not None and now_ms - written_at_ms > max_age_ms
    if stored is None or too_old or not low <= stored + 1 <= high:
        # Compaction may have dropped tombstones a too old copy never saw; a copy past the
        # end belongs to a changelog that was deleted and recreated.
        return RestorePlan(rebuild=stored is not None, read_from=low if high > low else None)
    # After our last record comes at most its transaction's commit marker: nothing to read
    # then, and no waiting for a fetch that would return no record.
    return RestorePlan(False, stored + 1 if stored + 2 < high else None)


class Codec(Protocol):
    """How a store's values become bytes and back; ``decode`` raises ``ValueError`` for
    bytes that are not a value of the key's kind (never runs code from them)."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, key: str, raw: bytes) -> Any: ...


class ChangelogStore:
    """One partition's key-value state, the store a processor reads and writes.

    Reads see the open transaction's changes first, then decoded objects kept in memory
    (least recently used forgotten past ``max_objects``), then RocksDB.

    >>> import json, tempfile
    >>> class Json:
    ...     def encode(self, value): return json.dumps(value).encode()
    ...     def decode(self, key, raw): return json.loads(raw)
    >>> state = ChangelogStore(Path(tempfile.mkdtemp()) / "0", Json())
    >>> state.set("wake:7:0", {"session:shop:s1": None})
    >>> records = state.changes()
    >>> [key for key, _ in records]
    [b'wake:7:0']
    >>> state.committed(records, changelog_offset=7)
    >>> state.discard()  # forget what is in memory: RocksDB has it
    >>> state.get("wake:7:0"), state.changelog_offset
    ({'session:shop:s1': None}, 7)
    >>> state.close()
    """

    def __init__(self, path: Path, codec: Codec, max_objects: int = 30_000,
                 on_undecodable: Callable[[str], None] = lambda source: None) -> None:
        self.path = path
        self.codec = codec
        self.max_objects = max_objects
        self.on_undecodable = on_undecodable
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=rocksdb_options())
        self._objects: dict[str, Any] = {}
        self._changes: dict[str, Any] = {}
        if self._db.get(FORMAT_KEY) != FORMAT and self.changelog_offset is not None:
            log.warning("%s: local state of an older format: rebuilding it", path)
            self.wipe()

    @property
    def written_at_ms(self) -> int | None:
        """When RocksDB last took changelog records (wall clock, ms)."""
        raw = self._db.get(WRITTEN_AT_KEY)
        return None if raw is None else int(raw)

    @property
    def changelog_offset(self) -> int | None:
        """The offset of the last changelog record in RocksDB; None when it holds none."""
        raw = self._db.get(OFFSET_KEY)
        return None if raw is None else int(raw)

    # -- the store ---------------------------------------------------------------

    def get(self, key: str) -> Any:
        if key in self._changes:
            value = self._changes[key]
            return None if value is _DELETED else value
        if key in self._objects:
            value = self._objects.pop(key)  # to the end: the least recently used go first
            self._objects[key] = value
            return value
        raw = self._db.get(key.encode())
        if raw is None:
            self._remember(key, None)  # absent keys are asked for again (catalog misses)
            return None
        try:
            value = self.codec.decode(key, raw)
        except ValueError as exc:  # only valid records are written: a damaged disk
            log.error("%s: local state of %r does not decode, read as absent: %s",
                      self.path, key, exc)
            self.on_undecodable("local_state")
            return None
        self._remember(key, value)
        return value

    def set(self, key: str, value: Any) -> None:
        self._changes[key] = value
        self._remember(key, value)

    def delete(self, key: str) -> None:
        self._changes[key] = _DELETED
        self._objects.pop(key, None)

    # -- transactions ---------------------------------------------------------------------

    def changes(self) -> list[Record]:
        """The open transaction's changes as changelog records, each key once, last value."""
        return [(key.encode(), None if value is _DELETED else self.codec.encode(value))
                for key, value in self._changes.items()]

    def encoded(self, key: str) -> bytes | None:
        """The bytes ``key``'s value would have in the changelog; None when it has none."""
        value = self.get(key)
        return None if value is None else self.codec.encode(value)

    def committed(self, records: list[Record], changelog_offset: int) -> None:
        """The transaction carrying ``records`` committed: write them to RocksDB."""
        self.apply(records, changelog_offset)
        self._changes.clear()

    def discard(self) -> None:
        """Forget the open transaction and every decoded object (it may be half-changed)."""
        self._changes.clear()
        self._objects.clear()

    def restore(self, records: Iterable[Record], changelog_offset: int) -> int:
        """Apply changelog records read back from Kafka; one whose value does not decode
        (anyone who can write the topic could have put it there) is skipped and counted.
        Returns how many were applied."""
        valid = []
        for key, value in records:
            if value is not None:
                try:
                    self.codec.decode(key.decode("utf-8"), value)
                except ValueError as exc:  # UnicodeDecodeError among them
                    log.warning("%s: skipped a changelog record: %s", self.path, exc)
                    self.on_undecodable("changelog")
                    continue
            valid.append((key, value))
        self._objects.clear()  # what it remembers, present or absent, may be overwritten
        self.apply(valid, changelog_offset)
        return len(valid)

    def apply(self, records: Iterable[Record], changelog_offset: int) -> None:
        """Write changelog records and the offset they reach, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(OFFSET_KEY, str(changelog_offset).encode())
        batch.put(FORMAT_KEY, FORMAT)
        batch.put(WRITTEN_AT_KEY, str(int(time.time() * 1000)).encode())
        self._db.write(batch)

    def wipe(self) -> None:
        """Delete the local copy entirely (it cannot be caught up: rebuild it)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = Rdict(str(self.path), options=rocksdb_options())
        self.discard()

    def close(self) -> None:
        self._db.close()

    def _remember(self, key: str, value: Any) -> None:
        if len(self._objects) >= self.max_objects:
            for old in list(self._objects)[: self.max_objects // 2]:
                del self._objects[old]  # changed ones stay reachable through _changes
        self._objects[key] = value
