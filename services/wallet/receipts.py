"""The sandbox store: receipts signed with a key (HMAC-SHA256), the way a store's test mode works.

A sandbox receipt's payload is `<claims>.<signature>`: the claims are base64url JSON
(store_transaction_id, package_id, amount_minor, currency_code, user_id), the signature is the
base64url HMAC-SHA256 of the claims' text under GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY.

Mint one for a test or a demo:

    python -m services.wallet.receipts --package coins_700 [--transaction-id ID] [--user-id ID] [--key KEY]

prints the payload to pass as `Receipt(store="sandbox", payload=...)`. Tests import `mint_receipt`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import uuid

from services.runtime.config import ConfigError, Env
from services.wallet.model import ReceiptRejected, VerifiedReceipt, account_token
from services.wallet.settings import DEV_SANDBOX_RECEIPT_KEY, load_packages

SANDBOX_STORE = "sandbox"
_CLAIMS = {"store_transaction_id", "package_id", "amount_minor", "currency_code", "user_id"}


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: str, claims: str) -> str:
    return _b64encode(hmac.new(key.encode(), claims.encode(), hashlib.sha256).digest())


def mint_receipt(
    package_id: str,
    store_transaction_id: str = "",
    user_id: str = "",
    key: str | None = None,
    amount_minor: int | None = None,
    currency_code: str = "USD",
) -> str:
    """A signed sandbox receipt payload.

    `key` defaults to GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY, else the dev key; `amount_minor` to the
    package's price in the configured catalogue; `user_id` empty means a receipt not bound to an
    account (a bound one credits only that user, like a store's app account token).
    """
    env = Env()
    if key is None:
        key = env.text("GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY", "") or DEV_SANDBOX_RECEIPT_KEY
    if amount_minor is None:
        prices = {p.package_id: dict(p.prices) for p in load_packages(env)}
        amount_minor = prices.get(package_id, {}).get(currency_code, 0)
    claims = json.dumps(
        {
            "store_transaction_id": store_transaction_id or f"sandbox-{uuid.uuid4()}",
            "package_id": package_id,
            "amount_minor": amount_minor,
            "currency_code": currency_code,
            "user_id": user_id,
        },
        sort_keys=True,
    )
    encoded = _b64encode(claims.encode())
    return f"{encoded}.{_sign(key, encoded)}"


class SandboxProvider:
    """Verifies sandbox receipts: a valid signature under the configured key, well-formed claims."""

    store = SANDBOX_STORE

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the sandbox store needs a signing key")
        self._key = key

    def verify(self, payload: str) -> VerifiedReceipt:
        encoded, dot, signature = payload.partition(".")
        if not dot or not encoded or not signature:
            raise ReceiptRejected("not a sandbox receipt (<claims>.<signature>)")
        if not hmac.compare_digest(_sign(self._key, encoded), signature):
            raise ReceiptRejected("signature does not verify")
        try:
            claims = json.loads(_b64decode(encoded))
        except (ValueError, binascii.Error) as exc:
            raise ReceiptRejected("claims are not base64url JSON") from exc
        if not isinstance(claims, dict) or set(claims) != _CLAIMS:
            raise ReceiptRejected(f"claims must be exactly {sorted(_CLAIMS)}")
        amount = claims["amount_minor"]
        texts = [claims[k] for k in ("store_transaction_id", "package_id", "currency_code", "user_id")]
        if not all(isinstance(t, str) for t in texts) or not isinstance(amount, int) or isinstance(amount, bool):
            raise ReceiptRejected("claims have the wrong types")
        if not claims["store_transaction_id"] or amount < 0:
            raise ReceiptRejected("a receipt needs a transaction id and a non-negative amount")
        return VerifiedReceipt(
            store=self.store,
            store_transaction_id=claims["store_transaction_id"],
            package_id=claims["package_id"],
            amount_minor=amount,
            currency_code=claims["currency_code"],
            account_token=account_token(claims["user_id"]) if claims["user_id"] else "",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.wallet.receipts", description="Mint a signed sandbox store receipt (for tests)."
    )
    parser.add_argument("--package", required=True, help="package id, e.g. coins_700")
    parser.add_argument("--transaction-id", default="", help="store transaction id (default: a fresh one)")
    parser.add_argument("--user-id", default="", help="bind the receipt to this user (default: unbound)")
    parser.add_argument("--currency", default="USD", help="ISO 4217 code the store charged (default USD)")
    parser.add_argument("--amount-minor", type=int, default=None, help="price charged (default: the catalogue's)")
    parser.add_argument(
        "--key", default=os.environ.get("GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY") or None, help="signing key"
    )
    args = parser.parse_args(argv)
    try:
        payload = mint_receipt(
            args.package, args.transaction_id, args.user_id, args.key, args.amount_minor, args.currency
        )
    except ConfigError as exc:
        print(f"receipts: configuration error: {exc}", file=sys.stderr)
        return 2
    print(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
