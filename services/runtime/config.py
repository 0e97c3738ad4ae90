"""Configuration from environment variables, with defaults that run on one machine.

Every variable a service reads goes through `Env`, which records its name, so that the
deployment tests can compare what the manifests set with what the services read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime.telemetry import EXPORTERS

DEFAULT_PORTS = {"wallet": 50051, "gifting": 50052, "payout": 50053}


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


@dataclass(frozen=True)
class TlsSettings:
    """mTLS material; all three set means the server and its clients use mTLS."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file and self.ca_file)


@dataclass(frozen=True)
class IdentitySettings:
    """How bearer tokens are verified (runtime.auth.TokenVerifier) and, for a service that calls others,
    signed. `keys_path` empty: dev mode's derived keys."""

    dev_mode: bool = False
    keys_path: str = ""  # a JWKS file, or a directory of them: public keys only
    issuer: str = "giftcoin"
    audience: str = ""  # when set, every token must name it in `aud`
    leeway_seconds: int = 30  # clock skew allowed on iat, nbf and exp
    max_lifetime_seconds: int = 3600  # exp - iat
    signing_key_file: str = ""  # a private JWK: this service's own key, for the tokens it sends


def load_identity_settings(env: Env, dev_mode: bool, verifies_tokens: bool = True) -> IdentitySettings:
    identity = IdentitySettings(
        dev_mode=dev_mode,
        keys_path=env.text("GIFTCOIN_JWT_KEYS", ""),
        issuer=env.text("GIFTCOIN_JWT_ISSUER", "giftcoin"),
        audience=env.text("GIFTCOIN_JWT_AUDIENCE", ""),
        leeway_seconds=env.integer("GIFTCOIN_JWT_LEEWAY_SECONDS", 30),
        max_lifetime_seconds=env.integer("GIFTCOIN_JWT_MAX_LIFETIME_SECONDS", 3600),
        signing_key_file=env.text("GIFTCOIN_JWT_SIGNING_KEY_FILE", ""),
    )
    if verifies_tokens and not identity.keys_path and not dev_mode:
        raise ConfigError(
            "GIFTCOIN_JWT_KEYS is required: a JWKS file or directory of the public keys that sign callers' "
            "tokens (or set GIFTCOIN_DEV_MODE=true locally)"
        )
    if not identity.issuer:
        raise ConfigError("GIFTCOIN_JWT_ISSUER must not be empty")
    if not 0 <= identity.leeway_seconds <= 300:
        raise ConfigError("GIFTCOIN_JWT_LEEWAY_SECONDS must be from 0 to 300")
    if not 0 < identity.max_lifetime_seconds <= 86_400:
        raise ConfigError("GIFTCOIN_JWT_MAX_LIFETIME_SECONDS must be from 1 to 86400")
    return identity


@dataclass(frozen=True)
class ConnectionSettings:
    """How the server treats its clients' connections (README "Connections").

    Streams (live feeds) stay open for hours behind client-side round robin: clients may ping an idle
    connection every `min_client_ping_seconds` or more; the server pings every connection idle for
    `keepalive_time_seconds` and closes it when no answer comes within `keepalive_timeout_seconds`
    (a viewer that vanished without closing); a connection older than `max_connection_age_seconds`
    is asked to go away (its client reconnects, perhaps to another replica), the calls in flight on
    it having `max_connection_age_grace_seconds` to finish.
    """

    keepalive_time_seconds: int = 30
    keepalive_timeout_seconds: int = 10
    min_client_ping_seconds: int = 5
    max_connection_age_seconds: int = 1800
    max_connection_age_grace_seconds: int = 30


@dataclass(frozen=True)
class ServiceSettings:
    """What every service needs; a service's own settings extend this."""

    service: str
    host: str
    port: int
    database_url: str
    dev_mode: bool
    identity: IdentitySettings
    idempotency_retention_seconds: int
    shutdown_grace_seconds: int
    database_pool_size: int  # connections to the service's database, and the threads that use them
    trace_exporter: str  # none | console | file | otlp | memory
    trace_file: str
    log_level: str
    tls: TlsSettings = field(default_factory=TlsSettings)
    # A second, plaintext port serving only grpc.health.v1 (0 = none): the kubelet's native gRPC
    # probes cannot present a client certificate, so they cannot use the mTLS service port.
    health_port: int = 0
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    # The service's Prometheus endpoint, http://<host>:<port>/metrics (0 = none: metrics go with the spans).
    metrics_port: int = 0
    # The longest one export to the trace collector may take, and the last one at shutdown.
    telemetry_timeout_ms: int = 2000

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def traces_exported(self) -> bool:
        """Whether spans go anywhere (GIFTCOIN_TRACE_EXPORTER is not `none`)."""
        return self.trace_exporter != "none"


