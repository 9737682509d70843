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

from app.contract.topics import app_id_of, real_name
from app.core.arms import DEFAULT_ARMS, KNOWN_ARMS

# The bandit's exploration rules (app.core.policy implements them; not imported here, as it
# would load River into every command; tests/test_settings.py checks they agree).
EXPLORATION_RULES = ("epsilon", "squarecb")
# Reward per reaction type (docs/reward-join.md: basket add 3, detail view 1, click 1).
DEFAULT_REWARDS = {"basket_add": 3.0, "detail_view": 1.0, "click": 1.0}


class SettingsError(ValueError):
    """A ``RECOLOOP_*`` variable has a value recoloop cannot use; the message names it."""


# librdkafka properties users may set (RECOLOOP_KAFKA_<PROPERTY> or RECOLOOP_KAFKA_CONFIG_FILE):
# security only. recoloop sets every other client property itself, and exactly-once depends
# on some of them (transactional.id, isolation.level, enable.auto.commit).
KAFKA_SECURITY_PREFIXES = ("ssl.", "sasl.", "https.", "enable.ssl.", "enable.sasl.")
_ONLY_SECURITY = ("not a Kafka security property; only security.protocol, ssl.*, sasl.*, "
                  "https.*, enable.ssl.* and enable.sasl.* can be set")
