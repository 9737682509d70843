"""The topic contract, loaded from ``topic_specs/<logical name>.json``, and input validation.

The JSON files (``app/contract/topic_specs/``, package data: a wheel carries them; ``topics/``
at the repository's root links to them) are the single source of truth: the topic admin
creates topics from them, the worker validates every input value against their JSON Schema
(draft-07), and their README documents them. Validators are compiled once with
fastjsonschema (generated Python code), because :func:`validation_error` runs on every
input event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import fastjsonschema

# Beside this module, in the package itself, so a regular (non-editable) install finds them.
TOPICS_DIR = Path(__file__).resolve().parent / "topic_specs"

CleanupPolicy = Literal["delete", "compact"]
TimestampType = Literal["CreateTime", "LogAppendTime"]


class TopicSpecError(ValueError):
    """A file in ``topic_specs/`` is malformed; the message names the file."""


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name; Settings.topic() adds the prefix
    description: str
    partitions: int | None  # None: use Settings.partitions
    cleanup_policy: CleanupPolicy
    retention_ms: int  # -1: keep forever
    key: str  # what the record key is
    value_schema: Mapping[str, Any]
    example: Mapping[str, Any]
    # LogAppendTime: the broker stamps each record, so no producer clock can set the time
    # event times are checked against.
    timestamp_type: TimestampType = "CreateTime"

    def partition_count(self, default: int) -> int:
        return default if self.partitions is None else self.partitions


@cache
def load_specs(directory: Path = TOPICS_DIR) -> dict[str, TopicSpec]:
    """Every ``*.json`` spec in ``directory``, by logical topic name (sorted)."""
    specs = [_load(path) for path in sorted(directory.glob("*.json"))]
    if not specs:
        raise TopicSpecError(f"no topic specs (*.json) in {directory}")
    return {spec.name: spec for spec in specs}


def validation_error(logical_topic: str, value: object) -> str | None:
    """Why ``value`` breaks the topic's schema (``"items: must contain ..."``), or None.

    Raises KeyError for a topic without a spec: that is a programming error, not bad input.
    """
    try:
        _validators()[logical_topic](value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _reason(exc)
    return None


@cache
def _validators() -> dict[str, Callable[[object], object]]:
    # use_default=False: validation must never fill in defaults, i.e. mutate the event.
    return {
        name: fastjsonschema.compile(dict(spec.value_schema), use_default=False)
        for name, spec in load_specs().items()
    }


def _reason(exc: fastjsonschema.JsonSchemaValueException) -> str:
    # fastjsonschema names the failing spot "data", "data.items[0]", ...; say it the way the
    # contract does ("items[0]") and put the field first so the reason reads like a checklist.
    name = exc.name or "data"
    path = "value" if name == "data" else name.removeprefix("data.")
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [f for f in (exc.rule_definition or []) if f not in exc.value]
        prefix = "" if name == "data" else f"{path}."
        fields = ", ".join(prefix + f for f in missing)
        return f"{fields}: required field{'s' if len(missing) > 1 else ''} missing"
    message = exc.message.removeprefix(name).strip()
    return f"{path}: {message}"


def _load(path: Path) -> TopicSpec:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        spec = TopicSpec(
            name=_get(raw, "name", str),
            description=_get(raw, "description", str),
            partitions=raw["partitions"],
            cleanup_policy=raw["cleanup_policy"],
            retention_ms=_get(raw, "retention_ms", int),
            key=_get(raw, "key", str),
            value_schema=_get(raw, "value_schema", dict),
            example=_get(raw, "example", dict),
            timestamp_type=raw.get("timestamp_type", "CreateTime"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TopicSpecError(f"{path}: {exc!r}") from None
    if spec.name != path.stem:
        raise TopicSpecError(f"{path}: name {spec.name!r} does not match the file name")
    if spec.partitions is not None and (type(spec.partitions) is not int or spec.partitions < 1):
        raise TopicSpecError(f"{path}: partitions must be null or a positive integer")
    if spec.cleanup_policy not in ("delete", "compact"):
        raise TopicSpecError(f"{path}: cleanup_policy must be 'delete' or 'compact'")
    if spec.timestamp_type not in ("CreateTime", "LogAppendTime"):
        raise TopicSpecError(f"{path}: timestamp_type must be 'CreateTime' or 'LogAppendTime'")
    if spec.retention_ms < -1:
        raise TopicSpecError(f"{path}: retention_ms must be -1 or >= 0")
    return spec


def _get(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw[key]
    # bool is an int subclass; ``true`` is not a count.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{key} must be {kind.__name__}")
    return value
