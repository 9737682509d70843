"""State keys that no two tenants can share, whatever characters their ids contain.

A key is a kind followed by its parts, joined by ``:``; every part escapes ``%``, ``:`` and
``|`` (percent-encoding), so distinct part tuples always give distinct keys: site ``shop:a``
with session ``b`` and site ``shop`` with session ``a:b`` no longer meet.

>>> state_key("session", "shop:a", "b"), state_key("session", "shop", "a:b")
('session:shop%3Aa:b', 'session:shop:a%3Ab')
>>> key_kind(state_key("stat", "100%", "bestsellers"))
'stat'
>>> unescape(escape("a:b|c%d")) == "a:b|c%d"
True
"""

from __future__ import annotations

import re

_ESCAPES = {"%": "%25", ":": "%3A", "|": "%7C", "=": "%3D"}
_ESCAPED = re.compile("|".join(re.escape(code) for code in _ESCAPES.values()))
_BY_CODE = {code: char for char, code in _ESCAPES.items()}


def escape(part: str, *also: str) -> str:
    """``part`` with no ``:``, ``|`` (or the ``also`` characters, of ``=``) left in it;
    :func:`unescape` gives it back."""
    special = ("%", ":", "|", *also)
    if not any(char in part for char in special):
        return part  # the common case, and keys of such ids read as before
    return "".join(_ESCAPES[char] if char in special else char for char in part)


def unescape(part: str) -> str:
    return _ESCAPED.sub(lambda match: _BY_CODE[match.group(0)], part)


def state_key(kind: str, *parts: object) -> str:
    """``kind:part:...``, each part escaped: one key per (kind, parts) tuple."""
    return ":".join([kind, *(escape(str(part)) for part in parts)])


def key_kind(key: str) -> str:
    """The kind a :func:`state_key` starts with."""
    return key.partition(":")[0]
