"""The reconciliation job's settings (`python -m services.reconciler`), from the environment.

Shared with the services: GIFTCOIN_DEV_MODE, GIFTCOIN_JWT_SIGNING_KEY_FILE (its own key: it signs its
service:reconciler tokens; dev mode's derived key without it), GIFTCOIN_JWT_ISSUER / _AUDIENCE /
_MAX_LIFETIME_SECONDS (the tokens' claims, as the services expect them), GIFTCOIN_TLS_* (its client
certificate), GIFTCOIN_TRACE_EXPORTER (its metrics: otlp to the collector), GIFTCOIN_LOG_LEVEL. Its own:
GIFTCOIN_RECONCILER_*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.config import DEFAULT_PORTS, ConfigError, Env, IdentitySettings, TlsSettings, load_credentials

SERVICES = ("wallet", "gifting", "payout")


@dataclass(frozen=True)
class ReconcilerSettings:
    targets: dict[str, str]  # wallet, gifting, payout: host:port
    identity: IdentitySettings  # how it signs its tokens (it verifies none)
    tls: TlsSettings = field(default_factory=TlsSettings)
    window_seconds: int = 7200  # each run checks the gifts, holds and credits of this many seconds back
    in_flight_seconds: int = 900  # a pending gift younger than this is in flight, older is stuck
    trace_exporter: str = "none"
    trace_file: str = ""
    log_level: str = "INFO"


def load_settings(env: Env) -> ReconcilerSettings:
    credentials = load_credentials(env, verifies_tokens=False)
    settings = ReconcilerSettings(
        targets={
            name: env.text(f"GIFTCOIN_RECONCILER_{name.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[name]}")
            for name in SERVICES
        },
        identity=credentials.identity,
        tls=credentials.tls,
        window_seconds=env.integer("GIFTCOIN_RECONCILER_WINDOW_SECONDS", 7200),
        in_flight_seconds=env.integer("GIFTCOIN_RECONCILER_IN_FLIGHT_SECONDS", 900),
        trace_exporter=env.text("GIFTCOIN_TRACE_EXPORTER", "none"),
        trace_file=env.text("GIFTCOIN_TRACE_FILE", ".data/traces-reconciler.jsonl"),
        log_level=env.text("GIFTCOIN_LOG_LEVEL", "INFO"),
    )
    if settings.window_seconds <= 0 or settings.in_flight_seconds <= 0:
        raise ConfigError(
            "GIFTCOIN_RECONCILER_WINDOW_SECONDS and GIFTCOIN_RECONCILER_IN_FLIGHT_SECONDS must be positive"
        )
    return settings
