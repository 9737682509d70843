"""A dict-backed Store for unit tests of the core."""

from __future__ import annotations

import pickle
from typing import Any


class DictStore:
    """The core's Store protocol over a dict, pickling values as the worker's tables do."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return None if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = pickle.dumps(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
