"""The payout service's settings: the shared ones plus its own `GIFTCOIN_PAYOUT_*`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from services.payout.domain import Rate, cash_value
from services.runtime.config import ConfigError, Env, ServiceSettings, load_service_settings
from services.runtime.ledger import MAX_BALANCE
from services.runtime.validation import INT64_MAX


@dataclass(frozen=True)
class PayoutSettings(ServiceSettings):
    # The rate: rate_cents minor units of `currency` for every rate_diamonds diamonds (SPEC §5).
    rate_cents: int = 100
    rate_diamonds: int = 200
    currency: str = "USD"
    # The platform's fee, in basis points of the gross (300 = 3%).
    fee_bps: int = 300
    # Per payout, of net; and per creator per UTC day, of net.
    minimum_cents: int = 1000
    daily_maximum_cents: int = 100_000
    # How often requested payouts are submitted and processing ones polled.
    processor_interval_ms: int = 1000
    # How often expired request ids are reaped.
    reaper_interval_seconds: int = 600


def load_settings(env: Env) -> PayoutSettings:
    base = load_service_settings("payout", env)
    settings = PayoutSettings(
        **{f.name: getattr(base, f.name) for f in fields(ServiceSettings)},
        rate_cents=env.integer("GIFTCOIN_PAYOUT_RATE_CENTS", 100),
        rate_diamonds=env.integer("GIFTCOIN_PAYOUT_RATE_DIAMONDS", 200),
        currency=env.text("GIFTCOIN_PAYOUT_CURRENCY", "USD"),
        fee_bps=env.integer("GIFTCOIN_PAYOUT_FEE_BPS", 300),
        minimum_cents=env.integer("GIFTCOIN_PAYOUT_MINIMUM_CENTS", 1000),
        daily_maximum_cents=env.integer("GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS", 100_000),
        processor_interval_ms=env.integer("GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS", 1000),
        reaper_interval_seconds=env.integer("GIFTCOIN_PAYOUT_REAPER_INTERVAL_SECONDS", 600),
    )
    _check(settings)
    return settings


def _check(s: PayoutSettings) -> None:
    if s.rate_cents <= 0 or s.rate_diamonds <= 0:
        raise ConfigError("GIFTCOIN_PAYOUT_RATE_CENTS and GIFTCOIN_PAYOUT_RATE_DIAMONDS must be positive")
    if cash_value(MAX_BALANCE, Rate(s.rate_cents, s.rate_diamonds)) > INT64_MAX:  # any balance's gross fits int64
        raise ConfigError(
            f"GIFTCOIN_PAYOUT_RATE_CENTS / GIFTCOIN_PAYOUT_RATE_DIAMONDS must value {MAX_BALANCE} diamonds within int64"
        )
    if not (len(s.currency) == 3 and s.currency.isalpha() and s.currency.isupper()):
        raise ConfigError(f"GIFTCOIN_PAYOUT_CURRENCY must be an ISO 4217 code such as USD, got {s.currency!r}")
    if not 0 <= s.fee_bps < 10_000:
        raise ConfigError("GIFTCOIN_PAYOUT_FEE_BPS must be between 0 and 9999 basis points")
    if s.minimum_cents < 1:
        raise ConfigError("GIFTCOIN_PAYOUT_MINIMUM_CENTS must be at least 1")
    if s.daily_maximum_cents < s.minimum_cents:
        raise ConfigError("GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS must be at least GIFTCOIN_PAYOUT_MINIMUM_CENTS")
    if s.processor_interval_ms <= 0 or s.reaper_interval_seconds <= 0:
        raise ConfigError("GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS and _REAPER_INTERVAL_SECONDS must be positive")
