"""Promotions: a budget that cannot be overspent, one claim per user, a time window; promotional coins first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from giftcoin.wallet.v1 import wallet_pb2
from sqlalchemy import select

from services.runtime.db import Database
from services.runtime.errors import from_rpc_error
from services.wallet import model, storage
from tests.wallet.conftest import WalletHarness, rpc_error


def test_a_promotion_grants_its_coins_once_per_user(wallet: WalletHarness) -> None:
    promotion = wallet.create_promotion("welcome", coins_per_claim=25, budget=1000)
    assert (promotion.promotion_id, promotion.budget, promotion.remaining) == ("welcome", 1000, 1000)
    again = rpc_error(lambda: wallet.create_promotion("welcome", coins_per_claim=1, budget=1))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PROMOTION_ALREADY_EXISTS")

    wallet.open_wallet("alice")
    claimed = wallet.claim("alice", "welcome")
    assert claimed.coins_granted == 25
    assert (claimed.wallet.balance.total, claimed.wallet.balance.promotional) == (25, 25)
    assert claimed.wallet.balance.purchased == 0
    twice = rpc_error(lambda: wallet.claim("alice", "welcome"))
    assert (twice.code, twice.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PROMOTION_ALREADY_CLAIMED")
    unknown = rpc_error(lambda: wallet.claim("alice", "no-such-promotion"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "PROMOTION_NOT_FOUND")
    assert wallet.get("alice").balance.total == 25


def test_claims_only_inside_the_promotion_window(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.open_wallet("bob")
    wallet.create_promotion("weekend", coins_per_claim=10, budget=100, hours=48)
    wallet.clock.advance(hours=48)  # end_time is exclusive
    late = rpc_error(lambda: wallet.claim("alice", "weekend"))
    assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROMOTION_NOT_ACTIVE")
    wallet.create_promotion("next-week", coins_per_claim=10, budget=100)
    wallet.clock.advance(hours=-1)  # before its start
    early = rpc_error(lambda: wallet.claim("bob", "next-week"))
    assert early.reason == "PROMOTION_NOT_ACTIVE"
    assert wallet.get("alice").balance.total == 0 and wallet.get("bob").balance.total == 0


def test_concurrent_claims_never_overspend_the_budget(wallet: WalletHarness) -> None:
    users = [f"user-{n}" for n in range(16)]
    for name in users:
        wallet.open_wallet(name)
    wallet.create_promotion("flash", coins_per_claim=30, budget=200)  # room for 6 claims, 20 coins left

    def attempt(name: str) -> str:
        try:
            wallet.claim(name, "flash")
            return "GRANTED"
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            return error.reason if error else str(err)

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, users))
    assert outcomes.count("GRANTED") == 6
    assert outcomes.count("PROMOTION_BUDGET_EXHAUSTED") == 10
    assert sum(wallet.get(name).balance.promotional for name in users) == 180


def test_promotional_coins_are_held_and_spent_first_and_the_ledger_says_so(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.create_promotion("welcome", coins_per_claim=40, budget=1000)
    wallet.claim("alice", "welcome")
    wallet.buy("alice", "coins_70")

    hold = wallet.hold("gift-1", "alice", 50)
    assert (hold.amount, hold.promotional_amount) == (50, 40)
    wallet.capture("gift-1")
    balance = wallet.get("alice").balance
    assert (balance.total, balance.promotional, balance.purchased) == (60, 0, 60)

    newest = wallet.history("alice").transactions[0]
    assert (newest.kind, newest.total_delta, newest.promotional_delta) == (
        wallet_pb2.TRANSACTION_KIND_CAPTURE,
        -50,
        -40,
    )
    # The capture's own ledger transfer: 40 promotional and 10 paid-for coins spent.
    db = Database.from_url(wallet.database_url, pool_size=1)
    try:
        with db.transaction() as conn:
            e = storage.ledger.entries
            spent: dict[str, int] = {
                row.account: row.amount
                for row in conn.execute(
                    select(e.c.account, e.c.amount).where(
                        e.c.transfer_id == newest.transaction_id,
                        e.c.account.in_([model.SPENT_PROMOTIONAL, model.SPENT_PURCHASED]),
                    )
                )
            }
    finally:
        db.dispose()
    assert spent == {model.SPENT_PROMOTIONAL: 40, model.SPENT_PURCHASED: 10}


def test_a_frozen_wallet_may_still_claim_but_not_spend(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    bought = wallet.buy("alice", "coins_70").purchase
    wallet.hold("gift-1", "alice", 70)
    wallet.capture("gift-1")
    wallet.refund(bought.store_transaction_id)
    wallet.create_promotion("welcome", coins_per_claim=10, budget=100)
    claimed = wallet.claim("alice", "welcome").wallet
    assert (claimed.status, claimed.debt, claimed.balance.promotional) == (wallet_pb2.WALLET_STATUS_FROZEN, 70, 10)
    assert rpc_error(lambda: wallet.hold("gift-2", "alice", 10)).reason == "WALLET_FROZEN"
