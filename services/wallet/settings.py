"""The wallet service's settings: the shared ones plus its own `GIFTCOIN_WALLET_*`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from services.runtime.config import (
    ConfigError,
    Derived,
    Env,
    ServiceSettings,
    load_service_settings,
    positive,
    read_setting,
    setting,
)
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
class AppStoreSettings:
    """Apple's App Store (GIFTCOIN_WALLET_APP_STORE_*): on when a bundle id is configured."""

    bundle_id: str
    app_apple_id: int | None  # required in Production (Apple's library checks notifications against it)
    environment: str  # Production | Sandbox
    accept_sandbox: bool  # in Production, accept Sandbox transactions too (App Review buys in the sandbox)
    root_certificate_files: tuple[str, ...]  # DER or PEM: Apple Root CA - G3 in deployment
    online_checks: bool  # OCSP revocation checks of the chain: needs Apple's OCSP responder reachable
    products: tuple[tuple[str, str], ...]  # (App Store product id, package id)


@dataclass(frozen=True)
class GooglePlaySettings:
    """Google Play (GIFTCOIN_WALLET_GOOGLE_PLAY_*): on when a package name is configured."""

    package_name: str
    products: tuple[tuple[str, str], ...]  # (Play product id, package id)
    service_account_file: str  # the service account's JSON key (client_email, private_key, token_uri)
    api_url: str  # the Play Developer API's root
    token_url: str  # OAuth token endpoint; empty: the key file's token_uri
    accept_test_purchases: bool  # license testers' purchases (purchaseType 0) credit coins too
    timeout_ms: int
    push_token: str  # the secret the RTDN push subscription's URL carries (?token=); empty: none asked
    sync_interval_seconds: int  # how often purchases are consumed and voided purchases read


APP_STORE_ENVIRONMENTS = ("Production", "Sandbox")
GOOGLE_PLAY_API_URL = "https://androidpublisher.googleapis.com"


def _packages(env: Env, variable: str, default: tuple[PackageConfig, ...]) -> tuple[PackageConfig, ...]:
    raw = env.text(variable, "")
    return parse_packages(raw) if raw.strip() else default


def _text_or_default(env: Env, variable: str, default: str) -> str:
    return env.text(variable, "") or default


@dataclass(frozen=True, kw_only=True)
class WalletSettings(ServiceSettings):
    # The catalogue: JSON `[{"package_id": "coins_70", "coins": 70, "prices": {"USD": 99}}, ...]`.
    packages: tuple[PackageConfig, ...] = setting("GIFTCOIN_WALLET_PACKAGES", DEFAULT_PACKAGES, read=_packages)
    # Empty: the sandbox store is off (outside dev mode, unless a key is configured).
    sandbox_receipt_key: str = setting(
        "GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY",
        Derived(lambda _, read: DEV_SANDBOX_RECEIPT_KEY if read["dev_mode"] else ""),
        read=_text_or_default,
    )
    # Read by load_settings (each store's variables, checked when the store is on).
    app_store: AppStoreSettings | None = None
    google_play: GooglePlaySettings | None = None
    # The HTTP port the stores' notifications arrive on (0: none).
    store_notifications_port: int = setting("GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT", 0)
    # A hold's default and longest life.
    hold_ttl_seconds: int = setting("GIFTCOIN_WALLET_HOLD_TTL_SECONDS", 600, positive)
    hold_ttl_max_seconds: int = setting("GIFTCOIN_WALLET_HOLD_TTL_MAX_SECONDS", 3600, positive)
    # How often lapsed holds are released, and expired request ids reaped.
    hold_expiry_interval_seconds: int = setting("GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS", 5, positive)
    reaper_interval_seconds: int = setting("GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS", 600, positive)


def load_settings(env: Env) -> WalletSettings:
    settings = load_service_settings("wallet", env, WalletSettings)
    if settings.hold_ttl_seconds > settings.hold_ttl_max_seconds:
        raise ConfigError("GIFTCOIN_WALLET_HOLD_TTL_SECONDS must be at most GIFTCOIN_WALLET_HOLD_TTL_MAX_SECONDS")
    package_ids = {p.package_id for p in settings.packages}
    return replace(
        settings, app_store=_load_app_store(env, package_ids), google_play=_load_google_play(env, package_ids)
    )


