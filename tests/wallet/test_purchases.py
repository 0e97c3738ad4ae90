"""Buying coins with store receipts, refunds and chargebacks, over gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

from functools import partial

import grpc
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2

from services.wallet.app import REAPER_LOOP
from services.wallet.receipts import mint_receipt
from tests.support.identity import as_caller, user
from tests.wallet.conftest import WalletHarness, new_id, rpc_error

ALICE = as_caller(user("alice"))


def test_catalogue_lists_spec_packages_smallest_first(wallet: WalletHarness) -> None:
    packages = wallet.stub.ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(), metadata=ALICE).packages
    assert [(p.package_id, p.coins, p.price.amount_minor, p.price.currency_code) for p in packages] == [
        ("coins_70", 70, 99, "USD"),
        ("coins_350", 350, 499, "USD"),
        ("coins_700", 700, 999, "USD"),
        ("coins_1400", 1400, 1999, "USD"),
        ("coins_3500", 3500, 4999, "USD"),
        ("coins_7000", 7000, 9999, "USD"),
        ("coins_17500", 17500, 24999, "USD"),
    ]
    unsupported = rpc_error(
        lambda: wallet.stub.ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(currency_code="EUR"), metadata=ALICE)
    )
    assert (unsupported.code, unsupported.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CURRENCY_NOT_SUPPORTED")
    assert [v.field for v in unsupported.violations] == ["currency_code"]


def test_a_purchase_credits_the_package_and_replays_identically(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    request = wallet.purchase_request("coins_700", transaction_id="txn-1")
    first = wallet.stub.PurchaseCoins(request, metadata=ALICE)
    assert first.purchase.coins == 700
    assert first.purchase.price.amount_minor == 999 and first.purchase.price.currency_code == "USD"
    assert first.purchase.state == wallet_pb2.PURCHASE_STATE_COMPLETED
    assert first.purchase.store_transaction_id == "txn-1"
    assert first.wallet.balance.total == 700 and first.wallet.balance.purchased == 700

    again = wallet.stub.PurchaseCoins(request, metadata=ALICE)
    assert again.SerializeToString() == first.SerializeToString()
    assert wallet.get("alice").balance.total == 700  # credited once


def test_request_id_reused_for_another_package_is_refused(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    request = wallet.purchase_request("coins_700")
    wallet.stub.PurchaseCoins(request, metadata=ALICE)
    other = wallet.purchase_request("coins_70")
    other.request_id = request.request_id
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(other, metadata=ALICE))
    assert (refused.code, refused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert wallet.get("alice").balance.total == 700


def test_a_receipt_credits_once_ever_even_under_a_new_request_id(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.open_wallet("bob")
    request = wallet.purchase_request("coins_350", transaction_id="txn-once")
    wallet.stub.PurchaseCoins(request, metadata=ALICE)
    request.request_id = new_id()
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (refused.code, refused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "RECEIPT_ALREADY_USED")
    assert refused.metadata["store_transaction_id"] == "txn-once"
    request.request_id = new_id()  # another user replaying the same (unbound) receipt
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(request, metadata=as_caller(user("bob"))))
    assert refused.reason == "RECEIPT_ALREADY_USED"
    assert wallet.get("alice").balance.total == 350
    assert wallet.get("bob").balance.total == 0


def test_an_unverifiable_receipt_is_refused_and_credits_nothing(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    forged = mint_receipt("coins_17500", "txn-forged", key="not-the-sandbox-key")
    tampered = mint_receipt("coins_70", "txn-tampered")
    tampered = tampered[:-2] + ("AA" if not tampered.endswith("AA") else "BB")
    bound_to_bob = mint_receipt("coins_70", "txn-bob", user_id="bob")
    for store, payload, field, reason in [
        ("sandbox", forged, "receipt.payload", "RECEIPT_INVALID"),
        ("sandbox", tampered, "receipt.payload", "RECEIPT_INVALID"),
        ("sandbox", "garbage", "receipt.payload", "RECEIPT_INVALID"),
        ("sandbox", bound_to_bob, "receipt.payload", "RECEIPT_ACCOUNT_MISMATCH"),
        ("appstore", mint_receipt("coins_70"), "receipt.store", "STORE_NOT_SUPPORTED"),
    ]:
        request = wallet_pb2.PurchaseCoinsRequest(
            request_id=new_id(), package_id="coins_70", receipt=wallet_pb2.Receipt(store=store, payload=payload)
        )
        refused = rpc_error(partial(wallet.stub.PurchaseCoins, request, metadata=ALICE))
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), payload
        assert [v.field for v in refused.violations] == [field]
    assert wallet.get("alice").balance.total == 0
    assert wallet.history("alice").transactions == []


def test_a_receipt_for_another_package_is_refused(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    request = wallet.purchase_request("coins_17500", receipt_package="coins_70")
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_PACKAGE_MISMATCH")
    assert refused.metadata["receipt_package_id"] == "coins_70"
    assert wallet.get("alice").balance.total == 0


def test_purchase_needs_a_wallet_and_a_known_package(wallet: WalletHarness) -> None:
    missing = rpc_error(lambda: wallet.buy("nobody"))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")
    wallet.open_wallet("alice")
    unknown = rpc_error(lambda: wallet.buy("alice", "coins_1"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PACKAGE_NOT_FOUND")
    assert [v.field for v in unknown.violations] == ["package_id"]


def test_a_minor_is_refused_before_any_store_is_asked(wallet: WalletHarness) -> None:
    born = common_pb2.Date(year=wallet.clock.now().year - 15, month=1, day=1)
    wallet.open_wallet("teen", born=born)
    # Garbage for a receipt: the store would refuse it, but no store is asked.
    request = wallet_pb2.PurchaseCoinsRequest(
        request_id=new_id(), package_id="coins_70", receipt=wallet_pb2.Receipt(store="sandbox", payload="garbage")
    )
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(request, metadata=as_caller(user("teen"))))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PURCHASER_UNDERAGE")
    assert refused.metadata["user_id"] == "teen"
    assert wallet.get("teen").balance.total == 0


def test_refund_takes_coins_back_spent_coins_become_debt_and_purchases_settle_it(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    bought = wallet.buy("alice", "coins_700").purchase
    wallet.hold("gift-1", "alice", 500)
    wallet.capture("gift-1")
    wallet.hold("gift-2", "alice", 50)  # held coins are not taken back: the gift may still complete

    refunded = wallet.refund(bought.store_transaction_id)
    assert refunded.purchase.state == wallet_pb2.PURCHASE_STATE_REFUNDED
    assert (refunded.coins_reclaimed, refunded.debt_added) == (150, 550)
    assert refunded.wallet.status == wallet_pb2.WALLET_STATUS_FROZEN
    assert refunded.wallet.debt == 550
    assert refunded.wallet.balance.total == 50 and refunded.wallet.balance.available == 0

    frozen = rpc_error(lambda: wallet.hold("gift-3", "alice", 1))
    assert (frozen.code, frozen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN")

    # The held gift still completes; releasing instead would have paid 50 off the debt.
    wallet.capture("gift-2")
    after_350 = wallet.buy("alice", "coins_350").wallet
    assert (after_350.debt, after_350.balance.total, after_350.status) == (200, 0, wallet_pb2.WALLET_STATUS_FROZEN)
    after_700 = wallet.buy("alice", "coins_700").wallet
    assert (after_700.debt, after_700.balance.total, after_700.status) == (0, 500, wallet_pb2.WALLET_STATUS_ACTIVE)
    assert wallet.hold("gift-4", "alice", 500).state == wallet_pb2.HOLD_STATE_HELD

    kinds = [t.kind for t in wallet.history("alice").transactions]
    assert kinds.count(wallet_pb2.TRANSACTION_KIND_DEBT_SETTLEMENT) == 2
    assert wallet_pb2.TRANSACTION_KIND_REFUND in kinds


def test_a_purchase_is_refunded_once(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    bought = wallet.buy("alice", "coins_70").purchase
    charged_back = wallet.refund(bought.store_transaction_id, wallet_pb2.REFUND_KIND_CHARGEBACK)
    assert charged_back.purchase.state == wallet_pb2.PURCHASE_STATE_CHARGED_BACK
    assert (charged_back.coins_reclaimed, charged_back.debt_added) == (70, 0)
    assert charged_back.wallet.status == wallet_pb2.WALLET_STATUS_ACTIVE
    twice = rpc_error(lambda: wallet.refund(bought.store_transaction_id))
    assert (twice.code, twice.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PURCHASE_ALREADY_REFUNDED")
    unknown = rpc_error(lambda: wallet.refund("txn-never-sold"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "PURCHASE_NOT_FOUND")
    assert wallet.get("alice").balance.total == 0


def test_a_wallet_opens_once_and_knows_its_owner_is_adult(wallet: WalletHarness) -> None:
    opened = wallet.open_wallet("alice")
    assert (opened.user_id, opened.country_code, opened.adult) == ("alice", "US", True)
    assert opened.status == wallet_pb2.WALLET_STATUS_ACTIVE
    again = rpc_error(lambda: wallet.open_wallet("alice"))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "WALLET_ALREADY_EXISTS")
    missing = rpc_error(lambda: wallet.get("nobody"))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")


def test_reaped_request_ids_cannot_make_a_receipt_credit_twice(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    request = wallet.purchase_request("coins_70")
    wallet.stub.PurchaseCoins(request, metadata=ALICE)
    wallet.clock.advance(hours=25)  # past the 24-hour retention
    wallet.loop(REAPER_LOOP).step()
    # The id is forgotten, so the same request runs again: the receipt's constraint still refuses it.
    refused = rpc_error(lambda: wallet.stub.PurchaseCoins(request, metadata=ALICE))
    assert refused.reason == "RECEIPT_ALREADY_USED"
    assert wallet.get("alice").balance.total == 70
