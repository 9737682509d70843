"""Plain, versioned encodings of what the worker keeps: engine state and bandit models.

Data is never code. State values (the changelog topic and local RocksDB) and bandits (the
models topic) are MessagePack, decoded by msgspec straight into the core's own dataclasses
with every field's type checked; a pickle, or any other bytes, fails to decode and raises
:class:`UndecodableRecord`, and nothing in it ever runs. Every encoding starts with a
format byte, so a later format can be told from this one.

Every record the worker writes stays under :data:`MAX_RECORD_BYTES`, well below the
producer's 1,000,000-byte limit: a site's model is bounded by construction
(:func:`model_bytes_bound`), everything else is checked on its encoded bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.core.decay import DecayedScores
from app.core.default_rankings import SiteDefaults
from app.core.keys import key_kind
from app.core.knn import Postings
from app.core.policy import MAX_FEATURE_CHARS, ContextualBandit, PolicyState
from app.core.ranker import MAX_ITEM_CHARS as MAX_RANKER_ITEM_CHARS
from app.core.ranker import MAX_ITEMS as MAX_RANKER_ITEMS
from app.core.session import Session
from app.core.stream_time import PartitionClock

# librdkafka's default message.max.bytes: a larger record is refused and stops the batch.
PRODUCER_LIMIT_BYTES = 1_000_000
# Every record the worker writes (key and value together) stays at or below this.
MAX_RECORD_BYTES = 768 * 1024
FORMAT_V1 = b"\x01"
# What a model read back may hold: its size stays under model_bytes_bound of these, so a
# crafted record cannot make the worker publish one Kafka refuses.
MAX_MODEL_FEATURES = 128
MAX_MODEL_ARMS = 8
MAX_ARM_CHARS = 64

# What each kind of state key holds (see app.core.keys): the decoder checks it.
STATE_TYPES: dict[str, Any] = {
    "session": Session,
    "clock": PartitionClock,
    "wake": dict[str, None],
    "stat": DecayedScores,
    "defaults": SiteDefaults,
    "knn": Postings,
}

_encoder = msgspec.msgpack.Encoder()
_state_decoders = {kind: msgspec.msgpack.Decoder(kind_type)
                   for kind, kind_type in STATE_TYPES.items()}
_model_decoder = msgspec.msgpack.Decoder(PolicyState)


class UndecodableRecord(ValueError):
    """Bytes that are not a value of this format: skipped, logged and counted, never run."""


class RecordTooLarge(ValueError):
    """A record over :data:`MAX_RECORD_BYTES`: its input is dead-lettered ``too_large``."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__(f"{what} would be {size} bytes, over {MAX_RECORD_BYTES}")
        self.what = what
        self.size = size


def check_size(what: str, key: bytes | None, value: bytes | None) -> None:
    size = len(key or b"") + len(value or b"")
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(what, size)


# -- engine state ----------------------------------------------------------------------


def encode_state(value: Any) -> bytes:
    return FORMAT_V1 + _encoder.encode(value)


def decode_state(key: str, raw: bytes) -> Any:
    """The value stored under ``key``, of the type its kind holds.

    >>> from app.core.stream_time import CLOCK_KEY
    >>> clock = PartitionClock(stream_time=5)
    >>> decode_state(CLOCK_KEY, encode_state(clock)) == clock
    True
    >>> import pickle
    >>> decode_state(CLOCK_KEY, pickle.dumps(clock))
    Traceback (most recent call last):
    ...
    app.contract.codec.UndecodableRecord: clock: not format 1 (first byte b'\\x80')
    """
    kind = key_kind(key)
    decoder = _state_decoders.get(kind)
    if decoder is None:
        raise UndecodableRecord(f"{kind}: no such kind of state key")
    if raw[:1] != FORMAT_V1:
        raise UndecodableRecord(f"{kind}: not format 1 (first byte {raw[:1]!r})")
    try:
        return decoder.decode(raw[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableRecord(f"{kind}: {exc}") from None


class EncodedStore:
    """A :class:`app.core.store.Store` over a dict of encoded values, for tools and tests:
    state that would not survive the changelog fails here too."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return None if raw is None else decode_state(key, raw)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = encode_state(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


# -- bandit models ---------------------------------------------------------------------


def encode_model(policy: ContextualBandit) -> bytes:
    """``b"<version>\\n"``, then the format byte and the policy's state: readers learn the
    version without decoding the rest."""
    return b"%d\n" % policy.n_updates + FORMAT_V1 + _encoder.encode(policy.to_state())


def model_version(raw: bytes) -> int:
    """The version a versioned record (a model, a site statistic) starts with."""
    head, sep, _ = raw.partition(b"\n")
    if not sep or not head.isdigit() or len(head) > 20:
        raise UndecodableRecord("a versioned record starts with its version and a newline")
    return int(head)


def decode_model(raw: bytes) -> ContextualBandit:
    version = model_version(raw)
    body = raw.partition(b"\n")[2]
    if body[:1] != FORMAT_V1:
        raise UndecodableRecord("model: not format 1")
    try:
        state = _model_decoder.decode(body[1:])
        if state.max_features > MAX_MODEL_FEATURES or len(state.arms) > MAX_MODEL_ARMS \
                or any(len(arm) > MAX_ARM_CHARS for arm in state.arms):
            raise ValueError("more features, arms or longer arm names than a model may have")
        policy = ContextualBandit.from_state(state)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise UndecodableRecord(f"model: {exc}") from None
    if policy.n_updates != version:
        raise UndecodableRecord("model: its version does not match its state")
    return policy


def model_bytes_bound(n_arms: int, max_features: int) -> int:
    """The most bytes a model over ``n_arms`` arms and ``max_features`` features encodes to:
    per arm, ``n(n+1)/2 + n`` float64s and ``n`` feature indices; the feature names once, each
    at most :data:`MAX_FEATURE_CHARS` characters of up to 4 UTF-8 bytes; arm names (at most
    256 characters each), the version line, the item model's weights and the framing."""
    n = max_features
    per_arm = 8 * (n * (n + 1) // 2 + n) + 5 * n + 3 * 16
    names = n * (MAX_FEATURE_CHARS * 4 + 5)
    # The item model (app.core.ranker): a float64 and a name per weight.
    ranker = (MAX_RANKER_ITEMS + 8) * (9 + 5 + (MAX_RANKER_ITEM_CHARS + 5) * 4) + 64
    return 21 + 1 + 256 + n_arms * (per_arm + 2 * (4 * 256 + 5)) + names + ranker
