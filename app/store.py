"""The key-value state the pure core reads and writes (a Faust table in the worker)."""

from __future__ import annotations

import pickle
from typing import Any, Protocol


class Store(Protocol):
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...


class CachedStore:
    """A Store that keeps decoded objects of hot keys, and writes some of them behind.

    Keys starting with a ``cached_prefixes`` entry are decoded once and then served from
    memory; keys starting with a ``deferred_prefixes`` entry are also only written to the
    underlying store by :meth:`flush` (the worker flushes each partition on its ticks), for
    state where losing the last second of updates in a crash is harmless.
    One instance per partition: the underlying table routes by the current partition.
    """

    def __init__(self, inner: Store, cached_prefixes: tuple[str, ...],
                 deferred_prefixes: tuple[str, ...] = (), max_objects: int = 100_000) -> None:
        self.inner = inner
        self.max_objects = max_objects
        self.cached_prefixes = cached_prefixes + deferred_prefixes
        self.deferred_prefixes = deferred_prefixes
        self._objects: dict[str, Any] = {}
        self._dirty: set[str] = set()

    def get(self, key: str) -> Any:
        if key in self._objects:
            value = self._objects.pop(key)  # to the end: the least recently used go first
            self._objects[key] = value
            return value
        value = self.inner.get(key)
        if value is not None and key.startswith(self.cached_prefixes):
            self._remember(key, value)
        return value

    def set(self, key: str, value: Any) -> None:
        if key.startswith(self.cached_prefixes):
            self._remember(key, value)
            if key.startswith(self.deferred_prefixes):
                self._dirty.add(key)
                return
        self.inner.set(key, value)

    def delete(self, key: str) -> None:
        self._objects.pop(key, None)
        self._dirty.discard(key)
        self.inner.delete(key)

    def _remember(self, key: str, value: Any) -> None:
        if len(self._objects) >= self.max_objects:
            # Forget the least recently used half that has nothing waiting to be written.
            for old in list(self._objects)[: self.max_objects // 2]:
                if old not in self._dirty:
                    del self._objects[old]
        self._objects[key] = value

    def flush(self) -> int:
        """Write the deferred keys; returns how many were written."""
        for key in self._dirty:
            self.inner.set(key, self._objects[key])
        written = len(self._dirty)
        self._dirty.clear()
        return written


class DictStore:
    """A Store over a dict, for tools and tests: values are pickled as the worker's tables
    pickle them, so state that would not survive the table fails here too."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return None if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = pickle.dumps(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
