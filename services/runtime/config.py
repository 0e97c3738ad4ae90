"""Configuration from environment variables, with defaults that run on one machine.

Each setting is declared once, as a field of a settings dataclass: `setting(variable, default,
*constraints)`. `read_settings` reads every such field through `Env`, which records each name, so
that the deployment tests can compare what the manifests set with what the services read. A value
that breaks a constraint is a `ConfigError` of one line naming the variable; checks across settings
(a margin below a lifetime) are written next to the loader that needs them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar, cast, get_type_hints, overload

from services.runtime.telemetry import EXPORTERS

DEFAULT_PORTS = {"wallet": 50051, "gifting": 50052, "payout": 50053}

T = TypeVar("T")
S = TypeVar("S")


class ConfigError(ValueError):
    """A setting is missing or malformed."""


class Env:
    """Reads settings from a mapping (os.environ by default) and remembers every name asked for."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.names: set[str] = set()

    def text(self, name: str, default: str) -> str:
        self.names.add(name)
        return self._environ.get(name, default)

    def integer(self, name: str, default: int) -> int:
        raw = self.text(name, str(default))
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name, "true" if default else "false").strip().lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")


# --- declaring settings ---


@dataclass(frozen=True)
class Constraint:
    """What a setting's value must be: `holds(value)`, else the error `<variable> <message>, got <value>`."""

    holds: Callable[[Any], bool]
    message: str
    shows_value: bool = True  # False: the message says it all (must not be empty)


positive = Constraint(lambda v: v > 0, "must be positive")
not_negative = Constraint(lambda v: v >= 0, "must not be negative")
not_empty = Constraint(bool, "must not be empty", shows_value=False)


def between(low: int, high: int, what: str = "") -> Constraint:
    return Constraint(lambda v: low <= v <= high, f"must be from {low} to {high}{what}")


def one_of(choices: Collection[str], *, or_empty: bool = False) -> Constraint:
    unset = " (or unset)" if or_empty else ""
    return Constraint(lambda v: v in choices or (or_empty and v == ""), f"must be one of {', '.join(choices)}{unset}")


@dataclass(frozen=True)
class Derived(Generic[T]):
    """A default that depends on the process (its name: `wallet`, `reconciler`) and the settings read
    before it (`dev_mode`), e.g. the service's own port."""

    of: Callable[[str, Mapping[str, Any]], T]


_SETTING = "giftcoin.setting"  # the key of a setting field's metadata

# How a setting's text becomes its value: (env, variable, default) -> value, read through `env`.
Reader = Callable[[Env, str, Any], Any]
_READERS: dict[object, Reader] = {int: Env.integer, bool: Env.flag, str: Env.text}


@dataclass(frozen=True)
class Setting:
    variable: str  # `{NAME}`: the process's name in capitals (GIFTCOIN_{NAME}_PORT)
    default: Any  # the value, or a Derived
    constraints: tuple[Constraint, ...]
    read: Reader | None  # None: by the field's type (int, bool or str)


@overload
def setting(variable: str, default: Derived[T], *constraints: Constraint, read: Reader | None = None) -> T: ...
@overload
def setting(variable: str, default: T, *constraints: Constraint, read: Reader | None = None) -> T: ...
def setting(variable: str, default: Any, *constraints: Constraint, read: Reader | None = None) -> Any:
    """A field of a settings dataclass read from `variable` (default `default`), which must meet
    `constraints`. A Derived default has no default as a field: `read_settings` computes it."""
    metadata = {_SETTING: Setting(variable, default, constraints, read)}
    if isinstance(default, Derived):
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def read_settings(kind: type[S], env: Env, name: str, **given: Any) -> S:
    """A `kind` from the environment: each `setting` field read through `env`, its constraints checked,
    in field order; a field that is itself a settings dataclass loaded the same way (given the fields
    it shares by name with those read before it: dev_mode); `given` fields are not read."""
    values: dict[str, Any] = dict(given)
    types = get_type_hints(kind)
    for f in fields(cast(Any, kind)):
        if f.name in given:
            continue
        spec: Setting | None = f.metadata.get(_SETTING)
        if spec is not None:
            values[f.name] = _read(spec, types[f.name], env, name, values)
        elif _is_settings(types[f.name]):
            nested = types[f.name]
            shared = {g.name: values[g.name] for g in fields(nested) if g.name in values}
            values[f.name] = read_settings(nested, env, name, **shared)
    return kind(**values)


