"""The ``RECOLOOP_*`` mini-languages: scalars, lists, ``name:value`` pairs and per-site
entries, and the error every settings check raises.

Per-site variables share one syntax: ``site=<the value's syntax>;site=...``. Pairs are
``name:value`` (``name=value`` is accepted too: ``RECOLOOP_REWARDS`` documents it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A ``RECOLOOP_*`` variable has a value recoloop cannot use; the message names it."""


def check(ok: bool, var: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{var} {message}")


def parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected true or false")
    return value in ("true", "1", "yes")


# The parser of each field type; fields of other types name their own (``setting(parse=)``).
BY_TYPE: Mapping[type, Callable[[str], Any]] = MappingProxyType({
    int: parse_int, float: parse_float, bool: parse_bool, str: str, Path: Path})


def parse_list(raw: str) -> tuple[str, ...]:
    """``a, b,c``: the non-empty names, in order."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_pairs(raw: str, names: Iterable[str]) -> dict[str, float]:
    """``name:value,name:value`` (or ``name=value``) with names among ``names``."""
    names = tuple(names)
    pairs = {}
    for part in raw.split(","):
        colon, equals = part.find(":"), part.find("=")
        cut = colon if equals < 0 or 0 <= colon < equals else equals
        name = part[:cut].strip() if cut >= 0 else ""
        if name not in names:
            raise ValueError(f"expected name:value pairs with names {list(names)}")
        pairs[name] = parse_float(part[cut + 1:])
    return pairs


def parse_per_site(raw: str, parse: Callable[[str, str], T]) -> Mapping[str, T]:
    """``site=...;site=...``: each site's part parsed by ``parse(site, text)``."""
    table = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        site, sep, text = part.partition("=")
        if not sep or not site.strip():
            raise ValueError("expected site=...;site=... entries")
        try:
            table[site.strip()] = parse(site.strip(), text)
        except ValueError as exc:
            raise ValueError(f"site {site.strip()!r}: {exc}") from None
    return MappingProxyType(table)