KAFKA_CONFIG_FILE_VAR = "RECOLOOP_KAFKA_CONFIG_FILE"
# RECOLOOP_KAFKA_* variables that are not client properties (LIB_DIR: app.dev.local_kafka).
_NOT_KAFKA_PROPERTIES = frozenset({KAFKA_CONFIG_FILE_VAR, "RECOLOOP_KAFKA_LIB_DIR"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Those librdkafka has built in (confluent-kafka's wheels have no GSSAPI, i.e. Kerberos).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# Properties whose values repr() shows, besides paths (*.location) and switches (enable.*);
# every other value (passwords, keys, tokens, whatever librdkafka adds later) is masked.
_SHOWN_KAFKA_PROPERTIES = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
    "sasl.oauthbearer.method", "sasl.oauthbearer.client.id", "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url", "ssl.endpoint.identification.algorithm"})


def is_kafka_security_property(name: str) -> bool:
    return name == "security.protocol" or name.startswith(KAFKA_SECURITY_PREFIXES)


def kafka_var(name: str) -> str:
    """The variable of a librdkafka property, as messages name it: ``sasl.username`` is
    ``RECOLOOP_KAFKA_SASL_USERNAME (sasl.username)`` (it may come from the config file)."""
    return f"RECOLOOP_KAFKA_{name.upper().replace('.', '_')} ({name})"


class KafkaSecurity(dict[str, str]):
    """The Kafka security properties; shown with secret values masked."""

    def __repr__(self) -> str:
        return repr({name: value if _shown(name) else "***" for name, value in self.items()})


def _shown(name: str) -> bool:
    return (name in _SHOWN_KAFKA_PROPERTIES or name.endswith(".location")
            or name.startswith("enable."))


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
    # How the bandit explores: "epsilon" (a fixed share, RECOLOOP_EXPLORATION) or "squarecb"
    # (shrinking with evidence; RECOLOOP_SQUARECB_GAMMA scales how fast).
    exploration_rule: str = "squarecb"
    squarecb_gamma: float = 10.0
    # Per-site exploration: "shop-a=squarecb:2;shop-b=epsilon:0.05" (rule:parameter).
    site_exploration: Mapping[str, tuple[str, float]] = field(default_factory=dict)
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
    # How long the group waits for a stopped worker (a static member: it does not leave)
    # before the others take its partitions; a worker back sooner gets them back with no
    # rebalance. Longer than a restart takes (a pod being rescheduled: 45 s or more), shorter
    # than the pause a worker that never comes back may cause.
    group_session_timeout_s: float = 10.0
    log_level: str = "info"
    rewards: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARDS))
    # Per-site join overrides: "shop-a=reward_window_s:30,grace_s:2,basket_add:5;shop-b=click:0"
    site_join: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # librdkafka security properties of every Kafka client (TLS, SASL), by property name;
    # from RECOLOOP_KAFKA_<PROPERTY> variables and RECOLOOP_KAFKA_CONFIG_FILE.
    kafka_security: Mapping[str, str] = field(default_factory=KafkaSecurity)
    # The rank service (recoloop serve): its port, the sessions whose latest ranking a
    # replica holds (past it, the least recently updated are forgotten), and each API key's
    # request rate (bursts of one second's worth; 429 past it).
    serve_port: int = 8080
    serve_max_sessions: int = 100_000
    serve_key_rate_per_s: float = 1_000.0
    # Time to read a request's head (from its first byte, or from the connection) and then
    # its body; past it the request gets 408 and its connection is closed (docs/serve.md).
    serve_head_timeout_s: float = 10.0
    serve_body_timeout_s: float = 30.0
    # /docs and /redoc: pages that load their scripts from a CDN, off unless asked for.
    serve_docs: bool = False

    def __post_init__(self) -> None:
        # Always the masking mapping, however the caller built it.
        object.__setattr__(self, "kafka_security", KafkaSecurity(self.kafka_security))
        _check_kafka_security(self.kafka_security)
        _check(self.partitions >= 1, "RECOLOOP_PARTITIONS", "must be at least 1")
        _check(self.serve_max_sessions >= 1, "RECOLOOP_SERVE_MAX_SESSIONS", "must be at least 1")
        _check(self.serve_key_rate_per_s >= 1, "RECOLOOP_SERVE_KEY_RATE_PER_S",
               "must be at least 1 (requests per second)")
        for name in ("metrics_port", "web_port", "serve_port"):
            port = getattr(self, name)
            _check(1 <= port <= 65535, _env_name(name), "must be a port number 1..65535")
        for name in ("reward_window_s", "grace_s", "idle_close_s", "tick_interval_s",
                     "session_timeout_s", "default_ranking_interval_s", "max_clock_skew_s",
                     "site_idle_s", "serve_head_timeout_s", "serve_body_timeout_s"):
            _check(getattr(self, name) > 0, _env_name(name), "must be a positive number")
        # The broker's default group.min/max.session.timeout.ms bound it.
        _check(6.0 <= self.group_session_timeout_s <= 1800.0, "RECOLOOP_GROUP_SESSION_TIMEOUT_S",
               "must be within 6..1800 (seconds)")
        _check(0.0 <= self.exploration <= 1.0, "RECOLOOP_EXPLORATION", "must be within 0..1")
        _check(self.exploration_rule in EXPLORATION_RULES, "RECOLOOP_EXPLORATION_RULE",
               f"must be one of {EXPLORATION_RULES}")
        _check(0.0 < self.squarecb_gamma < 1e6, "RECOLOOP_SQUARECB_GAMMA",
               "must be a positive number")
        for site, (rule, value) in self.site_exploration.items():
            _check(rule in EXPLORATION_RULES and (0.0 <= value <= 1.0 if rule == "epsilon"
                                                  else 0.0 < value < 1e6),
                   "RECOLOOP_SITE_EXPLORATION", f"site {site!r}: expected epsilon:<0..1> or "
                   f"squarecb:<gamma above 0>, got {rule}:{value}")
        _check(bool(self.arms), "RECOLOOP_ARMS", "must name at least one arm")
        unknown = sorted(set(self.arms) - set(KNOWN_ARMS))
        _check(not unknown, "RECOLOOP_ARMS", f"unknown arms {unknown}; known: {KNOWN_ARMS}")
        for var, arm_sets in (("RECOLOOP_ARMS", [self.arms]),
                              ("RECOLOOP_SITE_ARMS", list(self.site_arms.values()))):
            _check(all(len(set(arms)) == len(arms) for arms in arm_sets), var,
                   "must not name an arm twice (propensities count each arm once)")
        for site, arms in self.site_arms.items():
            unknown = sorted(set(arms) - set(KNOWN_ARMS))
            _check(bool(arms) and not unknown, "RECOLOOP_SITE_ARMS",
                   f"site {site!r}: needs known arms, got {list(arms)}; known: {KNOWN_ARMS}")
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

    def kafka_config(self) -> dict[str, str]:
        """The librdkafka properties every Kafka client recoloop makes starts from: the
        bootstrap servers and the security properties. Each client adds its own on top."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_security}

    def topic(self, logical_name: str) -> str:
        """The real topic name of a contract topic, with the configured prefix
        (:mod:`app.contract.topics` names every topic)."""
        return real_name(self.topic_prefix, logical_name)

    @property
    def app_id(self) -> str:
        """Consumer group and internal-topic namespace; the prefix keeps deployments apart."""
        return app_id_of(self.topic_prefix)

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

    def exploration_for(self, site_id: str) -> tuple[str, float, float]:
        """``(rule, epsilon, squarecb_gamma)`` of a site, with its override applied."""
        override = self.site_exploration.get(site_id)
        if override is None:
            return self.exploration_rule, self.exploration, self.squarecb_gamma
        rule, value = override
        if rule == "epsilon":
            return rule, value, self.squarecb_gamma
        return rule, self.exploration, value

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
        values: dict[str, Any] = {"kafka_security": _kafka_security_from_env(environ)}
        for f in fields(cls):
            if f.name == "kafka_security":
                continue
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


def _check_kafka_security(props: Mapping[str, str]) -> None:
    """Refuse what librdkafka would accept and then ignore, refuse only when connecting, or
    wait on forever. Messages never show a secret value."""
    for name in props:
        _check(is_kafka_security_property(name), kafka_var(name), f"is {_ONLY_SECURITY}")
    protocol = props.get("security.protocol", "plaintext").upper()
    _check(protocol in SECURITY_PROTOCOLS, kafka_var("security.protocol"),
           f"must be one of {list(SECURITY_PROTOCOLS)}")
    for name, value in props.items():
        if name.startswith("enable."):
            _check(value.lower() in ("true", "false"), kafka_var(name), "must be true or false")
        if name.endswith(".location") and value != "probe":  # probe: the system's CA store
            _check(Path(value).exists(), kafka_var(name), f"names no file: {value}")
    # Set for a protocol that does not use them, they would be silently ignored.
    for kind, prefixes, fits, protocols in (
            ("SASL", ("sasl.", "enable.sasl."), protocol.startswith("SASL_"),
             "SASL_SSL or SASL_PLAINTEXT"),
            ("TLS", ("ssl.", "enable.ssl.", "https."), protocol.endswith("SSL"),
             "SSL or SASL_SSL")):
        unused = [name for name in props if name.startswith(prefixes)]
        if unused and not fits:
            raise SettingsError(f"{kafka_var(unused[0])} is a {kind} property: it needs "
                                f"RECOLOOP_KAFKA_SECURITY_PROTOCOL {protocols}, not {protocol}")
    if not protocol.startswith("SASL_"):
        return
    _check(not {"sasl.mechanism", "sasl.mechanisms"} <= set(props), kafka_var("sasl.mechanism"),
           "and sasl.mechanisms are the same property: set one")
    mechanism = props.get("sasl.mechanism", props.get("sasl.mechanisms"))
    _check(mechanism in SASL_MECHANISMS, kafka_var("sasl.mechanism"),
           f"must be one of {list(SASL_MECHANISMS)} with {protocol}"
           + (f", not {mechanism!r}" if mechanism else ""))
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name in ("sasl.username", "sasl.password"):
            _check(bool(props.get(name)), kafka_var(name), f"must be set for {mechanism}")
    if mechanism == "OAUTHBEARER":
        # recoloop registers no token callback: librdkafka fetches tokens itself (OIDC) or
        # makes unsecured ones; otherwise it would wait for a token forever.
        oidc = props.get("sasl.oauthbearer.method", "default").lower() == "oidc"
        unsecured = props.get("enable.sasl.oauthbearer.unsecure.jwt", "false").lower() == "true"
        _check(oidc or unsecured, kafka_var("sasl.oauthbearer.method"),
               "must be oidc for OAUTHBEARER, unless RECOLOOP_KAFKA_ENABLE_SASL_OAUTHBEARER_"
               "UNSECURE_JWT is true (unsecured tokens, for development only)")


def _kafka_security_from_env(environ: Mapping[str, str]) -> KafkaSecurity:
    """RECOLOOP_KAFKA_CONFIG_FILE's properties, overridden by RECOLOOP_KAFKA_<PROPERTY>
    variables (``RECOLOOP_KAFKA_SASL_USERNAME`` sets ``sasl.username``)."""
    props = KafkaSecurity()
    path = environ.get(KAFKA_CONFIG_FILE_VAR)
    if path:
        props.update(_read_kafka_config_file(Path(path)))
    for var, value in environ.items():
        if var.startswith("RECOLOOP_KAFKA_") and var not in _NOT_KAFKA_PROPERTIES and value:
            name = var.removeprefix("RECOLOOP_KAFKA_").lower().replace("_", ".")
            _check(is_kafka_security_property(name), var, f"names {name}, {_ONLY_SECURITY}")
            props[name] = value
    return props


def _read_kafka_config_file(path: Path) -> dict[str, str]:
    """A librdkafka properties file: ``name=value`` lines, ``#`` comments."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{KAFKA_CONFIG_FILE_VAR}: cannot read {path}: "
                            f"{exc.strerror}") from None
    props = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = (part.strip() for part in line.partition("="))
        where = f"{KAFKA_CONFIG_FILE_VAR} ({path}, line {number})"
        _check(bool(sep), where, "is not a name=value line")  # not quoted: it may be a secret
        _check(is_kafka_security_property(name), where, f"sets {name}, {_ONLY_SECURITY}")
        props[name] = value
    return props


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


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected true or false")
    return value in ("true", "1", "yes")


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


def _parse_site_exploration(raw: str) -> dict[str, tuple[str, float]]:
    def parse(site: str, text: str) -> tuple[str, float]:
        rule, sep, value = text.partition(":")
        if not sep:
            raise ValueError(f"site {site!r}: expected rule:value, e.g. squarecb:2")
        return rule.strip(), _parse_float(value)
    return _per_site(raw, parse)


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
    "bool": _parse_bool,
    "str": str,
    "Path": Path,
}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "arms": _parse_arms,
    "rewards": _parse_rewards,
    "site_arms": _parse_site_arms,
    "site_join": _parse_site_join,
    "site_exploration": _parse_site_exploration,
}