def read_setting(kind: type[Any], field_name: str, env: Env, name: str = "") -> Any:
    """One setting of `kind` alone, read and checked as `read_settings` reads it."""
    (f,) = [f for f in fields(kind) if f.name == field_name]
    return _read(f.metadata[_SETTING], get_type_hints(kind)[field_name], env, name, {})


def _read(spec: Setting, type_: object, env: Env, name: str, before: Mapping[str, Any]) -> Any:
    variable = spec.variable.replace("{NAME}", name.upper())
    default = spec.default.of(name, before) if isinstance(spec.default, Derived) else spec.default
    read = spec.read or _READERS.get(type_)
    if read is None:
        raise TypeError(f"{variable}: a setting of type {type_} needs read=")
    value = read(env, variable, default)
    for constraint in spec.constraints:
        if not constraint.holds(value):
            got = f", got {value!r}" if constraint.shows_value else ""
            raise ConfigError(f"{variable} {constraint.message}{got}")
    return value


def _is_settings(type_: object) -> bool:
    return dataclasses.is_dataclass(type_) and any(_SETTING in f.metadata for f in fields(cast(Any, type_)))


# --- what every process reads ---


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """mTLS material; all three set means the server and its clients use mTLS."""

    cert_file: str = setting("GIFTCOIN_TLS_CERT_FILE", "")
    key_file: str = setting("GIFTCOIN_TLS_KEY_FILE", "")
    ca_file: str = setting("GIFTCOIN_TLS_CA_FILE", "")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file and self.ca_file)


@dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    """How bearer tokens are verified (runtime.auth.TokenVerifier) and, for a service that calls others,
    signed. `keys_path` empty: dev mode's derived keys."""

    dev_mode: bool = False
    # A JWKS file, or a directory of them: public keys only.
    keys_path: str = setting("GIFTCOIN_JWT_KEYS", "")
    issuer: str = setting("GIFTCOIN_JWT_ISSUER", "giftcoin", not_empty)
    # When set, every token must name it in `aud`.
    audience: str = setting("GIFTCOIN_JWT_AUDIENCE", "")
    # Clock skew allowed on iat, nbf and exp.
    leeway_seconds: int = setting("GIFTCOIN_JWT_LEEWAY_SECONDS", 30, between(0, 300))
    # The longest exp - iat.
    max_lifetime_seconds: int = setting("GIFTCOIN_JWT_MAX_LIFETIME_SECONDS", 3600, between(1, 86_400))
    # A private JWK: this process's own key, for the tokens it sends.
    signing_key_file: str = setting("GIFTCOIN_JWT_SIGNING_KEY_FILE", "")


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    """How the server treats its clients' connections (README "Connections").

    Streams (live feeds) stay open for hours behind client-side round robin: clients may ping an idle
    connection every `min_client_ping_seconds` or more; the server pings every connection idle for
    `keepalive_time_seconds` and closes it when no answer comes within `keepalive_timeout_seconds`
    (a viewer that vanished without closing); a connection older than `max_connection_age_seconds`
    is asked to go away (its client reconnects, perhaps to another replica), the calls in flight on
    it having `max_connection_age_grace_seconds` to finish.
    """

    keepalive_time_seconds: int = setting("GIFTCOIN_KEEPALIVE_TIME_SECONDS", 30, positive)
    keepalive_timeout_seconds: int = setting("GIFTCOIN_KEEPALIVE_TIMEOUT_SECONDS", 10, positive)
    min_client_ping_seconds: int = setting("GIFTCOIN_MIN_CLIENT_PING_SECONDS", 5, positive)
    max_connection_age_seconds: int = setting("GIFTCOIN_MAX_CONNECTION_AGE_SECONDS", 1800, positive)
    max_connection_age_grace_seconds: int = setting("GIFTCOIN_MAX_CONNECTION_AGE_GRACE_SECONDS", 30, positive)


