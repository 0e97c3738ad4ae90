"""Two-phase spends (hold, capture, release, expiry) as gifting makes them, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2

from services.runtime.errors import from_rpc_error
from tests.wallet.conftest import WalletHarness, new_id, rpc_error


def test_hold_capture_spends_and_holding_again_for_the_gift_returns_the_hold(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_700")
    hold = wallet.hold("gift-1", "alice", 300)
    assert (hold.state, hold.amount, hold.user_id, hold.gift_id) == (wallet_pb2.HOLD_STATE_HELD, 300, "alice", "gift-1")
    assert hold.expire_time.seconds - hold.create_time.seconds == 600  # the default TTL
    balance = wallet.get("alice").balance
    assert (balance.total, balance.held, balance.available) == (700, 300, 400)

    assert wallet.hold("gift-1", "alice", 300) == hold  # another request id, the same gift: the same hold
    mismatch = rpc_error(lambda: wallet.hold("gift-1", "alice", 301))
    assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.ALREADY_EXISTS, "HOLD_MISMATCH")
    wallet.open_wallet("bob")
    assert rpc_error(lambda: wallet.hold("gift-1", "bob", 300)).reason == "HOLD_MISMATCH"

    captured = wallet.capture("gift-1")
    assert captured.state == wallet_pb2.HOLD_STATE_CAPTURED and captured.hold_id == hold.hold_id
    assert wallet.capture("gift-1") == captured  # capturing again returns the captured hold
    balance = wallet.get("alice").balance
    assert (balance.total, balance.held, balance.available) == (400, 0, 400)
    released = rpc_error(lambda: wallet.release("gift-1"))
    assert (released.code, released.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_ALREADY_CAPTURED")


def test_a_gift_held_already_gets_its_hold_even_once_the_wallet_could_not_hold_it_again(
    wallet: WalletHarness,
) -> None:
    """Asked again under another request id (a replica retrying after the ids were reaped) when the
    wallet has nothing left: the gift's hold, not INSUFFICIENT_FUNDS, nor a frozen wallet's refusal."""
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    hold = wallet.hold("gift-1", "alice", 70)
    assert wallet.get("alice").balance.available == 0
    assert wallet.hold("gift-1", "alice", 70) == hold
    assert rpc_error(lambda: wallet.hold("gift-2", "alice", 70)).reason == "INSUFFICIENT_FUNDS"


def test_release_returns_the_coins_and_a_released_hold_cannot_be_captured(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    wallet.hold("gift-1", "alice", 70, ttl_seconds=30)
    released = wallet.release("gift-1")
    assert released.state == wallet_pb2.HOLD_STATE_RELEASED
    assert wallet.release("gift-1") == released
    refused = rpc_error(lambda: wallet.capture("gift-1"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_ALREADY_RELEASED")
    assert wallet.get("alice").balance.available == 70
    missing = rpc_error(lambda: wallet.capture("gift-unknown"))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")


def test_holds_refuse_missing_underage_and_short_wallets(wallet: WalletHarness) -> None:
    missing = rpc_error(lambda: wallet.hold("gift-1", "nobody", 1))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")
    wallet.open_wallet("kid", born=common_pb2.Date(year=wallet.clock.now().year - 12, month=1, day=1))
    underage = rpc_error(lambda: wallet.hold("gift-2", "kid", 1))
    assert (underage.code, underage.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SENDER_UNDERAGE")
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    short = rpc_error(lambda: wallet.hold("gift-3", "alice", 71))
    assert (short.code, short.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert (short.metadata["available"], short.metadata["amount"]) == ("70", "71")


def test_a_business_failure_replays_under_its_request_id(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    request_id = new_id()
    first = rpc_error(lambda: wallet.hold("gift-1", "alice", 100, request_id=request_id))
    assert first.reason == "INSUFFICIENT_FUNDS"
    wallet.buy("alice", "coins_70")  # top up: 140 now
    again = rpc_error(lambda: wallet.hold("gift-1", "alice", 100, request_id=request_id))
    assert (again.code, again.reason, again.metadata) == (first.code, first.reason, first.metadata)
    assert wallet.hold("gift-1", "alice", 100).state == wallet_pb2.HOLD_STATE_HELD  # a new request id


def test_lapsed_holds_expire_back_into_the_wallet(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_350")
    wallet.hold("gift-short", "alice", 100, ttl_seconds=60)
    wallet.hold("gift-long", "alice", 100, ttl_seconds=3600)
    wallet.clock.advance(seconds=59)
    wallet.expire_holds()
    assert wallet.get("alice").balance.held == 200
    wallet.clock.advance(seconds=1)
    wallet.expire_holds()
    assert wallet.get("alice").balance.held == 100
    expired = wallet.release("gift-short")  # releasing an expired hold returns it as it is
    assert expired.state == wallet_pb2.HOLD_STATE_EXPIRED
    kinds = [t.kind for t in wallet.history("alice").transactions]
    assert kinds[0] == wallet_pb2.TRANSACTION_KIND_EXPIRY


def test_capturing_an_expired_hold_still_succeeds_and_records_a_shortfall_as_debt(wallet: WalletHarness) -> None:
    """SPEC §4: once gifting has credited the diamonds, the capture must succeed, even after expiry."""
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_70")
    wallet.hold("gift-late", "alice", 50, ttl_seconds=10)
    wallet.clock.advance(seconds=11)
    wallet.expire_holds()
    assert wallet.get("alice").balance.available == 70
    wallet.hold("gift-other", "alice", 60)  # the returned coins are spent elsewhere meanwhile
    wallet.capture("gift-other")

    late = wallet.capture("gift-late")
    assert (late.state, late.amount) == (wallet_pb2.HOLD_STATE_CAPTURED, 50)
    after = wallet.get("alice")
    assert (after.balance.total, after.debt, after.status) == (0, 40, wallet_pb2.WALLET_STATUS_FROZEN)
    capture = wallet.history("alice").transactions[0]
    assert (capture.kind, capture.total_delta, capture.reference) == (
        wallet_pb2.TRANSACTION_KIND_CAPTURE,
        -10,
        "gift-late",
    )
    assert wallet.capture("gift-late") == late

    settled = wallet.buy("alice", "coins_70").wallet
    assert (settled.debt, settled.balance.total, settled.status) == (0, 30, wallet_pb2.WALLET_STATUS_ACTIVE)


def test_an_expired_hold_covered_by_the_balance_is_captured_without_debt(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_350")
    wallet.hold("gift-late", "alice", 100, ttl_seconds=1)
    wallet.clock.advance(seconds=2)
    wallet.expire_holds()
    wallet.capture("gift-late")
    after = wallet.get("alice")
    assert (after.balance.total, after.debt, after.status) == (250, 0, wallet_pb2.WALLET_STATUS_ACTIVE)


@pytest.mark.timeout(120)
def test_concurrent_holds_never_overspend(wallet: WalletHarness) -> None:
    """50 holds race over real gRPC for a balance that covers only some of them."""
    wallet.open_wallet("alice")
    wallet.buy("alice", "coins_700")
    amount = 30

    def attempt(n: int) -> str:
        try:
            wallet.hold(f"race-{n}", "alice", amount)
            return "HELD"
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            return error.reason if error else str(err)

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count("HELD") == 700 // amount
    assert outcomes.count("INSUFFICIENT_FUNDS") == 50 - 700 // amount
    balance = wallet.get("alice").balance
    assert (balance.total, balance.held, balance.available) == (700, 690, 10)


def test_racing_holds_for_one_gift_make_one_hold(wallet: WalletHarness) -> None:
    """Gifting retrying a step, or two callers disagreeing about a gift: UNIQUE(gift_id) decides."""
    for name in ("alice", "bob"):
        wallet.open_wallet(name)
        wallet.buy(name, "coins_70")

    def attempt(n: int) -> str:
        try:
            return wallet.hold("gift-contested", "alice" if n % 2 else "bob", 10).hold_id
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            return error.reason if error else str(err)

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    hold_ids = {o for o in outcomes if o.startswith("hold_")}
    assert len(hold_ids) == 1
    assert outcomes.count(hold_ids.pop()) == 10 and outcomes.count("HOLD_MISMATCH") == 10
    assert wallet.get("alice").balance.held + wallet.get("bob").balance.held == 10
