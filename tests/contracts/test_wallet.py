"""What gifting expects of wallet's holds (HoldCoins, CaptureHold, ReleaseHold), asked as service:gifting."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.gifting.ports import CaptureOrder, Hold, HoldOrder, StepUncertain
from services.runtime.clock import FakeClock
from services.wallet.app import HOLD_EXPIRY_LOOP
from tests.contracts.conftest import OneAtATimeWallet, Peer, open_wallet, refusal, wallet_balance
from tests.gifting.harness import new_id, refused
from tests.support.identity import as_caller, user


def hold(
    wallet: OneAtATimeWallet, gift_id: str, amount: int, user_id: str = "vince", request_id: str = "", ttl: int = 300
) -> Hold:
    return wallet.hold_coins(HoldOrder(request_id or new_id(), gift_id, user_id, amount, ttl))


def capture(wallet: OneAtATimeWallet, gift_id: str) -> Hold:
    return wallet.capture_hold(CaptureOrder(new_id(), gift_id))


def test_a_hold_reserves_the_amount_until_its_expiry_and_is_one_per_gift(
    wallet: OneAtATimeWallet, wallet_peer: Peer, clock: FakeClock
) -> None:
    open_wallet(wallet_peer, "vince")
    gift, request_id = new_id(), new_id()
    first = hold(wallet, gift, 30, request_id=request_id, ttl=120)
    assert (first.state, first.amount, first.promotional_amount) == ("held", 30, 0)
    assert first.expire_time == clock.now() + timedelta(seconds=120)
    # Asked again (the same step retried, or by another replica under another request id): the same hold.
    assert hold(wallet, gift, 30, request_id=request_id, ttl=120) == first
    assert hold(wallet, gift, 30, ttl=120) == first
    balance = wallet_balance(wallet_peer, "vince")
    assert (balance.total, balance.held, balance.available) == (70, 30, 40)
    # A different hold under the same gift id is refused for certain (gifting's ids never collide).
    mismatch = refusal(lambda: hold(wallet, gift, 31)).error
    assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.ALREADY_EXISTS, "HOLD_MISMATCH")


def test_holds_the_wallet_refuses_carry_the_reasons_gifting_passes_on(
    wallet: OneAtATimeWallet, wallet_peer: Peer
) -> None:
    open_wallet(wallet_peer, "vince")
    open_wallet(wallet_peer, "young", adult=False)
    poor = refusal(lambda: hold(wallet, new_id(), 71)).error
    assert (poor.code, poor.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert (poor.metadata["available"], poor.metadata["amount"]) == ("70", "71")
    minor = refusal(lambda: hold(wallet, new_id(), 1, user_id="young")).error
    assert (minor.code, minor.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SENDER_UNDERAGE")
    nobody = refusal(lambda: hold(wallet, new_id(), 1, user_id="nobody")).error
    assert (nobody.code, nobody.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")
    assert wallet_balance(wallet_peer, "vince").held == 0


def test_capture_spends_once_and_a_captured_hold_cannot_be_released(
    wallet: OneAtATimeWallet, wallet_peer: Peer
) -> None:
    open_wallet(wallet_peer, "vince")
    gift = new_id()
    hold(wallet, gift, 30)
    captured = capture(wallet, gift)
    assert (captured.state, captured.amount) == ("captured", 30)
    assert capture(wallet, gift).state == "captured"  # again: no second spend
    release = refusal(lambda: wallet.release_hold(request_id=new_id(), gift_id=gift)).error
    assert (release.code, release.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_ALREADY_CAPTURED")
    assert (wallet_balance(wallet_peer, "vince").total, wallet_balance(wallet_peer, "vince").held) == (40, 0)


def test_a_released_hold_returns_the_coins_and_cannot_be_captured(wallet: OneAtATimeWallet, wallet_peer: Peer) -> None:
    open_wallet(wallet_peer, "vince")
    gift = new_id()
    hold(wallet, gift, 30)
    assert wallet.release_hold(request_id=new_id(), gift_id=gift).state == "released"
    assert wallet.release_hold(request_id=new_id(), gift_id=gift).state == "released"  # again: as it is
    refused_capture = refusal(lambda: capture(wallet, gift)).error
    assert (refused_capture.code, refused_capture.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_ALREADY_RELEASED",
    )
    unknown = refusal(lambda: wallet.release_hold(request_id=new_id(), gift_id=new_id())).error
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")
    assert wallet_balance(wallet_peer, "vince").available == 70


def test_the_expiring_hold_a_lapsed_hold_is_still_captured_from_the_balance(
    wallet: OneAtATimeWallet, wallet_peer: Peer, clock: FakeClock
) -> None:
    open_wallet(wallet_peer, "vince")
    lapsed, released_late = new_id(), new_id()
    hold(wallet, lapsed, 30, ttl=60)
    hold(wallet, released_late, 10, ttl=60)
    clock.advance(seconds=61)
    next(loop for loop in wallet_peer.server.app.loops if loop.name == HOLD_EXPIRY_LOOP).step()
    assert wallet_balance(wallet_peer, "vince").held == 0
    # Gifting captures only once diamonds are credited, so the capture must succeed regardless.
    captured = capture(wallet, lapsed)
    assert (captured.state, captured.amount) == ("captured", 30)
    assert wallet_balance(wallet_peer, "vince").total == 40
    # Releasing a lapsed hold is not an error: the coins are back already.
    assert wallet.release_hold(request_id=new_id(), gift_id=released_late).state == "expired"


def test_only_gifting_may_hold_and_a_wallet_that_is_down_is_no_answer(
    wallet: OneAtATimeWallet, wallet_peer: Peer
) -> None:
    stub = wallet_pb2_grpc.WalletServiceStub(wallet_peer.plain)
    request = wallet_pb2.HoldCoinsRequest(request_id=new_id(), gift_id=new_id(), user_id="vince", amount=1)
    as_user = refused(lambda: stub.HoldCoins(request, metadata=as_caller(user("vince"))))
    assert as_user.code == grpc.StatusCode.PERMISSION_DENIED
    wallet_peer.server.stop(None)
    with pytest.raises(StepUncertain):
        hold(wallet, new_id(), 1)