@dataclass(frozen=True, kw_only=True)
class ProcessSettings:
    """What every giftcoin process reads (each service, and the reconciler): dev mode, its identity
    and mTLS material, where its spans and logs go."""

    dev_mode: bool = setting("GIFTCOIN_DEV_MODE", False)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    trace_exporter: str = setting("GIFTCOIN_TRACE_EXPORTER", "none", one_of(EXPORTERS))
    trace_file: str = setting("GIFTCOIN_TRACE_FILE", Derived(lambda name, _: f".data/traces-{name}.jsonl"))
    log_level: str = setting("GIFTCOIN_LOG_LEVEL", "INFO")

    @property
    def traces_exported(self) -> bool:
        """Whether spans go anywhere (GIFTCOIN_TRACE_EXPORTER is not `none`)."""
        return self.trace_exporter != "none"


def check_credentials(settings: ProcessSettings, verifies_tokens: bool = True) -> None:
    """Outside dev mode mTLS is required, and the public keys too for a process that verifies tokens
    (a service; the reconciler only sends its own)."""
    if verifies_tokens and not settings.identity.keys_path and not settings.dev_mode:
        raise ConfigError(
            "GIFTCOIN_JWT_KEYS is required: a JWKS file or directory of the public keys that sign callers' "
            "tokens (or set GIFTCOIN_DEV_MODE=true locally)"
        )
    if not settings.dev_mode and not settings.tls.enabled:
        raise ConfigError(
            "mTLS is required outside dev mode: set GIFTCOIN_TLS_CERT_FILE, GIFTCOIN_TLS_KEY_FILE and "
            "GIFTCOIN_TLS_CA_FILE (or GIFTCOIN_DEV_MODE=true locally)"
        )


@dataclass(frozen=True, kw_only=True)
class ServiceSettings(ProcessSettings):
    """What every service reads; a service's own settings extend this (GIFTCOIN_<SERVICE>_*)."""

    service: str
    host: str = setting("GIFTCOIN_{NAME}_HOST", Derived(lambda _, read: "127.0.0.1" if read["dev_mode"] else "0.0.0.0"))
    port: int = setting("GIFTCOIN_{NAME}_PORT", Derived(lambda name, _: DEFAULT_PORTS[name]))
    database_url: str = setting("GIFTCOIN_{NAME}_DATABASE_URL", Derived(lambda name, _: f"sqlite:///.data/{name}.db"))
    idempotency_retention_seconds: int = setting("GIFTCOIN_IDEMPOTENCY_RETENTION_SECONDS", 24 * 3600)
    shutdown_grace_seconds: int = setting("GIFTCOIN_SHUTDOWN_GRACE_SECONDS", 10)
    # Connections to the service's database, and the threads that use them.
    database_pool_size: int = setting("GIFTCOIN_DATABASE_POOL_SIZE", 16)
    # A second, plaintext port serving only grpc.health.v1 (0 = none): the kubelet's native gRPC
    # probes cannot present a client certificate, so they cannot use the mTLS service port.
    health_port: int = setting("GIFTCOIN_HEALTH_PORT", 0)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    # The service's Prometheus endpoint, http://<host>:<port>/metrics (0 = none: metrics go with the spans).
    metrics_port: int = setting("GIFTCOIN_METRICS_PORT", 0)
    # The longest one export to the trace collector may take, and the last one at shutdown.
    telemetry_timeout_ms: int = setting("GIFTCOIN_TELEMETRY_TIMEOUT_MS", 2000)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


SS = TypeVar("SS", bound=ServiceSettings)


@overload
def load_service_settings(service: str, env: Env) -> ServiceSettings: ...
@overload
def load_service_settings(service: str, env: Env, kind: type[SS]) -> SS: ...
def load_service_settings(service: str, env: Env, kind: type[ServiceSettings] = ServiceSettings) -> ServiceSettings:
    """`kind` (ServiceSettings or a service's own) of `service`, with its credentials checked."""
    settings = read_settings(kind, env, service, service=service)
    check_credentials(settings)
    return settings
