"""Gifting's configuration: safe defaults on one machine, and clear errors for settings that cannot work."""

from __future__ import annotations

import pytest

from services.gifting.settings import GiftingSettings, load_settings
from services.runtime.config import ConfigError, Env


def settings(**values: str) -> GiftingSettings:
    return load_settings(Env({"GIFTCOIN_DEV_MODE": "true", **values}))


def test_defaults_run_on_one_machine() -> None:
    s = settings()
    assert (s.port, s.wallet_target, s.payout_target) == (50052, "127.0.0.1:50051", "127.0.0.1:50053")
    assert (s.diamond_share_bps, s.daily_spend_limit_coins) == (5000, 100_000)
    assert s.hold_safety_margin_seconds < s.hold_ttl_seconds and s.failpoint == ""


def test_every_setting_is_read_from_its_variable() -> None:
    env = Env({"GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_GIFTING_DIAMOND_SHARE_BPS": "7000"})
    s = load_settings(env)
    assert s.diamond_share_bps == 7000
    assert {
        "GIFTCOIN_GIFTING_WALLET_TARGET",
        "GIFTCOIN_GIFTING_PAYOUT_TARGET",
        "GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS",
        "GIFTCOIN_GIFTING_HOLD_TTL_SECONDS",
        "GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS",
        "GIFTCOIN_GIFTING_LEASE_SECONDS",
        "GIFTCOIN_GIFTING_FAILPOINT",
    } <= env.names


@pytest.mark.parametrize(
    "values",
    [
        {"GIFTCOIN_GIFTING_DIAMOND_SHARE_BPS": "10001"},
        {"GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS": "0"},
        {"GIFTCOIN_GIFTING_HOLD_TTL_SECONDS": "60", "GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS": "60"},
        {"GIFTCOIN_GIFTING_LEASE_SECONDS": "5", "GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "5000"},
        {"GIFTCOIN_GIFTING_FAILPOINT": "after_lunch"},
        {"GIFTCOIN_GIFTING_WALLET_TARGET": ""},
        {"GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "many"},
        {"GIFTCOIN_GIFTING_SEND_BATCH_STALL_MS": "0"},
        {"GIFTCOIN_GIFTING_FEED_MAX_VIEWERS": "-1"},
        {"GIFTCOIN_KEEPALIVE_TIME_SECONDS": "0"},
    ],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        settings(**values)
