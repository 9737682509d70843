"""Per-site API keys: each key belongs to one site, and only its SHA-256 is ever stored.

A key reads ``rk_<key id>_<secret>``: the key id (12 hex digits) names its record on the
compacted ``<app id>-api-keys`` topic, the secret is 32 random bytes (256 bits: a fast hash
is enough, no password stretching). The record, keyed by the key id, holds the site and the
secret's digest; ``recoloop keys create --site S`` prints a new key once, ``keys revoke
KEY_ID`` writes the key id's tombstone. A site may have several keys (rotation:
create the new one, move the site over, revoke the old one).

:class:`KeyBook` answers "which site does this key belong to", comparing digests in
constant time, and limits each key's request rate (a token bucket per key, per replica).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

_KEY = re.compile(r"rk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KeyRecord:
    """A key's record; an admin key (``admin``, no site) sets sites' configs and nothing
    else: it opens no site's rankings or events."""

    key_id: str
    site_id: str
    sha256: str
    created_ms: int
    admin: bool = False

    def opens(self, site_id: str) -> bool:
        return not self.admin and self.site_id == site_id

    def to_value(self) -> bytes:
        return orjson.dumps({"key_id": self.key_id, "site_id": self.site_id,
                             "sha256": self.sha256, "created_ms": self.created_ms,
                             "admin": self.admin})

    @classmethod
    def from_value(cls, raw: bytes) -> KeyRecord:
        """ValueError unless ``raw`` is a key record (the topic is read back: check it)."""
        value: Any = orjson.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not an API key record")
        key_id, site, digest = value.get("key_id"), value.get("site_id"), value.get("sha256")
        admin = value.get("admin") is True
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id) \
                or not isinstance(site, str) or not (site or admin) \
                or not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ValueError("not an API key record")
        created = value.get("created_ms")
        return cls(key_id, "" if admin else site, digest,
                   created if isinstance(created, int) else 0, admin)


MAX_SITE_CHARS = 256  # the contract's site_id


def site_id_problem(site_id: str) -> str | None:
    """Why no key can be made for ``site_id``, or None. A site id is what events may carry
    (1 to 256 characters of UTF-8) and what ``keys list`` can show on one line: no control
    characters, no blanks at either end.

    >>> site_id_problem("shop/eu"), site_id_problem(""), site_id_problem(" shop")
    (None, 'a site id is 1 to 256 characters', 'a site id has no blanks at either end')
    """
    if not 1 <= len(site_id) <= MAX_SITE_CHARS:
        return f"a site id is 1 to {MAX_SITE_CHARS} characters"
    try:
        site_id.encode("utf-8")
    except UnicodeEncodeError:
        return "a site id is UTF-8 text"
    if not site_id.isprintable():
        return "a site id has no control characters"
    if site_id != site_id.strip():
        return "a site id has no blanks at either end"
    return None


def new_key(site_id: str | None, now_ms: int | None = None) -> tuple[str, KeyRecord]:
    """A new key for ``site_id`` (None: an admin key), shown once, and the record that
    stores only its digest; ValueError for a site id no event could carry."""
    problem = None if site_id is None else site_id_problem(site_id)
    if problem is not None:
        raise ValueError(problem)
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record = KeyRecord(key_id, site_id or "", _digest(secret),
                       int(time.time() * 1000) if now_ms is None else now_ms, site_id is None)
    return f"rk_{key_id}_{secret}", record


def is_key_id(text: str) -> bool:
    return _KEY_ID.fullmatch(text) is not None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyBook:
    """Every key record read from the keys topic, and each key's request budget."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    def offer(self, key_id: str, record: KeyRecord | None) -> None:
        """A record of the keys topic; None (a tombstone) revokes ``key_id``."""
        with self._lock:
            if record is None:
                self._records.pop(key_id, None)
            else:
                self._records[key_id] = record

    def records(self) -> list[KeyRecord]:
        with self._lock:
            return list(self._records.values())

    def identify(self, key: str | None) -> KeyRecord | None:
        """The record of ``key``; None for no key, a malformed, unknown or revoked one.
        The digests are compared in constant time."""
        match = _KEY.fullmatch(key or "")
        if match is None:
            return None
        record = self._records.get(match.group(1))
        if record is None:
            return None
        if not hmac.compare_digest(record.sha256, _digest(match.group(2))):
            return None
        return record

    def allow(self, key: str) -> bool:
        """Take one request from ``key``'s budget: ``rate_per_s`` a second, bursts of one
        second's worth; False when it is spent (answer 429)."""
        key_id = key[3:15]
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.rate_per_s, now))
            tokens = min(self.rate_per_s, tokens + (now - at) * self.rate_per_s)
            allowed = tokens >= 1.0
            self._buckets[key_id] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
