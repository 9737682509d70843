"""Typed, frozen settings in sections, built once from ``RECOLOOP_*`` environment variables.

Every part of recoloop takes a :class:`Settings` instead of reading the environment itself,
so tests and tools build one explicitly and nothing changes behind a running worker. Each
section (``kafka``, ``join``, ``bandit``, ``ranking``, ``worker``, ``serve``) is a frozen
dataclass whose fields name their variable, are parsed by their type and checked by the
section; mappings are read-only. Per-site values are :class:`app.core.sites.SiteConfig`, the
type of the ``reco.site-config`` records, checked by the same function.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache, cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, get_type_hints

from app.contract.topics import app_id_of, real_name
from app.core.arms import DEFAULT_ARMS
from app.core.sites import (
    EXPLORATION_RULES,
    FINITE,
    GAMMA_MAX,
    SiteBase,
    SiteConfig,
    arms_problem,
    site_problem,
)
from app.settings.kafka import (
    KAFKA_CONFIG_FILE_VAR,
    KafkaSecurity,
    check_kafka_security,
    is_kafka_security_property,
    kafka_security_from_env,
    kafka_var,
)
from app.settings.parsing import (
    BY_TYPE,
    SettingsError,
    check,
    parse_list,
    parse_pairs,
    parse_per_site,
)

__all__ = ["DEFAULT_ARMS", "DEFAULT_REWARDS", "EXPLORATION_RULES", "KAFKA_CONFIG_FILE_VAR",
           "BanditSettings", "JoinSettings", "KafkaSecurity", "KafkaSettings",
           "RankingSettings", "ServeSettings", "Settings", "SettingsError", "WorkerSettings",
           "is_kafka_security_property", "kafka_var"]

# Reward per reaction type (docs/reward-join.md: basket add 3, detail view 1, click 1).
DEFAULT_REWARDS: Mapping[str, float] = MappingProxyType(
    {"basket_add": 3.0, "detail_view": 1.0, "click": 1.0})
SITE_JOIN_KEYS = ("reward_window_s", "grace_s", *DEFAULT_REWARDS)
NO_SITES: Mapping[str, SiteConfig] = MappingProxyType({})


def setting(default: Any, var: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A field read from ``var``, parsed by ``parse`` or else by the field's type."""
    metadata = {"var": var, "parse": parse}
    if isinstance(default, Mapping):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _rewards(raw: str) -> Mapping[str, float]:
    """``basket_add:3,click:1`` (or ``basket_add=3``): types left out keep the default."""
    return MappingProxyType({**DEFAULT_REWARDS, **parse_pairs(raw, DEFAULT_REWARDS)})


def _site_arms(raw: str) -> Mapping[str, SiteConfig]:
    return parse_per_site(raw, lambda site, text: SiteConfig(site, arms=parse_list(text)))


def _site_exploration(raw: str) -> Mapping[str, SiteConfig]:
    def parse(site: str, text: str) -> SiteConfig:
        rule, sep, value = text.partition(":")
        if not sep:
            raise ValueError("expected rule:value, e.g. squarecb:2")
        return SiteConfig(site, exploration=(rule.strip(), BY_TYPE[float](value)))
    return parse_per_site(raw, parse)


def _site_join(raw: str) -> Mapping[str, SiteConfig]:
    def parse(site: str, text: str) -> SiteConfig:
        pairs = parse_pairs(text, SITE_JOIN_KEYS)
        return SiteConfig(site, reward_window_s=pairs.pop("reward_window_s", None),
                          grace_s=pairs.pop("grace_s", None), rewards=pairs)
    return parse_per_site(raw, parse)


