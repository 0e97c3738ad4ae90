"""The payout service's settings: the shared ones plus its own `GIFTCOIN_PAYOUT_*`."""

from __future__ import annotations

from dataclasses import dataclass

from services.payout.domain import Rate, cash_value
from services.runtime.config import (
    ConfigError,
    Constraint,
    Env,
    ServiceSettings,
    between,
    load_service_settings,
    positive,
    setting,
)
from services.runtime.ledger import MAX_BALANCE
from services.runtime.validation import INT64_MAX

ISO_4217 = Constraint(lambda v: len(v) == 3 and v.isalpha() and v.isupper(), "must be an ISO 4217 code such as USD")


@dataclass(frozen=True, kw_only=True)
class PayoutSettings(ServiceSettings):
    # The rate: rate_cents minor units of `currency` for every rate_diamonds diamonds (SPEC §5).
    rate_cents: int = setting("GIFTCOIN_PAYOUT_RATE_CENTS", 100, positive)
    rate_diamonds: int = setting("GIFTCOIN_PAYOUT_RATE_DIAMONDS", 200, positive)
    currency: str = setting("GIFTCOIN_PAYOUT_CURRENCY", "USD", ISO_4217)
    # The platform's fee, in basis points of the gross (300 = 3%).
    fee_bps: int = setting("GIFTCOIN_PAYOUT_FEE_BPS", 300, between(0, 9999, " basis points"))
    # Per payout, of net; and per creator per UTC day, of net.
    minimum_cents: int = setting("GIFTCOIN_PAYOUT_MINIMUM_CENTS", 1000, positive)
    daily_maximum_cents: int = setting("GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS", 100_000)
    # How often requested payouts are submitted and processing ones polled.
    processor_interval_ms: int = setting("GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS", 1000, positive)
    # How often expired request ids are reaped.
    reaper_interval_seconds: int = setting("GIFTCOIN_PAYOUT_REAPER_INTERVAL_SECONDS", 600, positive)


def load_settings(env: Env) -> PayoutSettings:
    s = load_service_settings("payout", env, PayoutSettings)
    if cash_value(MAX_BALANCE, Rate(s.rate_cents, s.rate_diamonds)) > INT64_MAX:  # any balance's gross fits int64
        raise ConfigError(
            f"GIFTCOIN_PAYOUT_RATE_CENTS / GIFTCOIN_PAYOUT_RATE_DIAMONDS must value {MAX_BALANCE} diamonds within int64"
        )
    if s.daily_maximum_cents < s.minimum_cents:
        raise ConfigError("GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS must be at least GIFTCOIN_PAYOUT_MINIMUM_CENTS")
    return s
