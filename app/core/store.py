"""The key-value state the pure core reads and writes (:class:`app.stream.state.PartitionState`
in the worker)."""

from __future__ import annotations

import pickle
from typing import Any, Protocol


class Store(Protocol):
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...


class MemoryStore:
    """A Store over a dict of objects, nothing encoded: for state rebuilt from Kafka on every
    start (each worker's copy of the catalog)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


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