class Section:
    """A settings section: its fields' variables, and reading them from the environment."""

    @classmethod
    def var(cls, name: str) -> str:
        """The variable of the field ``name``."""
        return _variables(cls)[name]

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The section's values set in ``environ``, parsed; unset ones are left out."""
        hints, values = get_type_hints(cls), {}
        for f in fields(cls):  # type: ignore[arg-type]
            var, raw = f.metadata.get("var"), None
            if var is not None:
                raw = environ.get(var)
            if not raw:
                continue
            parse = f.metadata["parse"] or BY_TYPE[hints[f.name]]
            try:
                values[f.name] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{var}={raw!r}: {exc}") from None
        return values

    def _positive(self, *names: str, finite: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            check(value > 0, self.var(name), "must be a positive number")
            check(not finite or value < FINITE, self.var(name), "must be finite")


def _variables(section: Any) -> Mapping[str, str]:
    return {f.name: f.metadata["var"] for f in fields(section) if f.metadata.get("var")}


@dataclass(frozen=True)
class KafkaSettings(Section):
    bootstrap_servers: str = setting("127.0.0.1:9092", "RECOLOOP_BOOTSTRAP_SERVERS")
    topic_prefix: str = setting("", "RECOLOOP_TOPIC_PREFIX")
    partitions: int = setting(8, "RECOLOOP_PARTITIONS")
    # How long the group waits for a stopped worker (a static member: it does not leave)
    # before the others take its partitions; a worker back sooner gets them back with no
    # rebalance. Longer than a restart takes (a pod being rescheduled: 45 s or more), shorter
    # than the pause a worker that never comes back may cause.
    group_session_timeout_s: float = setting(10.0, "RECOLOOP_GROUP_SESSION_TIMEOUT_S")
    # librdkafka security properties of every Kafka client (TLS, SASL), by property name;
    # from RECOLOOP_KAFKA_<PROPERTY> variables and RECOLOOP_KAFKA_CONFIG_FILE.
    security: Mapping[str, str] = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        # Always the read-only masking mapping, however the caller built it.
        object.__setattr__(self, "security", KafkaSecurity(self.security))
        check_kafka_security(self.security)
        check(bool(self.bootstrap_servers.strip()), self.var("bootstrap_servers"),
              "must not be empty")
        check(self.partitions >= 1, self.var("partitions"), "must be at least 1")
        # The broker's default group.min/max.session.timeout.ms bound it.
        check(6.0 <= self.group_session_timeout_s <= 1800.0,
              self.var("group_session_timeout_s"), "must be within 6..1800 (seconds)")


@dataclass(frozen=True)
class JoinSettings(Section):
    # A reaction counts when served.ts <= reaction.ts <= served.ts + reward_window_s; a
    # decision closes when stream time passes served.ts + reward_window_s + grace_s.
    reward_window_s: float = setting(20.0, "RECOLOOP_REWARD_WINDOW_S")
    grace_s: float = setting(5.0, "RECOLOOP_GRACE_S")
    rewards: Mapping[str, float] = setting(DEFAULT_REWARDS, "RECOLOOP_REWARDS", _rewards)
    # Per-site window, grace and rewards: "shop-a=reward_window_s:30,basket_add:5;shop-b=click:0".
    site_join: Mapping[str, SiteConfig] = setting(NO_SITES, "RECOLOOP_SITE_JOIN", _site_join)
    # A partition with no input for this long advances its stream time with the wall clock.
    idle_close_s: float = setting(5.0, "RECOLOOP_IDLE_CLOSE_S")
    # How often the worker ticks each partition so idle partitions still close decisions.
    tick_interval_s: float = setting(1.0, "RECOLOOP_TICK_INTERVAL_S")
    session_timeout_s: float = setting(1800.0, "RECOLOOP_SESSION_TIMEOUT_S")
    # Event times may be this far ahead of their message's Kafka timestamp; later ones are
    # dead-lettered (a wrong clock must not close every open display at once).
    max_clock_skew_s: float = setting(300.0, "RECOLOOP_MAX_CLOCK_SKEW_S")

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewards", MappingProxyType(dict(self.rewards)))
        object.__setattr__(self, "site_join", MappingProxyType(dict(self.site_join)))
        self._positive("reward_window_s", "grace_s", "session_timeout_s", finite=True)
        self._positive("idle_close_s", "tick_interval_s", "max_clock_skew_s")
        check(set(self.rewards) == set(DEFAULT_REWARDS), self.var("rewards"),
              f"must give the types {sorted(DEFAULT_REWARDS)}")
        check(all(0 <= r < float("inf") for r in self.rewards.values())
              and max(self.rewards.values()) > 0, self.var("rewards"),
              "must be finite, not negative, and some reward above 0")
        check(self.session_timeout_s > self.reward_window_s + self.grace_s,
              self.var("session_timeout_s"), "must be longer than the reward window plus grace")

    @property
    def max_reward(self) -> float:
        return max(self.rewards.values())


@dataclass(frozen=True)
class BanditSettings(Section):
    arms: tuple[str, ...] = setting(DEFAULT_ARMS, "RECOLOOP_ARMS", parse_list)
    # Per-site arm sets: "shop-a=category1,bestsellers;shop-b=trending,similar".
    site_arms: Mapping[str, SiteConfig] = setting(NO_SITES, "RECOLOOP_SITE_ARMS", _site_arms)
    # How the bandit explores: "epsilon" (a fixed share, RECOLOOP_EXPLORATION) or "squarecb"
    # (shrinking with evidence; RECOLOOP_SQUARECB_GAMMA scales how fast).
    exploration_rule: str = setting("squarecb", "RECOLOOP_EXPLORATION_RULE")
    exploration: float = setting(0.1, "RECOLOOP_EXPLORATION")
    squarecb_gamma: float = setting(10.0, "RECOLOOP_SQUARECB_GAMMA")
    # Per-site exploration: "shop-a=squarecb:2;shop-b=epsilon:0.05" (rule:parameter).
    site_exploration: Mapping[str, SiteConfig] = setting(
        NO_SITES, "RECOLOOP_SITE_EXPLORATION", _site_exploration)
    seed: int = setting(42, "RECOLOOP_SEED")

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "site_arms", MappingProxyType(dict(self.site_arms)))
        object.__setattr__(self, "site_exploration",
                           MappingProxyType(dict(self.site_exploration)))
        problem = arms_problem(self.arms, "arms")
        check(problem is None, self.var("arms"), str(problem))
        check(0.0 <= self.exploration <= 1.0, self.var("exploration"), "must be within 0..1")
        check(self.exploration_rule in EXPLORATION_RULES, self.var("exploration_rule"),
              f"must be one of {EXPLORATION_RULES}")
        check(0.0 < self.squarecb_gamma < GAMMA_MAX, self.var("squarecb_gamma"),
              "must be a positive number")


