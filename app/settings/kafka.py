"""Kafka security settings: the librdkafka security properties of every client, from
``RECOLOOP_KAFKA_<PROPERTY>`` variables and ``RECOLOOP_KAFKA_CONFIG_FILE``, checked so that
a wrong one stops start-up with a message naming its variable (never a secret's value)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from app.settings.parsing import SettingsError
from app.settings.parsing import check as _check

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


class KafkaSecurity(Mapping[str, str]):
    """The Kafka security properties, read-only; shown with secret values masked."""

    def __init__(self, props: Mapping[str, str] | None = None) -> None:
        self._props = dict(props or {})

    def __getitem__(self, name: str) -> str:
        return self._props[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._props)

    def __len__(self) -> int:
        return len(self._props)

    def __repr__(self) -> str:
        return repr({name: value if _shown(name) else "***" for name, value in self.items()})


def _shown(name: str) -> bool:
    return (name in _SHOWN_KAFKA_PROPERTIES or name.endswith(".location")
            or name.startswith("enable."))


def check_kafka_security(props: Mapping[str, str]) -> None:
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


def kafka_security_from_env(environ: Mapping[str, str]) -> KafkaSecurity:
    """RECOLOOP_KAFKA_CONFIG_FILE's properties, overridden by RECOLOOP_KAFKA_<PROPERTY>
    variables (``RECOLOOP_KAFKA_SASL_USERNAME`` sets ``sasl.username``)."""
    props: dict[str, str] = {}
    path = environ.get(KAFKA_CONFIG_FILE_VAR)
    if path:
        props.update(_read_kafka_config_file(Path(path)))
    for var, value in environ.items():
        if var.startswith("RECOLOOP_KAFKA_") and var not in _NOT_KAFKA_PROPERTIES and value:
            name = var.removeprefix("RECOLOOP_KAFKA_").lower().replace("_", ".")
            _check(is_kafka_security_property(name), var, f"names {name}, {_ONLY_SECURITY}")
            props[name] = value
    return KafkaSecurity(props)


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
