"""Who may call what, and bad input: always the right code with a reason, never UNKNOWN or INTERNAL."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2
from google.protobuf.message import Message

from services.runtime.auth import DEV_ISSUER_KEY_ID, Caller, TokenSigner, dev_token
from tests.support.identity import as_caller, operator, service, user
from tests.wallet.conftest import GIFTING, OPERATOR, WalletHarness, new_id, rpc_error

ALICE = user("alice")


def _calls(wallet: WalletHarness) -> dict[str, tuple[Callable[..., Any], Message]]:
    s = wallet.stub
    return {
        "OpenWallet": (
            s.OpenWallet,
            wallet_pb2.OpenWalletRequest(
                request_id=new_id(), date_of_birth=common_pb2.Date(year=1990, month=1, day=1), country_code="US"
            ),
        ),
        "GetWallet": (s.GetWallet, wallet_pb2.GetWalletRequest()),
        "PurchaseCoins": (s.PurchaseCoins, wallet.purchase_request("coins_70")),
        "ClaimPromotion": (s.ClaimPromotion, wallet_pb2.ClaimPromotionRequest(request_id=new_id(), promotion_id="p")),
        "ListTransactions": (s.ListTransactions, wallet_pb2.ListTransactionsRequest()),
        "RefundPurchase": (
            s.RefundPurchase,
            wallet_pb2.RefundPurchaseRequest(
                request_id=new_id(), store="sandbox", store_transaction_id="t", kind=wallet_pb2.REFUND_KIND_REFUND
            ),
        ),
        "CreatePromotion": (s.CreatePromotion, wallet_pb2.CreatePromotionRequest(request_id=new_id())),
        "HoldCoins": (
            s.HoldCoins,
            wallet_pb2.HoldCoinsRequest(request_id=new_id(), gift_id="g", user_id="alice", amount=1),
        ),
        "CaptureHold": (s.CaptureHold, wallet_pb2.CaptureHoldRequest(request_id=new_id(), gift_id="g")),
        "ReleaseHold": (s.ReleaseHold, wallet_pb2.ReleaseHoldRequest(request_id=new_id(), gift_id="g")),
    }


FORBIDDEN: list[tuple[str, Caller]] = [
    *[(rpc, caller) for rpc in ("HoldCoins", "CaptureHold", "ReleaseHold") for caller in (ALICE, OPERATOR)],
    *[(rpc, service("payout")) for rpc in ("HoldCoins", "CaptureHold", "ReleaseHold")],
    *[(rpc, caller) for rpc in ("RefundPurchase", "CreatePromotion") for caller in (ALICE, GIFTING)],
    *[
        (rpc, caller)
        for rpc in ("OpenWallet", "GetWallet", "PurchaseCoins", "ClaimPromotion", "ListTransactions")
        for caller in (OPERATOR, GIFTING)
    ],
]


def test_each_rpc_refuses_callers_it_is_not_for(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    calls = _calls(wallet)
    for rpc, caller in FORBIDDEN:
        method, request = calls[rpc]
        denied = rpc_error(partial(method, request, metadata=as_caller(caller)))
        assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), (rpc, caller)
    # A user cannot reach another's coins: holds are gifting's, and user RPCs act on the caller only.
    denied = rpc_error(lambda: wallet.hold("g-bob", "alice", 1, caller=user("bob")))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(lambda: wallet.get("bob")).reason == "WALLET_NOT_FOUND"
    assert wallet.get("alice").balance.total == 70


def test_calls_without_a_valid_token_are_unauthenticated(wallet: WalletHarness) -> None:
    calls = _calls(wallet)
    stranger = TokenSigner(Ed25519PrivateKey.generate(), DEV_ISSUER_KEY_ID)  # not the key the wallet trusts
    forged = (("authorization", f"Bearer {stranger.mint(ALICE)}"),)
    expired = (("authorization", f"Bearer {dev_token(ALICE, ttl_seconds=-60)}"),)
    for rpc, (method, request) in calls.items():
        for metadata in [(), (("authorization", "Basic abc"),), forged, expired]:
            refused = rpc_error(partial(method, request, metadata=metadata))
            assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), rpc
    # ListCoinPackages is open to anyone, but "anyone" still presents a token.
    packages = wallet.stub.ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(), metadata=as_caller(service("edge")))
    assert len(packages.packages) == 7


def _bad_requests(wallet: WalletHarness) -> list[tuple[str, Caller, Message, str]]:
    """(rpc, caller, request, the field BadRequest must name)."""
    dob = common_pb2.Date(year=1990, month=1, day=1)
    receipt = wallet.purchase_request("coins_70").receipt
    long_id = "x" * 129
    hold = wallet_pb2.HoldCoinsRequest
    promotion = wallet_pb2.CreatePromotionRequest(
        request_id=new_id(), promotion_id="p1", name="P", coins_per_claim=10, budget=100
    )
    promotion.start_time.FromSeconds(1_800_000_000)
    promotion.end_time.FromSeconds(1_800_086_400)

    def with_promotion(**changes: Any) -> wallet_pb2.CreatePromotionRequest:
        changed = wallet_pb2.CreatePromotionRequest()
        changed.CopyFrom(promotion)
        for name, value in changes.items():
            if value is None:
                changed.ClearField(name)  # type: ignore[arg-type]
            elif isinstance(value, Message):
                getattr(changed, name).CopyFrom(value)
            else:
                setattr(changed, name, value)
        return changed

    return [
        ("OpenWallet", ALICE, wallet_pb2.OpenWalletRequest(date_of_birth=dob, country_code="US"), "request_id"),
        (
            "OpenWallet",
            ALICE,
            wallet_pb2.OpenWalletRequest(request_id="not-a-uuid", date_of_birth=dob, country_code="US"),
            "request_id",
        ),
        ("OpenWallet", ALICE, wallet_pb2.OpenWalletRequest(request_id=new_id(), country_code="US"), "date_of_birth"),
        (
            "OpenWallet",
            ALICE,
            wallet_pb2.OpenWalletRequest(
                request_id=new_id(), date_of_birth=common_pb2.Date(year=1990, month=2, day=30), country_code="US"
            ),
            "date_of_birth",
        ),
        (
            "OpenWallet",
            ALICE,
            wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=dob, country_code="usa"),
            "country_code",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id="coins_70"),
            "receipt",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id="", receipt=receipt),
            "package_id",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id="coins_999", receipt=receipt),
            "package_id",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id="coins 70", receipt=receipt),
            "package_id",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(
                request_id=new_id(),
                package_id="coins_70",
                receipt=wallet_pb2.Receipt(store="sandbox", payload="x" * 20_000),
            ),
            "receipt.payload",
        ),
        (
            "PurchaseCoins",
            ALICE,
            wallet_pb2.PurchaseCoinsRequest(
                request_id=new_id(), package_id="coins_70", currency_code="dollars", receipt=receipt
            ),
            "currency_code",
        ),
        (
            "ClaimPromotion",
            ALICE,
            wallet_pb2.ClaimPromotionRequest(request_id=new_id(), promotion_id=long_id),
            "promotion_id",
        ),
        ("ListTransactions", ALICE, wallet_pb2.ListTransactionsRequest(page_size=-1), "page_size"),
        ("ListTransactions", ALICE, wallet_pb2.ListTransactionsRequest(page_token="!!not-a-token"), "page_token"),
        ("ListTransactions", ALICE, wallet_pb2.ListTransactionsRequest(page_token="eyJ4IjogMX0="), "page_token"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id="g", user_id="alice", amount=0), "amount"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id="g", user_id="alice", amount=-5), "amount"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id="g", user_id="alice", amount=10**15), "amount"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id="", user_id="alice", amount=1), "gift_id"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id=long_id, user_id="alice", amount=1), "gift_id"),
        ("HoldCoins", GIFTING, hold(request_id=new_id(), gift_id="g", user_id="", amount=1), "user_id"),
        (
            "HoldCoins",
            GIFTING,
            hold(request_id=new_id(), gift_id="g", user_id="alice", amount=1, ttl_seconds=3601),
            "ttl_seconds",
        ),
        (
            "HoldCoins",
            GIFTING,
            hold(request_id=new_id(), gift_id="g", user_id="alice", amount=1, ttl_seconds=-1),
            "ttl_seconds",
        ),
        ("CaptureHold", GIFTING, wallet_pb2.CaptureHoldRequest(request_id=new_id()), "gift_id"),
        ("ReleaseHold", GIFTING, wallet_pb2.ReleaseHoldRequest(gift_id="g"), "request_id"),
        (
            "RefundPurchase",
            OPERATOR,
            wallet_pb2.RefundPurchaseRequest(request_id=new_id(), store="sandbox", store_transaction_id="t"),
            "kind",
        ),
        (
            "RefundPurchase",
            OPERATOR,
            wallet_pb2.RefundPurchaseRequest(request_id=new_id(), store="sandbox", kind=wallet_pb2.REFUND_KIND_REFUND),
            "store_transaction_id",
        ),
        ("CreatePromotion", OPERATOR, with_promotion(coins_per_claim=0), "coins_per_claim"),
        ("CreatePromotion", OPERATOR, with_promotion(budget=-1), "budget"),
        ("CreatePromotion", OPERATOR, with_promotion(budget=5), "budget"),
        ("CreatePromotion", OPERATOR, with_promotion(name="n" * 300), "name"),
        ("CreatePromotion", OPERATOR, with_promotion(name=" "), "name"),
        ("CreatePromotion", OPERATOR, with_promotion(promotion_id="bad id"), "promotion_id"),
        ("CreatePromotion", OPERATOR, with_promotion(start_time=None), "start_time"),
        ("CreatePromotion", OPERATOR, with_promotion(end_time=promotion.start_time), "end_time"),
    ]


def test_bad_input_is_invalid_argument_naming_the_field(wallet: WalletHarness) -> None:
    calls = _calls(wallet)
    for rpc, caller, request, field in _bad_requests(wallet):
        method = calls[rpc][0]
        refused = rpc_error(partial(method, request, metadata=as_caller(caller)))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, field, refused)
        assert field in [v.field for v in refused.violations], (rpc, field, refused)
    # Every violation at once, not the first only.
    everything = rpc_error(
        lambda: wallet.stub.HoldCoins(wallet_pb2.HoldCoinsRequest(amount=-1), metadata=as_caller(GIFTING))
    )
    assert {v.field for v in everything.violations} == {"request_id", "gift_id", "user_id", "amount"}


def test_a_user_id_that_cannot_be_an_account_is_refused(wallet: WalletHarness) -> None:
    # A subject whose id no account could have is not a valid token (and never reaches a column).
    for odd in (user("has spaces/and slashes"), user("nul\0"), user("x" * 129), operator("line\n")):
        refused = rpc_error(partial(wallet.stub.GetWallet, wallet_pb2.GetWalletRequest(), metadata=as_caller(odd)))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
