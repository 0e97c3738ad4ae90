"""Configuration and the sandbox store's receipts (no database needed)."""

from __future__ import annotations

import pytest

from services.runtime.config import ConfigError, Env
from services.wallet.app import payment_providers
from services.wallet.model import ReceiptRejected, account_token
from services.wallet.receipts import SandboxProvider, main, mint_receipt
from services.wallet.settings import DEFAULT_PACKAGES, DEV_SANDBOX_RECEIPT_KEY, load_settings, parse_packages


def settings_env(**extra: str) -> Env:
    return Env({"GIFTCOIN_DEV_MODE": "true", **extra})


def test_defaults_are_spec_and_dev_mode_signs_sandbox_receipts() -> None:
    settings = load_settings(settings_env())
    assert settings.packages == DEFAULT_PACKAGES
    assert (settings.hold_ttl_seconds, settings.hold_ttl_max_seconds) == (600, 3600)
    assert settings.sandbox_receipt_key == DEV_SANDBOX_RECEIPT_KEY
    assert set(payment_providers(settings)) == {"sandbox"}


def test_outside_dev_mode_the_sandbox_store_needs_its_own_key() -> None:
    base = {"GIFTCOIN_JWT_KEYS": "/etc/giftcoin/jwks", "GIFTCOIN_TLS_CERT_FILE": "c", "GIFTCOIN_TLS_KEY_FILE": "k"}
    production = load_settings(Env({**base, "GIFTCOIN_TLS_CA_FILE": "ca"}))
    assert production.sandbox_receipt_key == "" and payment_providers(production) == {}
    keyed = load_settings(Env({**base, "GIFTCOIN_TLS_CA_FILE": "ca", "GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY": "k" * 32}))
    assert set(payment_providers(keyed)) == {"sandbox"}


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '[{"package_id": "p", "coins": 10.5, "prices": {"USD": 99}}]',  # a float never becomes an amount
        '[{"package_id": "p", "coins": 10, "prices": {"USD": 0.99}}]',
        '[{"package_id": "p", "coins": true, "prices": {"USD": 99}}]',
        '[{"package_id": "p", "coins": 10, "prices": {"usd": 99}}]',
        '[{"package_id": "p", "coins": 10, "prices": {}}]',
        '[{"package_id": "bad id", "coins": 10, "prices": {"USD": 99}}]',
        '[{"package_id": "p", "coins": 10, "prices": {"USD": 99}},'
        ' {"package_id": "p", "coins": 20, "prices": {"USD": 1}}]',  # ids must be unique
    ],
)
def test_malformed_catalogues_are_configuration_errors(raw: str) -> None:
    with pytest.raises(ConfigError):
        parse_packages(raw)
    with pytest.raises(ConfigError):
        load_settings(settings_env(GIFTCOIN_WALLET_PACKAGES=raw))


def test_hold_ttl_limits_are_checked() -> None:
    with pytest.raises(ConfigError):
        load_settings(settings_env(GIFTCOIN_WALLET_HOLD_TTL_SECONDS="7200"))
    assert load_settings(settings_env(GIFTCOIN_WALLET_HOLD_TTL_SECONDS="30")).hold_ttl_seconds == 30


def test_sandbox_receipts_verify_only_under_their_key() -> None:
    payload = mint_receipt("coins_700", "txn-1", user_id="alice")
    verified = SandboxProvider(DEV_SANDBOX_RECEIPT_KEY).verify(payload)
    assert (verified.store_transaction_id, verified.package_id) == ("txn-1", "coins_700")
    assert verified.account_token == account_token("alice")
    assert (verified.amount_minor, verified.currency_code) == (999, "USD")
    with pytest.raises(ReceiptRejected):
        SandboxProvider("another-key").verify(payload)
    claims, _, signature = payload.partition(".")
    with pytest.raises(ReceiptRejected):
        SandboxProvider(DEV_SANDBOX_RECEIPT_KEY).verify(f"{claims}x.{signature}")


def test_the_receipt_tool_prints_a_verifiable_payload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--package", "coins_70", "--transaction-id", "txn-cli", "--key", "cli-key"]) == 0
    payload = capsys.readouterr().out.strip()
    verified = SandboxProvider("cli-key").verify(payload)
    assert (verified.store_transaction_id, verified.package_id, verified.amount_minor) == ("txn-cli", "coins_70", 99)


APP_STORE = {
    "GIFTCOIN_WALLET_APP_STORE_BUNDLE_ID": "com.example.giftcoin",
    "GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID": "1234567890",
    "GIFTCOIN_WALLET_APP_STORE_ROOT_CERTIFICATES": "/etc/giftcoin/stores/AppleRootCA-G3.cer",
    "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": '{"com.example.coins700": "coins_700"}',
}
PLAY = {
    "GIFTCOIN_WALLET_GOOGLE_PLAY_PACKAGE_NAME": "com.example.giftcoin",
    "GIFTCOIN_WALLET_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE": "/etc/giftcoin/stores/play.json",
    "GIFTCOIN_WALLET_GOOGLE_PLAY_PRODUCTS": '{"coins_700": "coins_700"}',
}


def test_the_stores_are_off_unless_configured_and_read_as_configured() -> None:
    plain = load_settings(settings_env())
    assert (plain.app_store, plain.google_play, plain.store_notifications_port) == (None, None, 0)
    configured = load_settings(settings_env(**APP_STORE, **PLAY))
    assert configured.app_store is not None and configured.google_play is not None
    assert (configured.app_store.environment, configured.app_store.app_apple_id) == ("Production", 1234567890)
    assert configured.app_store.products == (("com.example.coins700", "coins_700"),)
    assert configured.app_store.online_checks is False and configured.app_store.accept_sandbox is False
    assert configured.google_play.api_url == "https://androidpublisher.googleapis.com"
    assert configured.google_play.accept_test_purchases is False


@pytest.mark.parametrize(
    "overrides",
    [
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID": ""},  # required in Production
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID": "12ab"},
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_ENVIRONMENT": "Xcode"},  # unsigned data: never
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_ROOT_CERTIFICATES": ""},
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": ""},
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": '{"p": "coins_1"}'},  # no such package
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": '{"p": "coins_70", "q": "coins_70"}'},
        {**APP_STORE, "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": '["coins_70"]'},
        {**PLAY, "GIFTCOIN_WALLET_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE": ""},
        {**PLAY, "GIFTCOIN_WALLET_GOOGLE_PLAY_TIMEOUT_MS": "0"},
        {**PLAY, "GIFTCOIN_WALLET_GOOGLE_PLAY_PRODUCTS": "{"},
    ],
)
def test_a_store_configured_wrong_is_a_configuration_error(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(settings_env(**overrides))
