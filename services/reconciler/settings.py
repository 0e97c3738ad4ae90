"""The reconciliation job's settings (`python -m services.reconciler`), from the environment.

Shared with the services: GIFTCOIN_DEV_MODE, GIFTCOIN_JWT_SIGNING_KEY_FILE (its own key: it signs its
service:reconciler tokens; dev mode's derived key without it), GIFTCOIN_JWT_ISSUER / _AUDIENCE /
_MAX_LIFETIME_SECONDS (the tokens' claims, as the services expect them), GIFTCOIN_TLS_* (its client
certificate), GIFTCOIN_TRACE_EXPORTER (its metrics: otlp to the collector), GIFTCOIN_LOG_LEVEL. Its own:
GIFTCOIN_RECONCILER_*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.config import (
    DEFAULT_PORTS,
    Env,
    ProcessSettings,
    check_credentials,
    positive,
    read_settings,
    setting,
)

SERVICES = ("wallet", "gifting", "payout")


@dataclass(frozen=True, kw_only=True)
class ReconcilerSettings(ProcessSettings):
    """Its identity signs its tokens (it verifies none)."""

    # wallet, gifting, payout: host:port (GIFTCOIN_RECONCILER_<SERVICE>_TARGET, read by load_settings).
    targets: dict[str, str] = field(default_factory=dict)
    # Each run checks the gifts, holds and credits of this many seconds back.
    window_seconds: int = setting("GIFTCOIN_RECONCILER_WINDOW_SECONDS", 7200, positive)
    # A pending gift younger than this is in flight, older is stuck.
    in_flight_seconds: int = setting("GIFTCOIN_RECONCILER_IN_FLIGHT_SECONDS", 900, positive)


def load_settings(env: Env) -> ReconcilerSettings:
    targets = {
        name: env.text(f"GIFTCOIN_RECONCILER_{name.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[name]}")
        for name in SERVICES
    }
    settings = read_settings(ReconcilerSettings, env, "reconciler", targets=targets)
    check_credentials(settings, verifies_tokens=False)
    return settings
