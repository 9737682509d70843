"""The key-value state the pure core reads and writes (:class:`app.stream.state.PartitionState`
in the worker)."""

from __future__ import annotations

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
