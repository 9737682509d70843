"""One typed, frozen settings object, built once from ``RECOLOOP_*`` environment variables.

Every part of recoloop takes a :class:`Settings` instead of reading the environment itself,
so tests and tools build one explicitly and nothing changes behind a running worker.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_ARMS = ("category1", "category2", "bestsellers", "trending", "similar")
# Reward per reaction type (DESIGN.md: basket add 3, detail view 1, a click counts as a view).
DEFAULT_REWARDS = {"basket_add": 3.0, "detail_view": 1.0, "click": 1.0}


class SettingsError(ValueError):
    """A ``RECOLOOP_*`` variable has a value recoloop cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 8
    data_dir: Path = Path("var")
    metrics_port: int = 9464
    web_port: int = 6066
    # Address the worker's HTTP servers bind to; 0.0.0.0 to be scraped from other hosts.
    bind_host: str = "127.0.0.1"
    # Join: a reaction counts when served.ts <= reaction.ts <= served.ts + reward_window_s;
    # a decision closes when stream time passes served.ts + reward_window_s + grace_s.
    reward_window_s: float = 20.0
    grace_s: float = 5.0
    # A partition with no input for this long advances its stream time with the wall clock.
    idle_close_s: float = 5.0
    # How often the worker ticks each partition so idle partitions still close decisions.
    tick_interval_s: float = 1.0
    session_timeout_s: float = 1800.0
    # Event times may be this far ahead of their message's Kafka timestamp; later ones are
    # dead-lettered (a wrong clock must not close every open display at once).
    max_clock_skew_s: float = 300.0
    arms: tuple[str, ...] = DEFAULT_ARMS
    # Per-site arm sets: "shop-a=category1,bestsellers;shop-b=trending,similar".
    site_arms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exploration: float = 0.1
    ranking_size: int = 10
    # Default rankings per site and context segment are republished at least this often.
    default_ranking_interval_s: float = 10.0
    # A site (or one of its context segments) without traffic for this long gets no default
    # rankings, and its bandit leaves memory (it comes back from disk when the site returns).
    site_idle_s: float = 3600.0
    seed: int = 42
    # Names this worker to Kafka (its transactional id and static group membership): a
    # restarted worker with the same id takes over at once. Empty: host name + data dir.
    worker_id: str = ""
    log_level: str = "info"
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    # Per-site join overrides: "shop-a=reward_window_s:30,grace_s:2,basket_add:5;shop-b=click:0"
    site_join: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.partitions >= 1, "RECOLOOP_PARTITIONS", "must be at least 1")
        for name in ("metrics_port", "web_port"):
            port = getattr(self, name)
            _check(1 <= port <= 65535, _env_name(name), "must be a port number 1..65535")
        for name in ("reward_window_s", "grace_s", "idle_close_s", "tick_interval_s",
                     "session_timeout_s", "default_ranking_interval_s", "max_clock_skew_s",
                     "site_idle_s"):
            _check(getattr(self, name) > 0, _env_name(name), "must be a positive number")
        _check(0.0 <= self.exploration <= 1.0, "RECOLOOP_EXPLORATION", "must be within 0..1")
        _check(bool(self.arms), "RECOLOOP_ARMS", "must name at least one arm")
        unknown = sorted(set(self.arms) - set(DEFAULT_ARMS))
        _check(not unknown, "RECOLOOP_ARMS", f"unknown arms {unknown}; known: {DEFAULT_ARMS}")
        for site, arms in self.site_arms.items():
            unknown = sorted(set(arms) - set(DEFAULT_ARMS))
            _check(bool(arms) and not unknown, "RECOLOOP_SITE_ARMS",
                   f"site {site!r}: needs known arms, got {list(arms)}; known: {DEFAULT_ARMS}")
        _check(1 <= self.ranking_size <= 100, "RECOLOOP_RANKING_SIZE",
               "must be from 1 to 100 (a ranking record stays small)")
        _check(all(0 <= r < float("inf") for r in self.rewards.values())
               and max(self.rewards.values()) > 0, "RECOLOOP_REWARDS",
               "must be finite, not negative, and some reward above 0")
        for name in ("reward_window_s", "grace_s", "session_timeout_s"):
            _check(getattr(self, name) < 10**9, _env_name(name), "must be finite")
        for site in self.site_join:
            window_s, grace_s, rewards = self.join_for(site)
            _check(0 < window_s < 10**9 and 0 < grace_s < 10**9, "RECOLOOP_SITE_JOIN",
                   f"site {site!r}: window and grace must be positive and finite")
            _check(all(0 <= r < float("inf") for r in rewards.values())
                   and max(rewards.values()) > 0, "RECOLOOP_SITE_JOIN",
                   f"site {site!r}: rewards must be finite, not negative, some above 0")
        longest = max([self.reward_window_s + self.grace_s] + [
            w + g for w, g, _ in map(self.join_for, self.site_join)])
        _check(self.session_timeout_s > longest,
               "RECOLOOP_SESSION_TIMEOUT_S", "must be longer than the reward window plus grace")
        _check(self.metrics_port != self.web_port, "RECOLOOP_METRICS_PORT",
               "must differ from RECOLOOP_WEB_PORT")
        _check(bool(self.bootstrap_servers.strip()), "RECOLOOP_BOOTSTRAP_SERVERS",
               "must not be empty")

    def topic(self, logical_name: str) -> str:
        """The real topic name of a contract topic, with the configured prefix."""
        return f"{self.topic_prefix}{logical_name}"

    @property
    def app_id(self) -> str:
        """Consumer group and internal-topic namespace; the prefix keeps deployments apart."""
        return f"{self.topic_prefix}recoloop"

    @property
    def instance_id(self) -> str:
        """``worker_id``, or one derived from the host and the data directory: stable across
        restarts, and different for two workers on one host (they need two data dirs)."""
        if self.worker_id:
            return self.worker_id
        where = zlib.crc32(str(Path(self.data_dir).resolve()).encode())
        return f"{socket.gethostname()}-{where:08x}"

    @property
    def max_reward(self) -> float:
        return max(self.rewards.values())

    def arms_for(self, site_id: str) -> tuple[str, ...]:
        return self.site_arms.get(site_id, self.arms)

    def join_for(self, site_id: str) -> tuple[float, float, dict[str, float]]:
        """``(reward_window_s, grace_s, rewards)`` of a site, with its overrides applied."""
        overrides = self.site_join.get(site_id, {})
        rewards = {kind: overrides.get(kind, value) for kind, value in self.rewards.items()}
        return (overrides.get("reward_window_s", self.reward_window_s),
                overrides.get("grace_s", self.grace_s), rewards)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``RECOLOOP_<FIELD>`` variables; unset ones keep defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = _env_name(f.name)
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            parse = _PARSERS.get(f.name, _PARSERS_BY_TYPE.get(str(f.type), str))
            try:
                values[f.name] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{var}={raw!r}: {exc}") from None
        return cls(**values)


