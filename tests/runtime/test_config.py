"""Settings declared once (`runtime.config.setting`): read through Env, checked, one line per refusal."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.runtime.config import (
    ConfigError,
    Derived,
    Env,
    IdentitySettings,
    between,
    one_of,
    positive,
    read_setting,
    read_settings,
    setting,
)


@dataclass(frozen=True, kw_only=True)
class Example:
    dev_mode: bool = setting("GIFTCOIN_DEV_MODE", False)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    port: int = setting("GIFTCOIN_{NAME}_PORT", Derived(lambda name, _: 40_000 + len(name)), positive)
    host: str = setting("GIFTCOIN_{NAME}_HOST", Derived(lambda _, read: "127.0.0.1" if read["dev_mode"] else "0.0.0.0"))
    share_bps: int = setting("GIFTCOIN_EXAMPLE_SHARE_BPS", 5000, between(0, 10_000, " basis points"))
    mode: str = setting("GIFTCOIN_EXAMPLE_MODE", "", one_of(("fast", "slow"), or_empty=True))
    label: str = "given, not read"


def test_each_field_is_read_from_its_variable_with_its_declared_default() -> None:
    env = Env({"GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_EXAMPLE_SHARE_BPS": "7000"})
    example = read_settings(Example, env, "demo", label="x")
    assert (example.share_bps, example.mode, example.label) == (7000, "", "x")
    # Derived defaults: from the process's name and from the settings read before.
    assert (example.port, example.host) == (40_004, "127.0.0.1")
    # A nested settings dataclass is read too, and given what it shares with its parent.
    assert example.identity.dev_mode is True and example.identity.issuer == "giftcoin"
    assert {"GIFTCOIN_DEMO_PORT", "GIFTCOIN_DEMO_HOST", "GIFTCOIN_EXAMPLE_MODE", "GIFTCOIN_JWT_ISSUER"} <= env.names
    assert "label" not in env.names
    assert read_setting(Example, "share_bps", Env({})) == 5000


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"GIFTCOIN_EXAMPLE_SHARE_BPS": "10001"},
            "GIFTCOIN_EXAMPLE_SHARE_BPS must be from 0 to 10000 basis points, got 10001",
        ),
        ({"GIFTCOIN_EXAMPLE_SHARE_BPS": "half"}, "GIFTCOIN_EXAMPLE_SHARE_BPS must be an integer, got 'half'"),
        ({"GIFTCOIN_EXAMPLE_MODE": "warp"}, "GIFTCOIN_EXAMPLE_MODE must be one of fast, slow (or unset), got 'warp'"),
        ({"GIFTCOIN_DEMO_PORT": "0"}, "GIFTCOIN_DEMO_PORT must be positive, got 0"),
        ({"GIFTCOIN_JWT_LEEWAY_SECONDS": "301"}, "GIFTCOIN_JWT_LEEWAY_SECONDS must be from 0 to 300, got 301"),
        ({"GIFTCOIN_DEV_MODE": "maybe"}, "GIFTCOIN_DEV_MODE must be true or false, got 'maybe'"),
        ({"GIFTCOIN_JWT_ISSUER": ""}, "GIFTCOIN_JWT_ISSUER must not be empty"),
    ],
)
def test_a_value_that_cannot_work_is_one_line_naming_its_variable(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        read_settings(Example, Env(values), "demo")
    assert str(refused.value) == message
