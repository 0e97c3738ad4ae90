"""Configuration and the sandbox store's receipts (no database needed)."""

from __future__ import annotations

import pytest

from services.runtime.config import ConfigError, Env
from services.wallet.app import payment_providers
from services.wallet.domain import ReceiptRejected
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
    assert (verified.store_transaction_id, verified.package_id, verified.user_id) == ("txn-1", "coins_700", "alice")
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