def _env_name(field_name: str) -> str:
    return f"RECOLOOP_{field_name.upper()}"


def _check(ok: bool, var: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{var} {message}")


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _parse_arms(raw: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in raw.split(",") if a.strip())


def _parse_rewards(raw: str) -> dict[str, float]:
    """``basket_add=3,detail_view=1,click=1``: the reward of each reaction type."""
    table = dict(DEFAULT_REWARDS)
    for part in raw.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in DEFAULT_REWARDS:
            raise ValueError(f"expected type=value pairs with types {sorted(DEFAULT_REWARDS)}")
        table[name.strip()] = _parse_float(value)
    return table


def _per_site(raw: str, parse: Callable[[str, str], Any]) -> dict[str, Any]:
    """``site=...;site=...``: each site's part parsed by ``parse(site, text)``."""
    table = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        site, sep, text = part.partition("=")
        if not sep or not site.strip():
            raise ValueError("expected site=...;site=... entries")
        table[site.strip()] = parse(site.strip(), text)
    return table


def _parse_site_arms(raw: str) -> dict[str, tuple[str, ...]]:
    return _per_site(raw, lambda site, arms: _parse_arms(arms))


SITE_JOIN_KEYS = ("reward_window_s", "grace_s", *DEFAULT_REWARDS)


def _parse_join_overrides(site: str, pairs: str) -> dict[str, float]:
    """``reward_window_s:30,basket_add:5``: one site's join overrides."""
    overrides = {}
    for pair in pairs.split(","):
        name, sep, value = pair.partition(":")
        if not sep or name.strip() not in SITE_JOIN_KEYS:
            raise ValueError(f"site {site!r}: keys are {list(SITE_JOIN_KEYS)}")
        overrides[name.strip()] = _parse_float(value)
    return overrides


def _parse_site_join(raw: str) -> dict[str, dict[str, float]]:
    return _per_site(raw, _parse_join_overrides)


_PARSERS_BY_TYPE: dict[str, Callable[[str], Any]] = {
    "int": _parse_int,
    "float": _parse_float,
    "str": str,
    "Path": Path,
}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "arms": _parse_arms,
    "rewards": _parse_rewards,
    "site_arms": _parse_site_arms,
    "site_join": _parse_site_join,
}
