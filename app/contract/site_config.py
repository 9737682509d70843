"""``reco.site-config`` records: a site's settings and rules, checked against the topic's
schema (``topic_specs/reco.site-config.json``) and read into
:class:`app.core.sites.SiteConfig`."""

from __future__ import annotations

from typing import Any

import orjson

from app.contract.decode import InvalidInput, validated
from app.contract.topics import SITE_CONFIG
from app.core.experiment import Experiment, Variant
from app.core.rules import PROMOTED_PLACES_DEFAULT, Rules
from app.core.sites import SiteConfig, SiteSettings


def decode_site_config(key: bytes | None, raw: bytes) -> SiteConfig:
    """The config ``raw`` holds for the site ``key`` names; InvalidInput with the reason
    when it breaks the schema or names another site."""
    value = validated(SITE_CONFIG, raw)
    if key is not None and key != value["site_id"].encode():
        raise InvalidInput("key_mismatch", "a site config's key must be its site_id")
    return site_config(value)


def _exploration(value: dict[str, Any] | None) -> tuple[str, float] | None:
    return None if not value else (value["rule"], float(value["parameter"]))


def _experiment(value: dict[str, Any] | None) -> Experiment | None:
    if value is None:
        return None
    return Experiment(value["name"], tuple(
        Variant(v["name"], float(v["share"]),
                arms=tuple(v["arms"]) if "arms" in v else None,
                exploration=_exploration(v.get("exploration")), baseline=v.get("baseline"),
                items=tuple(v.get("items", ())), apprentice=bool(v.get("apprentice")))
        for v in value["variants"]))


def apply_site_config(sites: SiteSettings, key: bytes | None, raw: bytes | None) -> str | None:
    """Apply one ``reco.site-config`` record to ``sites`` (a tombstone: back to the
    defaults); the reason when it is refused and the site keeps its previous config."""
    site_id = (key or b"").decode("utf-8", "replace")
    if raw is None:
        sites.forget(site_id)
        return None
    try:
        return sites.offer(decode_site_config(key, raw))
    except InvalidInput as exc:
        return str(exc)


def site_config(value: dict[str, Any]) -> SiteConfig:
    rules: dict[str, Any] = value.get("rules") or {}
    return SiteConfig(
        site_id=value["site_id"],
        arms=tuple(value["arms"]) if "arms" in value else None,
        exploration=_exploration(value.get("exploration")),
        experiment=_experiment(value.get("experiment")),
        shadow=tuple(value.get("shadow", ())),
        reward_window_s=value.get("reward_window_s"), grace_s=value.get("grace_s"),
        rewards={kind: float(weight) for kind, weight in (value.get("rewards") or {}).items()},
        rules=Rules(
            exclude_categories=frozenset(rules.get("exclude_categories", ())),
            exclude_items=frozenset(rules.get("exclude_items", ())),
            price_min=rules.get("price_min"), price_max=rules.get("price_max"),
            pinned=tuple(rules.get("pinned", ())), boosted=tuple(rules.get("boosted", ())),
            promoted_places_max=rules.get("promoted_places_max", PROMOTED_PLACES_DEFAULT),
            exclude_viewed=rules.get("exclude_viewed", "none")))


def checked_site_config(site_id: str, value: Any, sites: SiteSettings) -> bytes:
    """The record to write for ``site_id``'s config ``value`` (its ``site_id`` may be left
    out); ValueError with the reason when it is refused, as a worker would refuse it."""
    if not isinstance(value, dict):
        raise ValueError("a site config is a JSON object")
    value = {"site_id": site_id, **value}
    if value["site_id"] != site_id:
        raise ValueError(f"the config names site {value['site_id']!r}, not {site_id!r}")
    raw = orjson.dumps(value)
    try:
        config = decode_site_config(site_id.encode(), raw)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None
    problem = sites.problem(config)
    if problem is not None:
        raise ValueError(problem)
    return raw