@dataclass(frozen=True)
class RankingSettings(Section):
    ranking_size: int = setting(10, "RECOLOOP_RANKING_SIZE")
    # Default rankings per site and context segment are republished at least this often.
    default_ranking_interval_s: float = setting(10.0, "RECOLOOP_DEFAULT_RANKING_INTERVAL_S")
    # A site (or one of its context segments) without traffic for this long gets no default
    # rankings, and its bandit leaves memory (it comes back from disk when the site returns).
    site_idle_s: float = setting(3600.0, "RECOLOOP_SITE_IDLE_S")

    def __post_init__(self) -> None:
        check(1 <= self.ranking_size <= 100, self.var("ranking_size"),
              "must be from 1 to 100 (a ranking record stays small)")
        self._positive("default_ranking_interval_s", "site_idle_s")


@dataclass(frozen=True)
class WorkerSettings(Section):
    data_dir: Path = setting(Path("var"), "RECOLOOP_DATA_DIR")
    metrics_port: int = setting(9464, "RECOLOOP_METRICS_PORT")
    web_port: int = setting(6066, "RECOLOOP_WEB_PORT")
    # Address the worker's HTTP servers bind to; 0.0.0.0 to be scraped from other hosts.
    bind_host: str = setting("127.0.0.1", "RECOLOOP_BIND_HOST")
    # Names this worker to Kafka (its transactional id and static group membership): a
    # restarted worker with the same id takes over at once. Empty: host name + data dir.
    worker_id: str = setting("", "RECOLOOP_WORKER_ID")
    log_level: str = setting("info", "RECOLOOP_LOG_LEVEL")

    def __post_init__(self) -> None:
        for name in ("metrics_port", "web_port"):
            check(1 <= getattr(self, name) <= 65535, self.var(name),
                  "must be a port number 1..65535")
        check(self.metrics_port != self.web_port, self.var("metrics_port"),
              f"must differ from {self.var('web_port')}")

    @property
    def instance_id(self) -> str:
        """``worker_id``, or one derived from the host and the data directory: stable across
        restarts, and different for two workers on one host (they need two data dirs)."""
        if self.worker_id:
            return self.worker_id
        where = zlib.crc32(str(Path(self.data_dir).resolve()).encode())
        return f"{socket.gethostname()}-{where:08x}"


