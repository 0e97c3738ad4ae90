"""The check at the end of a run: value was conserved across the three services.

Read through the public RPCs (every viewer's wallet, every creator's earnings) and from each service's
own books (its ledger's invariants, gifting's transfers, wallet's holds, payout's credits):
- coins the viewers no longer have = coins of completed gifts = coins captured;
- diamonds the creators have = diamonds of completed gifts = diamonds credited;
- no gift left pending, no hold left HELD, each ledger sound (runtime.ledger.ledger_problems);
- and the reconciler (services/reconciler), through the services' RPCs alone, finds no discrepancy
  over the run's window, its money summary agreeing with the figures above.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from sqlalchemy import func, select

from bench.suite import Population, Suite, metadata_for
from services import reconciler
from services.gifting import model as gifting_model
from services.gifting import storage as gifting_storage
from services.payout import storage as payout_storage
from services.runtime.auth import dev_token
from services.runtime.db import Database, make_engine
from services.runtime.ledger import ledger_problems
from services.wallet import model as wallet_model
from services.wallet import storage as wallet_storage


@dataclass
class Conservation:
    reconciled: int = 0  # gifts the reconciler checked gift by gift, with no discrepancy found
    completed: int = 0
    failed: int = 0
    coins_spent: int = 0  # what the viewers' wallets lost
    coins_of_completed: int = 0
    coins_captured: int = 0
    diamonds_held: int = 0  # what the creators' earnings show
    diamonds_of_completed: int = 0
    diamonds_credited: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(url: str, work: Callable[[Any], Any]) -> Any:
    db = Database(make_engine(url, pool_size=1))
    try:
        with db.transaction() as conn:
            return work(conn)
    finally:
        db.dispose()


def wait_settled(gifting_url: str, timeout: float) -> int:
    """Wait for recovery to finish every pending gift; returns how many are still pending."""
    t = gifting_storage.gift_transfers
    deadline = time.monotonic() + timeout
    while True:
        pending = _read(
            gifting_url,
            lambda c: c.execute(select(func.count()).where(t.c.state == gifting_model.PENDING)).scalar_one(),
        )
        if pending == 0 or time.monotonic() > deadline:
            return int(pending)
        time.sleep(0.5)


async def _public_balances(suite: Suite, population: Population) -> tuple[int, int, int]:
    """(coins the viewers hold, coins held by holds, diamonds the creators hold), asked of the services."""
    async with (
        grpc.aio.insecure_channel(suite.target("wallet")) as wallet_channel,
        grpc.aio.insecure_channel(suite.target("payout")) as payout_channel,
    ):
        wallet = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        payout = payout_pb2_grpc.PayoutServiceStub(payout_channel)
        gate = asyncio.Semaphore(32)

        async def balance(user_id: str) -> wallet_pb2.Balance:
            async with gate:
                reply = await wallet.GetWallet(
                    wallet_pb2.GetWalletRequest(), metadata=metadata_for(user_id), timeout=30
                )
                return reply.wallet.balance

        async def diamonds(user_id: str) -> int:
            async with gate:
                request = payout_pb2.GetEarningsRequest()
                reply = await payout.GetEarnings(request, metadata=metadata_for(user_id), timeout=30)
                return int(reply.diamond_balance + reply.pending_diamonds)

        balances = await asyncio.gather(*(balance(v) for v in population.viewers))
        earned = await asyncio.gather(*(diamonds(c) for c in population.creators))
    return sum(b.total for b in balances), sum(b.held for b in balances), sum(earned)


def check(
    suite: Suite, population: Population, since: datetime | None = None, settle_timeout: float = 60.0
) -> Conservation:
    """Conservation over the whole run; the reconciler over the gifts recorded since `since` (every one
    when None)."""
    result = Conservation()
    pending = wait_settled(suite.urls["gifting"], settle_timeout)
    if pending:
        result.problems.append(f"{pending} gifts still pending after {settle_timeout:.0f}s")
    t = gifting_storage.gift_transfers
    transfers = _read(
        suite.urls["gifting"],
        lambda c: c.execute(select(t.c.transfer_id, t.c.state, t.c.total_coins, t.c.total_diamonds)).all(),
    )
    holds = _read(suite.urls["wallet"], lambda c: c.execute(select(wallet_storage.holds)).all())
    credits = _read(suite.urls["payout"], lambda c: c.execute(select(payout_storage.diamond_credits)).all())
    result.problems += [
        f"wallet ledger: {p}" for p in _read(suite.urls["wallet"], lambda c: ledger_problems(wallet_storage.ledger, c))
    ]
    result.problems += [
        f"payout ledger: {p}" for p in _read(suite.urls["payout"], lambda c: ledger_problems(payout_storage.ledger, c))
    ]
    completed = [tr for tr in transfers if tr.state == gifting_model.COMPLETED]
    completed_ids = {tr.transfer_id for tr in completed}
    result.completed = len(completed)
    result.failed = sum(tr.state == gifting_model.FAILED for tr in transfers)
    result.coins_of_completed = sum(tr.total_coins for tr in completed)
    result.diamonds_of_completed = sum(tr.total_diamonds for tr in completed)
    result.coins_captured = sum(h.amount for h in holds if h.state == wallet_model.CAPTURED)
    result.diamonds_credited = sum(c.diamonds for c in credits)
    still_held = sum(h.state == wallet_model.HELD for h in holds)
    if still_held:
        result.problems.append(f"{still_held} holds still HELD")
    captured_not_completed = [
        h.gift_id for h in holds if h.state == wallet_model.CAPTURED and h.gift_id not in completed_ids
    ]
    if captured_not_completed:
        result.problems.append(f"{len(captured_not_completed)} holds captured for gifts not completed")
    credited_not_completed = [c.gift_id for c in credits if c.gift_id not in completed_ids]
    if credited_not_completed:
        result.problems.append(f"{len(credited_not_completed)} credits for gifts not completed")
    viewers_hold, held, creators_hold = asyncio.run(_public_balances(suite, population))
    result.coins_spent = population.coins_bought - viewers_hold
    result.diamonds_held = creators_hold
    if held:
        result.problems.append(f"viewers' wallets still show {held} coins held")
    if not result.coins_spent == result.coins_of_completed == result.coins_captured:
        result.problems.append(
            f"coins: viewers spent {result.coins_spent}, completed gifts cost {result.coins_of_completed}, "
            f"wallet captured {result.coins_captured}"
        )
    if not result.diamonds_held == result.diamonds_of_completed == result.diamonds_credited:
        result.problems.append(
            f"diamonds: creators hold {result.diamonds_held}, completed gifts owe {result.diamonds_of_completed}, "
            f"payout credited {result.diamonds_credited}"
        )
    _reconcile(suite, result, since or datetime(2000, 1, 1, tzinfo=UTC))
    return result


def _reconcile(suite: Suite, result: Conservation, since: datetime) -> None:
    """What the reconciler finds over [since, now), through the services' RPCs as service:reconciler."""
    now = datetime.now(UTC)
    targets = {name: suite.target(name) for name in ("wallet", "gifting", "payout")}
    try:
        report = reconciler.check(
            targets, reconciler.Window(since, now), now, partial(dev_token, reconciler.RECONCILER)
        )
    except reconciler.ReadFailed as error:
        result.problems.append(f"reconciler: a service could not be read: {error}")
        return
    result.reconciled = report.checked
    result.problems += [f"reconciler: {d.kind} gift {d.gift_id}: {d.detail}" for d in report.discrepancies]
    money = report.money
    if (money.coins_spent, money.diamonds_credited) != (result.coins_captured, result.diamonds_credited):
        result.problems.append(
            f"reconciler: coins spent {money.coins_spent} and diamonds credited {money.diamonds_credited}, "
            f"the books {result.coins_captured} and {result.diamonds_credited}"
        )
