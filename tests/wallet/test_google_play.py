"""Google Play purchases and refunds through a real wallet, verified against a local HTTP server that
answers as the Play Developer API documents, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from giftcoin.wallet.v1 import wallet_pb2

from services.giftctl.suite import free_port
from services.runtime.clock import FakeClock
from services.wallet.app import GOOGLE_PLAY_LOOP
from services.wallet.model import account_token
from tests.support.identity import as_caller, user
from tests.support.play_api import PACKAGE_NAME, PRODUCTS, PlayApi, serving
from tests.wallet.conftest import WalletHarness, new_id, rpc_error, running_wallet

ALICE = as_caller(user("alice"))
PUSH_TOKEN = "push-secret"


@dataclass
class GooglePlay:
    wallet: WalletHarness
    api: PlayApi
    notifications_url: str

    def request(
        self, token: str, product_id: str = "coins_700_play", package_id: str = "coins_700"
    ) -> wallet_pb2.PurchaseCoinsRequest:
        payload = json.dumps(
            {"orderId": "GPA.1", "packageName": PACKAGE_NAME, "productId": product_id, "purchaseToken": token}
        )
        receipt = wallet_pb2.Receipt(store="google_play", payload=payload)
        return wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id=package_id, receipt=receipt)

    def buy(self, token: str, user_id: str = "alice") -> wallet_pb2.PurchaseCoinsResponse:
        return self.wallet.stub.PurchaseCoins(self.request(token), metadata=as_caller(user(user_id)))

    def sync(self) -> None:
        self.wallet.loop(GOOGLE_PLAY_LOOP).step()

    def push(self, notification: Mapping[str, object], token: str = PUSH_TOKEN) -> tuple[int, dict[str, object]]:
        """A Real-time Developer Notification as Pub/Sub pushes it."""
        data = base64.b64encode(json.dumps(notification).encode()).decode()
        body = {
            "message": {"data": data, "messageId": new_id(), "publishTime": "2026-01-01T12:00:00Z"},
            "subscription": "projects/p/subscriptions/rtdn",
        }
        request = urllib.request.Request(
            f"{self.notifications_url}?token={token}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def voided_notification(self, token: str, event_ms: int) -> dict[str, object]:
        return {
            "version": "1.0",
            "packageName": PACKAGE_NAME,
            "eventTimeMillis": str(event_ms),
            "voidedPurchaseNotification": {
                "purchaseToken": token,
                "orderId": "GPA.x",
                "productType": 2,
                "refundType": 1,
            },
        }


def _millis(play: GooglePlay, after: timedelta) -> int:
    return int((play.wallet.clock.now() + after).timestamp() * 1000)


@pytest.fixture
def play(wallet_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[GooglePlay]:
    port = free_port()
    with serving(PlayApi()) as api:
        env = {
            "GIFTCOIN_WALLET_GOOGLE_PLAY_PACKAGE_NAME": PACKAGE_NAME,
            "GIFTCOIN_WALLET_GOOGLE_PLAY_PRODUCTS": json.dumps(PRODUCTS),
            "GIFTCOIN_WALLET_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE": str(api.write_service_account(tmp_path / "sa.json")),
            "GIFTCOIN_WALLET_GOOGLE_PLAY_API_URL": api.url,
            "GIFTCOIN_WALLET_GOOGLE_PLAY_PUSH_TOKEN": PUSH_TOKEN,
            "GIFTCOIN_WALLET_GOOGLE_PLAY_SYNC_INTERVAL_SECONDS": "3600",
            "GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT": str(port),
        }
        with running_wallet(wallet_url, clock, **env) as wallet:
            yield GooglePlay(wallet, api, f"http://127.0.0.1:{port}/google-play/notifications")


def test_a_purchased_token_credits_once_and_is_consumed_at_the_store(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    token = play.api.purchase(account_token("alice"), order_id="GPA.1111-2222-3333-44444")
    request = play.request(token)
    first = play.wallet.stub.PurchaseCoins(request, metadata=ALICE)
    assert (first.purchase.store, first.purchase.store_transaction_id, first.purchase.coins) == (
        "google_play",
        token,
        700,
    )
    assert (first.purchase.price.amount_minor, first.purchase.price.currency_code) == (999, "USD")  # the catalogue's
    play.api.down = True  # a replayed request is answered without asking Google
    assert play.wallet.stub.PurchaseCoins(request, metadata=ALICE) == first
    play.api.down = False
    assert play.api.consumed == []  # consumed once committed, by the sync loop
    play.sync()
    assert play.api.consumed == [token]
    play.sync()
    assert play.api.consumed == [token]  # once
    request.request_id = new_id()
    again = rpc_error(lambda: play.wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "RECEIPT_ALREADY_USED")
    # Another token under the same order id credits nothing either.
    twin = play.api.purchase(account_token("alice"), order_id="GPA.1111-2222-3333-44444")
    twice = rpc_error(lambda: play.buy(twin))
    assert twice.reason == "RECEIPT_ALREADY_USED"
    assert play.wallet.get("alice").balance.total == 700


def test_tokens_google_does_not_vouch_for_are_refused_with_their_reason(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    mine = account_token("alice")
    cases = [
        (play.request(play.api.purchase(mine, state=2)), "RECEIPT_PENDING", grpc.StatusCode.FAILED_PRECONDITION),
        (play.request(play.api.purchase(mine, state=1)), "RECEIPT_REVOKED", grpc.StatusCode.FAILED_PRECONDITION),
        (
            play.request(play.api.purchase(mine, consumed=True)),
            "RECEIPT_ALREADY_CONSUMED",
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            play.request(play.api.purchase(mine, test=True)),
            "STORE_ENVIRONMENT_MISMATCH",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            play.request(play.api.purchase(account_token("bob"))),
            "RECEIPT_ACCOUNT_MISMATCH",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (play.request(play.api.purchase("")), "RECEIPT_ACCOUNT_MISMATCH", grpc.StatusCode.INVALID_ARGUMENT),
        (play.request("tok-never-sold"), "RECEIPT_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        (play.request("tok", product_id="gems_play"), "RECEIPT_PRODUCT_UNKNOWN", grpc.StatusCode.INVALID_ARGUMENT),
        (
            play.request(play.api.purchase(mine, product_id="coins_70_play"), product_id="coins_70_play"),
            "RECEIPT_PACKAGE_MISMATCH",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, reason, code in cases:
        refused = rpc_error(partial(play.wallet.stub.PurchaseCoins, request, metadata=ALICE))
        assert (refused.code, refused.reason) == (code, reason), reason
    assert play.wallet.get("alice").balance.total == 0
    play.sync()
    assert play.api.consumed == []


def test_a_store_that_does_not_answer_is_unavailable_and_retryable(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    token = play.api.purchase(account_token("alice"))
    request = play.request(token)
    key = play.api.key
    play.api.down = True
    refused = rpc_error(lambda: play.wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert play.wallet.get("alice").balance.total == 0
    play.api.down = False
    play.api.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # the wallet's key revoked
    refused = rpc_error(lambda: play.wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    play.api.key = key
    # The same request again, once Google answers.
    assert play.wallet.stub.PurchaseCoins(request, metadata=ALICE).wallet.balance.total == 700


def test_a_voided_purchase_notification_refunds_once(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    token = play.api.purchase(account_token("alice"))
    play.buy(token)
    play.wallet.hold("gift-1", "alice", 500)
    play.wallet.capture("gift-1")
    voided_ms = _millis(play, timedelta(hours=1))
    play.wallet.clock.advance(hours=2)
    play.api.void(token, voided_ms, reason=7)  # a chargeback
    status, answer = play.push(play.voided_notification(token, voided_ms))
    assert (status, answer["outcomes"]) == (200, ["applied"])
    wallet = play.wallet.get("alice")
    assert (wallet.balance.total, wallet.debt, wallet.status) == (0, 500, wallet_pb2.WALLET_STATUS_FROZEN)
    assert play.push(play.voided_notification(token, voided_ms))[1]["outcomes"] == ["duplicate"]
    play.sync()  # the loop reads the same voided purchase: nothing twice
    assert play.wallet.get("alice").debt == 500
    history = play.wallet.history("alice").transactions
    assert [t.kind for t in history].count(wallet_pb2.TRANSACTION_KIND_REFUND) == 1


def test_the_sync_loop_applies_voided_purchases_no_notification_announced(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    tokens = [play.api.purchase(account_token("alice"), product_id="coins_70_play") for _ in range(3)]
    for token in tokens:
        request = play.request(token, product_id="coins_70_play", package_id="coins_70")
        play.wallet.stub.PurchaseCoins(request, metadata=ALICE)
    play.wallet.clock.advance(hours=1)
    for token in tokens:  # three voided purchases: two pages of the API's list
        play.api.void(token, _millis(play, timedelta(minutes=-30)))
    play.sync()
    wallet = play.wallet.get("alice")
    assert (wallet.balance.total, wallet.debt) == (0, 0)


def test_pushes_without_the_token_or_for_another_app_change_nothing(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    token = play.api.purchase(account_token("alice"))
    play.buy(token)
    voided_ms = _millis(play, timedelta(0))
    play.api.void(token, voided_ms)
    assert play.push(play.voided_notification(token, voided_ms), token="guess")[0] == 403
    other_app = {**play.voided_notification(token, voided_ms), "packageName": "com.example.other"}
    status, answer = play.push(other_app)
    assert (status, answer["reason"]) == (400, "STORE_APP_MISMATCH")
    test_notification = {
        "version": "1.0",
        "packageName": PACKAGE_NAME,
        "eventTimeMillis": "1",
        "testNotification": {"version": "1.0"},
    }
    assert play.push(test_notification) == (200, {"outcome": "ignored"})
    assert play.wallet.get("alice").balance.total == 700


def test_a_purchase_voided_before_it_was_consumed_is_refunded_and_left_alone(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    token = play.api.purchase(account_token("alice"))
    play.buy(token)
    play.wallet.clock.advance(minutes=10)
    play.api.void(token, _millis(play, timedelta(minutes=-5)))
    play.sync()  # consuming is refused (cancelled): nothing left to consume; the voided list refunds it
    assert play.api.consumed == []
    assert play.wallet.get("alice").balance.total == 0
    consumes = [c for c in play.api.calls if c.endswith(":consume")]
    play.sync()
    assert [c for c in play.api.calls if c.endswith(":consume")] == consumes  # not tried again


def test_a_silent_store_holds_up_purchases_only_never_the_holds_gifting_asks_for(play: GooglePlay) -> None:
    play.wallet.open_wallet("alice")
    play.buy(play.api.purchase(account_token("alice")))  # 700 coins to hold
    play.api.silent_seconds = 3.0  # Google stops answering in time
    purchases = [play.request(play.api.purchase(account_token("alice"))) for _ in range(24)]  # more than threads
    credited: list[int] = []

    def buy(request: wallet_pb2.PurchaseCoinsRequest) -> None:
        credited.append(play.wallet.stub.PurchaseCoins(request, metadata=ALICE, timeout=60).purchase.coins)

    threads = [threading.Thread(target=buy, args=(request,)) for request in purchases]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # every purchase waits on Google
    for _ in range(5):  # gifting's holds do not wait for them
        started = time.monotonic()
        play.wallet.hold(new_id(), "alice", 1)
        assert time.monotonic() - started < 1.5
    for thread in threads:
        thread.join(60)
    assert credited == [700] * 24  # the purchases were slow, not lost
