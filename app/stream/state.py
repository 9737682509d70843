"""A partition's engine state: the runtime's :class:`ChangelogStore` holding the engine's
values in their plain encoding (:mod:`app.contract.codec`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.contract.codec import decode_state, encode_state
from app.stream.runtime.store import ChangelogStore


class EngineCodec:
    """The engine state's encoding: a record that does not decode raises
    :class:`app.contract.codec.UndecodableRecord`, a ``ValueError``."""

    def encode(self, value: Any) -> bytes:
        return encode_state(value)

    def decode(self, key: str, raw: bytes) -> Any:
        return decode_state(key, raw)


ENGINE_CODEC = EngineCodec()


class PartitionState(ChangelogStore):
    """The :class:`app.core.store.Store` the engine reads and writes for one partition.

    >>> import tempfile
    >>> state = PartitionState(Path(tempfile.mkdtemp()) / "0")
    >>> state.set("wake:7:0", {"session:shop:s1": None})
    >>> state.committed(state.changes(), changelog_offset=7)
    >>> state.discard()
    >>> state.get("wake:7:0"), state.changelog_offset
    ({'session:shop:s1': None}, 7)
    >>> state.close()
    """

    def __init__(self, path: Path, max_objects: int = 30_000,
                 on_undecodable: Callable[[str], None] = lambda source: None) -> None:
        super().__init__(path, ENGINE_CODEC, max_objects, on_undecodable)
