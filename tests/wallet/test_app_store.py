"""App Store purchases and refunds through a real wallet (gRPC and its notifications endpoint), with
StoreKit 2 data signed by a private chain shaped like Apple's, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import grpc
import pytest
from giftcoin.wallet.v1 import wallet_pb2

from services.giftctl.suite import free_port
from services.runtime.clock import FakeClock
from services.wallet.model import account_token
from tests.support.app_store import AppleChain, Transaction, app_store_env, notification
from tests.support.identity import as_caller, user
from tests.wallet.conftest import WalletHarness, new_id, rpc_error, running_wallet

ALICE = as_caller(user("alice"))


@dataclass
class AppStore:
    wallet: WalletHarness
    chain: AppleChain
    notifications_url: str

    @property
    def now(self) -> datetime:
        return self.wallet.clock.now()

    def transaction(self, user_id: str = "alice", **fields: object) -> Transaction:
        return replace(Transaction(self.now, account_token(user_id)), **fields)  # type: ignore[arg-type]

    def request(self, jws: str, package_id: str = "coins_700") -> wallet_pb2.PurchaseCoinsRequest:
        receipt = wallet_pb2.Receipt(store="app_store", payload=jws)
        return wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id=package_id, receipt=receipt)

    def buy(self, transaction: Transaction, user_id: str = "alice") -> wallet_pb2.PurchaseCoinsResponse:
        request = self.request(self.chain.sign(transaction.payload()))
        return self.wallet.stub.PurchaseCoins(request, metadata=as_caller(user(user_id)))

    def notify(self, body: bytes) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(self.notifications_url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def refund(
        self, transaction: Transaction, after: timedelta, kind: str = "REFUND", notification_id: str = ""
    ) -> str:
        """Deliver a REFUND (or REFUND_REVERSED) notification signed `after` the purchase; its outcome."""
        signed_at = transaction.signed_at + after
        revoked = transaction if kind == "REFUND_REVERSED" else replace(transaction, revoked_at=signed_at)
        status, answer = self.notify(notification(self.chain, kind, revoked, signed_at, notification_id))
        assert status == 200, answer
        return str(answer["outcome"])


def _start(url: str, clock: FakeClock, tmp_path: Path, chain: AppleChain, **env: str) -> Iterator[AppStore]:
    port = free_port()
    root = chain.write_root(tmp_path / "root.pem")
    settings = app_store_env(root, GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT=str(port), **env)
    with running_wallet(url, clock, **settings) as wallet:
        yield AppStore(wallet, chain, f"http://127.0.0.1:{port}/app-store/notifications")


@pytest.fixture
def apple(wallet_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[AppStore]:
    yield from _start(wallet_url, clock, tmp_path, AppleChain.make(clock.now()))


def test_a_signed_transaction_credits_its_package_once_ever(apple: AppStore) -> None:
    apple.wallet.open_wallet("alice")
    transaction = apple.transaction()
    request = apple.request(apple.chain.sign(transaction.payload()))
    first = apple.wallet.stub.PurchaseCoins(request, metadata=ALICE)
    assert (first.purchase.store, first.purchase.store_transaction_id) == ("app_store", transaction.transaction_id)
    assert (first.purchase.coins, first.purchase.price.amount_minor, first.purchase.price.currency_code) == (
        700,
        999,
        "USD",
    )
    assert first.wallet.balance.total == 700
    assert apple.wallet.stub.PurchaseCoins(request, metadata=ALICE) == first  # the request replayed
    request.request_id = new_id()  # the transaction replayed
    again = rpc_error(lambda: apple.wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "RECEIPT_ALREADY_USED")
    assert apple.wallet.get("alice").balance.total == 700


def _tampered(jws: str) -> str:
    header, payload, signature = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["productId"] = "com.example.giftcoin.coins700"
    claims["transactionId"] += "1"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_every_refusal_has_its_reason_and_credits_nothing(apple: AppStore, clock: FakeClock) -> None:
    apple.wallet.open_wallet("alice")
    sign = apple.chain.sign
    now = clock.now()
    expired = AppleChain.make(now, leaf_valid=(timedelta(days=-400), timedelta(days=-35)))
    not_yet = AppleChain.make(now, leaf_valid=(timedelta(days=1), timedelta(days=365)))
    stranger = AppleChain.make(now)  # a chain to another root
    no_extensions = AppleChain.make(now, apple_extensions=False)
    t = apple.transaction
    cases: list[tuple[str, str, grpc.StatusCode]] = [
        (sign(t(bundle_id="com.example.other").payload()), "STORE_APP_MISMATCH", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(user_id="bob").payload()), "RECEIPT_ACCOUNT_MISMATCH", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(account_token="").payload()), "RECEIPT_ACCOUNT_MISMATCH", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(environment="Sandbox").payload()), "STORE_ENVIRONMENT_MISMATCH", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(product_id="com.example.gems").payload()), "RECEIPT_PRODUCT_UNKNOWN", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(type="Non-Consumable").payload()), "RECEIPT_NOT_CONSUMABLE", grpc.StatusCode.INVALID_ARGUMENT),
        (sign(t(revoked_at=now).payload()), "RECEIPT_REVOKED", grpc.StatusCode.FAILED_PRECONDITION),
        (
            _tampered(sign(t(product_id="com.example.giftcoin.coins70").payload())),
            "STORE_SIGNATURE_INVALID",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (expired.sign(t().payload()), "STORE_CERTIFICATE_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        (not_yet.sign(t().payload()), "STORE_CERTIFICATE_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        (stranger.sign(t().payload()), "STORE_CERTIFICATE_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        (no_extensions.sign(t().payload()), "STORE_CERTIFICATE_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        ("not.a.jws", "RECEIPT_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for jws, reason, code in cases:
        refused = rpc_error(partial(apple.wallet.stub.PurchaseCoins, apple.request(jws), metadata=ALICE))
        assert (refused.code, refused.reason) == (code, reason), reason
        assert refused.metadata["store"] == "app_store"
    assert apple.wallet.get("alice").balance.total == 0
    assert apple.wallet.history("alice").transactions == []


def test_a_sandbox_transaction_credits_where_the_sandbox_is_accepted(
    wallet_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    chain = AppleChain.make(clock.now())
    for apple in _start(wallet_url, clock, tmp_path, chain, GIFTCOIN_WALLET_APP_STORE_ACCEPT_SANDBOX="true"):
        apple.wallet.open_wallet("alice")
        assert apple.buy(apple.transaction(environment="Sandbox")).wallet.balance.total == 700
        assert apple.buy(apple.transaction()).wallet.balance.total == 1400


def test_a_refund_notification_takes_the_coins_back_once(apple: AppStore) -> None:
    apple.wallet.open_wallet("alice")
    bought = apple.transaction()
    apple.buy(bought)
    notification_id = new_id()
    assert apple.refund(bought, timedelta(days=1), notification_id=notification_id) == "applied"
    wallet = apple.wallet.get("alice")
    assert (wallet.balance.total, wallet.debt, wallet.status) == (0, 0, wallet_pb2.WALLET_STATUS_ACTIVE)
    assert apple.refund(bought, timedelta(days=1), notification_id=notification_id) == "duplicate"
    assert apple.refund(bought, timedelta(days=2)) == "unchanged"  # another notification of the same refund
    assert apple.wallet.get("alice").balance.total == 0
    kinds = [t.kind for t in apple.wallet.history("alice").transactions]
    assert kinds.count(wallet_pb2.TRANSACTION_KIND_REFUND) == 1


def test_a_refund_after_the_coins_were_spent_is_debt_and_freezes(apple: AppStore) -> None:
    apple.wallet.open_wallet("alice")
    bought = apple.transaction()
    apple.buy(bought)
    apple.wallet.hold("gift-1", "alice", 600)
    apple.wallet.capture("gift-1")
    assert apple.refund(bought, timedelta(hours=1)) == "applied"
    wallet = apple.wallet.get("alice")
    assert (wallet.balance.total, wallet.debt, wallet.status) == (0, 600, wallet_pb2.WALLET_STATUS_FROZEN)
    frozen = rpc_error(lambda: apple.wallet.hold("gift-2", "alice", 1))
    assert frozen.reason == "WALLET_FROZEN"
    # Apple reverses the refund: the coins come back and pay the debt first.
    assert apple.refund(bought, timedelta(hours=2), kind="REFUND_REVERSED") == "applied"
    wallet = apple.wallet.get("alice")
    assert (wallet.balance.total, wallet.debt, wallet.status) == (100, 0, wallet_pb2.WALLET_STATUS_ACTIVE)
    purchase_kinds = [t.kind for t in apple.wallet.history("alice").transactions]
    assert wallet_pb2.TRANSACTION_KIND_REINSTATEMENT in purchase_kinds


def test_notifications_out_of_order_end_where_the_store_last_left_the_purchase(apple: AppStore) -> None:
    apple.wallet.open_wallet("alice")
    bought = apple.transaction()
    apple.buy(bought)
    # The reversal (dated later) arrives before the refund it reverses: the refund then changes nothing.
    assert apple.refund(bought, timedelta(hours=2), kind="REFUND_REVERSED") == "unchanged"
    assert apple.refund(bought, timedelta(hours=1)) == "unchanged"
    assert apple.wallet.get("alice").balance.total == 700
    # A refund that arrives before its purchase: the transaction is refused when it comes.
    early = apple.transaction()
    assert apple.refund(early, timedelta(hours=1)) == "no_purchase"
    refused = rpc_error(lambda: apple.buy(early))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECEIPT_REVOKED")
    assert apple.wallet.get("alice").balance.total == 700


def test_notifications_that_do_not_verify_are_refused_with_their_reason(apple: AppStore, clock: FakeClock) -> None:
    apple.wallet.open_wallet("alice")
    bought = apple.transaction()
    apple.buy(bought)
    later = clock.now() + timedelta(hours=1)
    stranger = AppleChain.make(clock.now())
    send: Callable[..., tuple[int, dict[str, object]]] = lambda *a, **k: apple.notify(notification(*a, **k))  # noqa: E731
    cases = [
        (send(stranger, "REFUND", bought, later), "STORE_CERTIFICATE_INVALID"),
        (send(apple.chain, "REFUND", bought, later, bundle_id="com.example.other"), "STORE_APP_MISMATCH"),
        (send(apple.chain, "REFUND", bought, later, environment="Sandbox"), "STORE_ENVIRONMENT_MISMATCH"),
        (apple.notify(b'{"signedPayload": "x.y.z"}'), "RECEIPT_INVALID"),
        (apple.notify(b"[]"), "INVALID_ARGUMENT"),
    ]
    for (status, answer), reason in cases:
        assert (status, answer["reason"]) == (400, reason)
    assert apple.notify(notification(apple.chain, "TEST", bought, later)) == (200, {"outcome": "ignored"})
    assert apple.wallet.get("alice").balance.total == 700
