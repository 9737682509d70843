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

_ESCAPES = {"%": "%25", ":": "%3A", "|": "%7C"}
_WITH_EQUALS = {**_ESCAPES, "=": "%3D"}
_TABLES = (str.maketrans(_ESCAPES), str.maketrans(_WITH_EQUALS))  # translate runs in C
_ESCAPED = re.compile("|".join(re.escape(code) for code in _WITH_EQUALS.values()))
_BY_CODE = {code: char for char, code in _WITH_EQUALS.items()}


def escape(part: str, *, equals: bool = False) -> str:
    """``part`` with no ``:`` or ``|`` (nor ``=``, with ``equals``) left in it;
    :func:`unescape` gives it back. Ids without them read as they are."""
    if "%" in part or ":" in part or "|" in part or (equals and "=" in part):
        return part.translate(_TABLES[equals])
    return part  # the common case: each check is a C scan, translate is not free


def unescape(part: str) -> str:
    return _ESCAPED.sub(lambda match: _BY_CODE[match.group(0)], part)


def state_key(kind: str, *parts: object) -> str:
    """``kind:part:...``, each part escaped: one key per (kind, parts) tuple."""
    key = kind
    for part in parts:  # written out: a key is built for every state read
        text = part if type(part) is str else str(part)
        key += ":" + (text.translate(_TABLES[False]) if "%" in text or ":" in text
                      or "|" in text else text)
    return key


def key_kind(key: str) -> str:
    """The kind a :func:`state_key` starts with."""
    return key.partition(":")[0]