@dataclass(frozen=True)
class ServeSettings(Section):
    """The rank service (recoloop serve): its port, the sessions whose latest ranking a
    replica holds (past it, the least recently updated are forgotten), each API key's request
    rate (bursts of one second's worth; 429 past it), the time to read a request's head and
    then its body (408 past it, docs/serve.md), and /docs and /redoc (pages that load their
    scripts from a CDN, off unless asked for)."""

    port: int = setting(8080, "RECOLOOP_SERVE_PORT")
    max_sessions: int = setting(100_000, "RECOLOOP_SERVE_MAX_SESSIONS")
    key_rate_per_s: float = setting(1_000.0, "RECOLOOP_SERVE_KEY_RATE_PER_S")
    head_timeout_s: float = setting(10.0, "RECOLOOP_SERVE_HEAD_TIMEOUT_S")
    body_timeout_s: float = setting(30.0, "RECOLOOP_SERVE_BODY_TIMEOUT_S")
    docs: bool = setting(False, "RECOLOOP_SERVE_DOCS")

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, self.var("port"), "must be a port number 1..65535")
        check(self.max_sessions >= 1, self.var("max_sessions"), "must be at least 1")
        check(self.key_rate_per_s >= 1, self.var("key_rate_per_s"),
              "must be at least 1 (requests per second)")
        self._positive("head_timeout_s", "body_timeout_s")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    join: JoinSettings = field(default_factory=JoinSettings)
    bandit: BanditSettings = field(default_factory=BanditSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)

    SECTIONS: ClassVar[tuple[str, ...]] = ("kafka", "join", "bandit", "ranking", "worker",
                                           "serve")

    def __post_init__(self) -> None:
        # Each per-site value, laid over the process-wide ones, passes the site-config check.
        base = dataclasses.replace(self.site_base, sites=NO_SITES)
        for section, name in (("bandit", "site_arms"), ("bandit", "site_exploration"),
                              ("join", "site_join")):
            part = getattr(self, section)
            for site, config in getattr(part, name).items():
                problem = site_problem(config, base)
                check(problem is None, part.var(name), f"site {site!r}: {problem}")

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings from values named as their variables are, without ``RECOLOOP_``:
        ``Settings.of(bootstrap_servers=..., serve_port=...)``; the rest keep defaults."""
        return cls().replace(**values)

    def replace(self, **values: Any) -> Settings:
        """These settings with values (named as :meth:`of` names them) replaced."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name not in _flat_names():
                raise TypeError(f"no setting named {name!r}")
            section, attr = _flat_names()[name]
            changes.setdefault(section, {})[attr] = value
        return dataclasses.replace(self, **{
            section: dataclasses.replace(getattr(self, section), **attrs)
            for section, attrs in changes.items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``RECOLOOP_*`` variables; unset ones keep defaults."""
        environ = os.environ if environ is None else environ
        security = kafka_security_from_env(environ)
        sections: dict[str, Any] = {
            name: kind(**kind.read(environ)) for name, kind in _section_types().items()
            if name != "kafka"}
        kafka = KafkaSettings(**KafkaSettings.read(environ), security=security)
        return cls(kafka=kafka, **sections)

    @staticmethod
    def variables() -> tuple[str, ...]:
        """Every variable a section field is read from (security properties aside)."""
        return tuple(var for section in _section_types().values()
                     for var in _variables(section).values())

    def kafka_config(self) -> dict[str, str]:
        """The librdkafka properties every Kafka client recoloop makes starts from: the
        bootstrap servers and the security properties. Each client adds its own on top."""
        return {"bootstrap.servers": self.kafka.bootstrap_servers, **self.kafka.security}

    def topic(self, logical_name: str) -> str:
        """The real topic name of a contract topic, with the configured prefix
        (:mod:`app.contract.topics` names every topic)."""
        return real_name(self.kafka.topic_prefix, logical_name)

    @property
    def app_id(self) -> str:
        """Consumer group and internal-topic namespace; the prefix keeps deployments apart."""
        return app_id_of(self.kafka.topic_prefix)

    @property
    def instance_id(self) -> str:
        return self.worker.instance_id

    @property
    def sites(self) -> Mapping[str, SiteConfig]:
        """Each site's environment config: its RECOLOOP_SITE_* values in one SiteConfig."""
        tables = (self.bandit.site_arms, self.bandit.site_exploration, self.join.site_join)
        merged: dict[str, SiteConfig] = {}
        for table in tables:
            for site, config in table.items():
                merged[site] = config.over(merged.get(site))
        return MappingProxyType(merged)

    @cached_property
    def site_base(self) -> SiteBase:
        """What every site starts from (:class:`app.core.sites.SiteSettings` layers on it)."""
        bandit, join = self.bandit, self.join
        return SiteBase(bandit.arms, (bandit.exploration_rule, bandit.exploration,
                                      bandit.squarecb_gamma),
                        (join.reward_window_s, join.grace_s, join.rewards),
                        join.session_timeout_s, self.sites)


@cache
def _section_types() -> Mapping[str, type[Section]]:
    hints = get_type_hints(Settings)
    return {name: hints[name] for name in Settings.SECTIONS}


@cache
def _flat_names() -> Mapping[str, tuple[str, str]]:
    """``bootstrap_servers`` -> ``("kafka", "bootstrap_servers")``, ``serve_port`` ->
    ``("serve", "port")``, ``kafka_security`` -> ``("kafka", "security")``."""
    names = {"kafka_security": ("kafka", "security")}
    for section, kind in _section_types().items():
        for attr, var in _variables(kind).items():
            names[var.removeprefix("RECOLOOP_").lower()] = (section, attr)
    return names
