"""Payout settings from the environment: defaults that run on one machine, refusals of nonsense."""

from __future__ import annotations

import pytest

from services.payout.settings import load_settings
from services.runtime.config import ConfigError, Env


def test_defaults() -> None:
    env = Env({"GIFTCOIN_DEV_MODE": "true"})
    s = load_settings(env)
    assert (s.rate_cents, s.rate_diamonds, s.currency, s.fee_bps) == (100, 200, "USD", 300)
    assert (s.minimum_cents, s.daily_maximum_cents, s.port) == (1000, 100_000, 50053)
    assert "GIFTCOIN_PAYOUT_FEE_BPS" in env.names and "GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS" in env.names


def test_overrides() -> None:
    s = load_settings(
        Env({"GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_PAYOUT_RATE_CENTS": "1", "GIFTCOIN_PAYOUT_FEE_BPS": "0"})
    )
    assert (s.rate_cents, s.fee_bps) == (1, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GIFTCOIN_PAYOUT_RATE_DIAMONDS", "0"),
        ("GIFTCOIN_PAYOUT_FEE_BPS", "10000"),
        ("GIFTCOIN_PAYOUT_FEE_BPS", "3.5"),
        ("GIFTCOIN_PAYOUT_CURRENCY", "usd"),
        ("GIFTCOIN_PAYOUT_MINIMUM_CENTS", "0"),
        ("GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS", "999"),
    ],
)
def test_nonsense_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(Env({"GIFTCOIN_DEV_MODE": "true", name: value}))
