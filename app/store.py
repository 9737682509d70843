"""The key-value state the pure core reads and writes (a Faust table in the worker)."""

from __future__ import annotations

from typing import Any, Protocol


class Store(Protocol):
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
