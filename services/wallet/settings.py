"""The wallet service's settings: the shared ones plus its own `GIFTCOIN_WALLET_*`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields

from services.runtime.config import ConfigError, Env, ServiceSettings, load_service_settings
from services.runtime.ledger import MAX_AMOUNT

# Signs sandbox receipts in dev mode only, so that `make demo` and the tests need no configuration.
DEV_SANDBOX_RECEIPT_KEY = "giftcoin-dev-sandbox-receipts-not-for-production-use"

_PACKAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class PackageConfig:
    """One coin package: its coins and its price in each currency it is sold in (minor units)."""

    package_id: str
    coins: int
    prices: tuple[tuple[str, int], ...]  # (ISO 4217 code, minor units), sorted by code


# SPEC §3's default catalogue, USD cents.
DEFAULT_PACKAGES = tuple(
    PackageConfig(f"coins_{coins}", coins, (("USD", cents),))
    for coins, cents in ((70, 99), (350, 499), (700, 999), (1400, 1999), (3500, 4999), (7000, 9999), (17500, 24999))
)


@dataclass(frozen=True)
class WalletSettings(ServiceSettings):
    packages: tuple[PackageConfig, ...] = DEFAULT_PACKAGES
    # Empty: the sandbox store is off (outside dev mode, unless a key is configured).
    sandbox_receipt_key: str = ""
    hold_ttl_seconds: int = 600
    hold_ttl_max_seconds: int = 3600
    # How often lapsed holds are released, and expired request ids reaped.
    hold_expiry_interval_seconds: int = 5
    reaper_interval_seconds: int = 600


def load_settings(env: Env) -> WalletSettings:
    base = load_service_settings("wallet", env)
    key = env.text("GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY", "")
    settings = WalletSettings(
        **{f.name: getattr(base, f.name) for f in fields(ServiceSettings)},
        packages=load_packages(env),
        sandbox_receipt_key=key or (DEV_SANDBOX_RECEIPT_KEY if base.dev_mode else ""),
        hold_ttl_seconds=env.integer("GIFTCOIN_WALLET_HOLD_TTL_SECONDS", 600),
        hold_ttl_max_seconds=env.integer("GIFTCOIN_WALLET_HOLD_TTL_MAX_SECONDS", 3600),
        hold_expiry_interval_seconds=env.integer("GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS", 5),
        reaper_interval_seconds=env.integer("GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS", 600),
    )
    if not 0 < settings.hold_ttl_seconds <= settings.hold_ttl_max_seconds:
        raise ConfigError(
            "GIFTCOIN_WALLET_HOLD_TTL_SECONDS must be positive and at most GIFTCOIN_WALLET_HOLD_TTL_MAX_SECONDS"
        )
    if settings.hold_expiry_interval_seconds <= 0 or settings.reaper_interval_seconds <= 0:
        raise ConfigError(
            "GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS and GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS must be positive"
        )
    return settings


def load_packages(env: Env) -> tuple[PackageConfig, ...]:
    """The catalogue from GIFTCOIN_WALLET_PACKAGES, else SPEC's default.

    The variable holds JSON: `[{"package_id": "coins_70", "coins": 70, "prices": {"USD": 99}}, ...]`.
    Amounts must be JSON integers: a float never becomes a price.
    """
    raw = env.text("GIFTCOIN_WALLET_PACKAGES", "")
    if not raw.strip():
        return DEFAULT_PACKAGES
    return parse_packages(raw)


def parse_packages(raw: str) -> tuple[PackageConfig, ...]:
    name = "GIFTCOIN_WALLET_PACKAGES"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{name} must be a non-empty JSON list of packages")
    packages: list[PackageConfig] = []
    for item in data:
        if not isinstance(item, dict) or set(item) != {"package_id", "coins", "prices"}:
            raise ConfigError(f"{name}: each package is an object with package_id, coins and prices, got {item!r}")
        package_id, coins, prices = item["package_id"], item["coins"], item["prices"]
        if not isinstance(package_id, str) or not _PACKAGE_ID.fullmatch(package_id):
            raise ConfigError(f"{name}: bad package_id {package_id!r}")
        if not _is_int(coins) or not 0 < coins <= MAX_AMOUNT:
            raise ConfigError(f"{name}: {package_id}: coins must be an integer from 1 to {MAX_AMOUNT}, got {coins!r}")
        if not isinstance(prices, dict) or not prices:
            raise ConfigError(f"{name}: {package_id}: prices must map currency codes to minor units")
        for currency, amount in prices.items():
            if not _CURRENCY.fullmatch(currency) or not _is_int(amount) or not 0 < amount <= MAX_AMOUNT:
                raise ConfigError(
                    f"{name}: {package_id}: price {currency}={amount!r} must be an ISO 4217 code and an integer "
                    f"of minor units from 1 to {MAX_AMOUNT}"
                )
        packages.append(PackageConfig(package_id, coins, tuple(sorted(prices.items()))))
    ids = [p.package_id for p in packages]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{name}: package ids must be unique")
    return tuple(packages)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