def _trace_exporter(env: Env) -> str:
    exporter = env.text("GIFTCOIN_TRACE_EXPORTER", "none")
    if exporter not in EXPORTERS:
        raise ConfigError(f"GIFTCOIN_TRACE_EXPORTER must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    return exporter


@dataclass(frozen=True)
class Credentials:
    """Who this process is and whom it trusts: dev mode, its token settings, its mTLS material (every
    service, and the reconciler)."""

    dev_mode: bool
    identity: IdentitySettings
    tls: TlsSettings


def load_credentials(env: Env, verifies_tokens: bool = True) -> Credentials:
    """GIFTCOIN_DEV_MODE, GIFTCOIN_JWT_* and GIFTCOIN_TLS_*; outside dev mode mTLS is required, and the
    public keys too for a process that verifies tokens (a service; the reconciler only sends its own)."""
    dev_mode = env.flag("GIFTCOIN_DEV_MODE", False)
    identity = load_identity_settings(env, dev_mode, verifies_tokens)
    tls = TlsSettings(
        cert_file=env.text("GIFTCOIN_TLS_CERT_FILE", ""),
        key_file=env.text("GIFTCOIN_TLS_KEY_FILE", ""),
        ca_file=env.text("GIFTCOIN_TLS_CA_FILE", ""),
    )
    if not dev_mode and not tls.enabled:
        raise ConfigError(
            "mTLS is required outside dev mode: set GIFTCOIN_TLS_CERT_FILE, GIFTCOIN_TLS_KEY_FILE and "
            "GIFTCOIN_TLS_CA_FILE (or GIFTCOIN_DEV_MODE=true locally)"
        )
    return Credentials(dev_mode, identity, tls)


def load_service_settings(service: str, env: Env) -> ServiceSettings:
    upper = service.upper()
    credentials = load_credentials(env)
    dev_mode, identity, tls = credentials.dev_mode, credentials.identity, credentials.tls
    return ServiceSettings(
        service=service,
        host=env.text(f"GIFTCOIN_{upper}_HOST", "127.0.0.1" if dev_mode else "0.0.0.0"),
        port=env.integer(f"GIFTCOIN_{upper}_PORT", DEFAULT_PORTS[service]),
        database_url=env.text(f"GIFTCOIN_{upper}_DATABASE_URL", f"sqlite:///.data/{service}.db"),
        dev_mode=dev_mode,
        identity=identity,
        idempotency_retention_seconds=env.integer("GIFTCOIN_IDEMPOTENCY_RETENTION_SECONDS", 24 * 3600),
        shutdown_grace_seconds=env.integer("GIFTCOIN_SHUTDOWN_GRACE_SECONDS", 10),
        database_pool_size=env.integer("GIFTCOIN_DATABASE_POOL_SIZE", 16),
        trace_exporter=_trace_exporter(env),
        trace_file=env.text("GIFTCOIN_TRACE_FILE", f".data/traces-{service}.jsonl"),
        log_level=env.text("GIFTCOIN_LOG_LEVEL", "INFO"),
        tls=tls,
        health_port=env.integer("GIFTCOIN_HEALTH_PORT", 0),
        connections=_connection_settings(env),
        metrics_port=env.integer("GIFTCOIN_METRICS_PORT", 0),
        telemetry_timeout_ms=env.integer("GIFTCOIN_TELEMETRY_TIMEOUT_MS", 2000),
    )


def _connection_settings(env: Env) -> ConnectionSettings:
    d = ConnectionSettings()
    settings = ConnectionSettings(
        keepalive_time_seconds=env.integer("GIFTCOIN_KEEPALIVE_TIME_SECONDS", d.keepalive_time_seconds),
        keepalive_timeout_seconds=env.integer("GIFTCOIN_KEEPALIVE_TIMEOUT_SECONDS", d.keepalive_timeout_seconds),
        min_client_ping_seconds=env.integer("GIFTCOIN_MIN_CLIENT_PING_SECONDS", d.min_client_ping_seconds),
        max_connection_age_seconds=env.integer("GIFTCOIN_MAX_CONNECTION_AGE_SECONDS", d.max_connection_age_seconds),
        max_connection_age_grace_seconds=env.integer(
            "GIFTCOIN_MAX_CONNECTION_AGE_GRACE_SECONDS", d.max_connection_age_grace_seconds
        ),
    )
    if min(vars(settings).values()) <= 0:
        raise ConfigError(
            "GIFTCOIN_KEEPALIVE_TIME_SECONDS, GIFTCOIN_KEEPALIVE_TIMEOUT_SECONDS, GIFTCOIN_MIN_CLIENT_PING_SECONDS, "
            "GIFTCOIN_MAX_CONNECTION_AGE_SECONDS and GIFTCOIN_MAX_CONNECTION_AGE_GRACE_SECONDS must be positive"
        )
    return settings