def _load_app_store(env: Env, package_ids: set[str]) -> AppStoreSettings | None:
    """Every variable is read whether the store is on or not, so that all their names are recorded."""
    bundle_id = env.text("GIFTCOIN_WALLET_APP_STORE_BUNDLE_ID", "").strip()
    apple_id = env.text("GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID", "").strip()
    environment = env.text("GIFTCOIN_WALLET_APP_STORE_ENVIRONMENT", "Production").strip()
    accept_sandbox = env.flag("GIFTCOIN_WALLET_APP_STORE_ACCEPT_SANDBOX", False)
    roots = _paths(env.text("GIFTCOIN_WALLET_APP_STORE_ROOT_CERTIFICATES", ""))
    online_checks = env.flag("GIFTCOIN_WALLET_APP_STORE_ONLINE_CHECKS", False)
    products = parse_products("GIFTCOIN_WALLET_APP_STORE_PRODUCTS", env.text("GIFTCOIN_WALLET_APP_STORE_PRODUCTS", ""))
    if not bundle_id:
        return None
    if environment not in APP_STORE_ENVIRONMENTS:
        raise ConfigError(f"GIFTCOIN_WALLET_APP_STORE_ENVIRONMENT must be Production or Sandbox, not {environment!r}")
    if apple_id and not apple_id.isdigit():
        raise ConfigError(f"GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID must be the app's numeric id, not {apple_id!r}")
    if environment == "Production" and not apple_id:
        raise ConfigError("GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID is required in the Production environment")
    if not roots:
        raise ConfigError("GIFTCOIN_WALLET_APP_STORE_ROOT_CERTIFICATES must name the root certificate files")
    _check_products("GIFTCOIN_WALLET_APP_STORE_PRODUCTS", products, package_ids)
    return AppStoreSettings(
        bundle_id=bundle_id,
        app_apple_id=int(apple_id) if apple_id else None,
        environment=environment,
        accept_sandbox=accept_sandbox,
        root_certificate_files=roots,
        online_checks=online_checks,
        products=products,
    )


def _load_google_play(env: Env, package_ids: set[str]) -> GooglePlaySettings | None:
    """Every variable is read whether the store is on or not, so that all their names are recorded."""
    name = "GIFTCOIN_WALLET_GOOGLE_PLAY_PRODUCTS"
    settings = GooglePlaySettings(
        package_name=env.text("GIFTCOIN_WALLET_GOOGLE_PLAY_PACKAGE_NAME", "").strip(),
        products=parse_products(name, env.text(name, "")),
        service_account_file=env.text("GIFTCOIN_WALLET_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE", "").strip(),
        api_url=env.text("GIFTCOIN_WALLET_GOOGLE_PLAY_API_URL", GOOGLE_PLAY_API_URL).strip().rstrip("/"),
        token_url=env.text("GIFTCOIN_WALLET_GOOGLE_PLAY_TOKEN_URL", "").strip(),
        accept_test_purchases=env.flag("GIFTCOIN_WALLET_GOOGLE_PLAY_ACCEPT_TEST_PURCHASES", False),
        timeout_ms=env.integer("GIFTCOIN_WALLET_GOOGLE_PLAY_TIMEOUT_MS", 5000),
        push_token=env.text("GIFTCOIN_WALLET_GOOGLE_PLAY_PUSH_TOKEN", ""),
        sync_interval_seconds=env.integer("GIFTCOIN_WALLET_GOOGLE_PLAY_SYNC_INTERVAL_SECONDS", 60),
    )
    if not settings.package_name:
        return None
    if not settings.service_account_file:
        raise ConfigError("GIFTCOIN_WALLET_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE is required when Google Play is on")
    if settings.timeout_ms <= 0 or settings.sync_interval_seconds <= 0:
        raise ConfigError("GIFTCOIN_WALLET_GOOGLE_PLAY_TIMEOUT_MS and _SYNC_INTERVAL_SECONDS must be positive")
    _check_products(name, settings.products, package_ids)
    return settings


def parse_products(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """A store's product ids and the coin package each sells: JSON `{"<product id>": "<package id>", ...}`."""
    if not raw.strip():
        return ()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{name} must map product ids to package ids, as a JSON object of strings")
    return tuple(sorted(data.items()))


def _check_products(name: str, products: tuple[tuple[str, str], ...], package_ids: set[str]) -> None:
    if not products:
        raise ConfigError(f"{name} must map the store's product ids to coin packages")
    packages = [package for _, package in products]
    unknown = sorted(set(packages) - package_ids)
    if unknown:
        raise ConfigError(f"{name} names packages that are not in the catalogue: {', '.join(unknown)}")
    if len(set(packages)) != len(packages):
        raise ConfigError(f"{name}: one product per package (the wallet consumes a purchase by its package's product)")


def _paths(raw: str) -> tuple[str, ...]:
    return tuple(path.strip() for path in raw.split(",") if path.strip())


def load_packages(env: Env) -> tuple[PackageConfig, ...]:
    """The catalogue from GIFTCOIN_WALLET_PACKAGES, else SPEC's default (the sandbox receipt tool's).

    Amounts must be JSON integers: a float never becomes a price.
    """
    packages: tuple[PackageConfig, ...] = read_setting(WalletSettings, "packages", env)
    return packages


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
