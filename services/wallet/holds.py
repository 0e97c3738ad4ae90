"""Holds: the two-phase spend of a gift's coins (hold, then capture or release; expiry).

A hold or a capture is the batch of one: `hold_many` and `capture_many` decide each item of a batch
(BatchHoldCoins, BatchCaptureHolds) as if the items ran one after another, in order, then write the
whole batch in a constant number of statements, whatever its size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from opentelemetry import trace

from services.runtime.clock import Clock
from services.runtime.errors import DomainError, already_exists, failed_precondition, not_found
from services.runtime.guarded import Transactions
from services.runtime.ledger import Movement, Posting, new_id
from services.runtime.telemetry import traced
from services.runtime.validation import age_on
from services.wallet.accounts import Accounts, Spendable, wallet_not_found
from services.wallet.model import (
    ADULT_AGE,
    CAPTURE,
    CAPTURED,
    EXPIRED,
    EXPIRY,
    HELD,
    HOLD,
    RELEASE,
    RELEASED,
    SPENT_PROMOTIONAL,
    SPENT_PURCHASED,
    HoldAsk,
    HoldRecord,
    WalletAccounts,
    WalletRecord,
)
from services.wallet.storage import UnitOfWork

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class HoldReads:
    """What deciding holds reads (`Holds.read_holds`), queued in the transaction's pipeline: each
    read when called."""

    wallets: Callable[[], dict[str, WalletRecord]]  # locked
    balances: Callable[[], dict[str, Spendable]]
    holds: Callable[[], dict[str, HoldRecord]]  # by gift id


@dataclass(frozen=True)
class CaptureReads:
    """What capturing holds reads (`Holds.read_captures`), queued in the transaction's pipeline: each
    read when called."""

    wallets: Callable[[], set[str]]  # locked: the users holding the gifts
    holds: Callable[[], dict[str, HoldRecord]]  # by gift id


class Holds:
    """Holding a gift's coins, capturing, releasing and expiring its hold."""

    def __init__(self, accounts: Accounts, clock: Clock, hold_ttl_seconds: int) -> None:
        self.accounts = accounts
        self.clock = clock
        self.hold_ttl_seconds = hold_ttl_seconds  # a hold asked for without a time of its own

    def hold(self, uow: UnitOfWork, gift_id: str, user_id: str, amount: int, ttl_seconds: int = 0) -> HoldRecord:
        """Reserve coins for a gift, promotional first. One hold per gift: asking again returns it."""
        return _one(self.hold_many(uow, [HoldAsk(gift_id, user_id, amount, ttl_seconds)]))

    def read_holds(self, uow: UnitOfWork, asks: Sequence[HoldAsk]) -> HoldReads:
        """What deciding these asks reads, queued in the transaction's pipeline: the wallets locked, then
        their balances and the gifts' holds (one round trip, with whatever else is queued)."""
        users = {a.user_id for a in asks}
        return HoldReads(
            uow.lock_wallets(users),
            self.accounts.spendable(uow, users, with_debt=True),
            uow.holds_by_gifts({a.gift_id for a in asks}),
        )

    def hold_many(
        self, uow: UnitOfWork, asks: Sequence[HoldAsk], reads: HoldReads | None = None
    ) -> list[HoldRecord | DomainError]:
        """`hold` for each ask, as if asked one after another in order: each ask's hold, or its refusal.

        A refused ask writes nothing. An ask for a gift that has a hold (from before, or from an earlier
        ask) gets that hold, or HOLD_MISMATCH; the asks on one wallet spend its available balance in
        turn. Statements, sent in the transaction's pipeline: `read_holds` (queued already when given:
        for these asks or more), then the holds inserted, the ledger transfers and the history written
        (sent with the commit). A hold for one of the gifts committed meanwhile (by another wallet's
        batch: this one's holds wait for its locks) fails the transaction, and the batch is decided
        again.
        """
        if not asks:
            return []
        reads = reads or self.read_holds(uow, asks)
        existing, wallets, balances = reads.holds(), reads.wallets(), reads.balances()
        now = self.clock.now()
        outcomes, new = self._decide_holds(asks, existing, wallets, balances, now)
        uow.insert_holds(new)
        movements = [(r.user_id, Movement(HOLD, r.gift_id, _hold_postings(r))) for r in new]
        self.accounts.post_many(uow, movements, now, checked=False)  # decided over the locked balances
        return outcomes

    def _decide_holds(
        self,
        asks: Sequence[HoldAsk],
        existing: Mapping[str, HoldRecord],
        wallets: Mapping[str, WalletRecord],
        balances: Mapping[str, Spendable],
        now: datetime,
    ) -> tuple[list[HoldRecord | DomainError], list[HoldRecord]]:
        """Each ask's outcome, in order, and the new holds among them: no I/O."""
        left = {user_id: replace(coins) for user_id, coins in balances.items()}
        holds = dict(existing)
        outcomes: list[HoldRecord | DomainError] = []
        new: list[HoldRecord] = []
        for ask in asks:
            hold = holds.get(ask.gift_id)
            if hold is not None:
                outcomes.append(_hold_mismatch(hold, ask) or hold)
                continue
            wallet = wallets.get(ask.user_id)
            if wallet is None:
                outcomes.append(wallet_not_found(ask.user_id))
                continue
            coins = left[ask.user_id]
            if coins.debt > 0:
                outcomes.append(
                    failed_precondition(
                        "WALLET_FROZEN",
                        f"wallet of {ask.user_id} is frozen (debt {coins.debt})",
                        user_id=ask.user_id,
                        debt=coins.debt,
                    )
                )
            elif age_on(wallet.date_of_birth, now.date()) < ADULT_AGE:
                outcomes.append(
                    failed_precondition(
                        "SENDER_UNDERAGE", f"user {ask.user_id} is under {ADULT_AGE}", user_id=ask.user_id
                    )
                )
            elif coins.available < ask.amount:
                outcomes.append(
                    failed_precondition(
                        "INSUFFICIENT_FUNDS",
                        f"wallet of {ask.user_id} has {coins.available} coins available, {ask.amount} needed",
                        user_id=ask.user_id,
                        available=coins.available,
                        amount=ask.amount,
                    )
                )
            else:
                promotional = min(ask.amount, coins.promotional)
                coins.promotional -= promotional
                coins.purchased -= ask.amount - promotional
                hold = HoldRecord(
                    hold_id=new_id("hold"),
                    gift_id=ask.gift_id,
                    user_id=ask.user_id,
                    amount=ask.amount,
                    promotional_amount=promotional,
                    debt_added=0,
                    state=HELD,
                    expire_time=now + timedelta(seconds=ask.ttl_seconds or self.hold_ttl_seconds),
                    created_at=now,
                )
                holds[ask.gift_id] = hold
                new.append(hold)
                outcomes.append(hold)
        return outcomes, new

    def capture(self, uow: UnitOfWork, gift_id: str) -> HoldRecord:
        """Spend a gift's hold. Capturing again returns the captured hold.

        THE EXPIRING-HOLD RULE (SPEC §4, "beware the expiring hold"): gifting captures only after the
        creator's diamonds are credited, and from then on the gift must complete. So a hold that has
        already EXPIRED (its coins returned to the wallet) is still captured: the same amount is spent
        from the wallet's current balance, promotional coins first; whatever the wallet no longer has
        is recorded as debt and freezes the wallet. The capture never fails and no balance goes
        negative; the ledger shows exactly how much was spent on credit.
        """
        return _one(self.capture_many(uow, [gift_id]))

    def read_captures(self, uow: UnitOfWork, gift_ids: Iterable[str]) -> CaptureReads:
        """What capturing these gifts' holds reads, queued in the transaction's pipeline: the wallets
        holding them locked, then the holds (read once locked: every change of a hold takes its
        wallet's lock)."""
        gifts = set(gift_ids)
        return CaptureReads(uow.lock_wallets_holding(gifts), uow.holds_by_gifts(gifts))

    def capture_many(
        self, uow: UnitOfWork, gift_ids: Sequence[str], reads: CaptureReads | None = None
    ) -> list[HoldRecord | DomainError]:
        """`capture` of each gift's hold, as if one after another in order: each captured hold, or its refusal.

        A refused capture writes nothing; expired holds of one wallet spend its balance in turn.
        Statements: `read_captures` (queued already when given: for these gifts or more), the balances
        read (if a hold expired), the ledger transfers and the history written (five), the holds'
        states written (one; two if some holds had expired).
        """
        if not gift_ids:
            return []
        gifts = set(gift_ids)
        reads = reads or self.read_captures(uow, gifts)
        locked, holds = reads.wallets(), reads.holds()
        while unlocked := {h.user_id for h in holds.values()} - locked:  # holds made meanwhile: lock theirs too
            locked |= uow.lock_wallets(unlocked)().keys()
            holds = uow.holds_by_gifts(gifts)()
        expired = {h.user_id for h in holds.values() if h.state == EXPIRED}
        left = self.accounts.spendable(uow, expired)() if expired else {}
        now = self.clock.now()
        outcomes: list[HoldRecord | DomainError] = []
        moves: list[tuple[HoldRecord, HoldRecord]] = []
        movements: list[tuple[str, Movement]] = []
        for gift_id in gift_ids:
            hold = holds.get(gift_id)
            if hold is None:
                outcomes.append(not_found("HOLD_NOT_FOUND", f"gift {gift_id} has no hold", gift_id=gift_id))
            elif hold.state == CAPTURED:
                outcomes.append(hold)
            elif hold.state == RELEASED:
                outcomes.append(
                    failed_precondition(
                        "HOLD_ALREADY_RELEASED", f"the hold of gift {gift_id} was released", gift_id=gift_id
                    )
                )
            else:
                captured, postings = _captured(hold, left.get(hold.user_id))
                holds[gift_id] = captured
                moves.append((hold, captured))
                movements.append((hold.user_id, Movement(CAPTURE, gift_id, postings)))
                outcomes.append(captured)
        self.accounts.post_many(uow, movements, now, checked=False)  # decided over the locked balances
        uow.move_holds(moves, now)
        return outcomes

    def release(self, uow: UnitOfWork, gift_id: str) -> HoldRecord:
        """Return a gift's held coins. Releasing again (or after expiry) returns the hold as it is."""
        hold = self._hold_locked(uow, gift_id)
        if hold.state in (RELEASED, EXPIRED):
            return hold
        if hold.state == CAPTURED:
            raise failed_precondition(
                "HOLD_ALREADY_CAPTURED", f"the hold of gift {gift_id} was captured", gift_id=gift_id
            )
        return self._return_held(uow, hold, RELEASED, RELEASE)

    def expire(self, uow: UnitOfWork, gift_id: str) -> bool:
        """Release one hold whose time has passed (state EXPIRED); False if it is no longer due."""
        hold = self._hold_locked(uow, gift_id)
        if hold.state != HELD or hold.expire_time > self.clock.now():
            return False
        self._return_held(uow, hold, EXPIRED, EXPIRY)
        return True

    def expire_due_holds(self, transactions: Transactions[UnitOfWork], batch: int = 100) -> int:
        """The expiry loop's step: release every lapsed hold, each in its own transaction."""
        expired = 0
        while True:
            due = transactions.run(lambda uow: uow.due_holds(self.clock.now(), batch))
            for gift_id in due:
                with (
                    traced(),
                    tracer.start_as_current_span("wallet.expire_hold", attributes={"giftcoin.gift_id": gift_id}),
                ):
                    expired += transactions.run(partial(self.expire, gift_id=gift_id))
            if len(due) < batch:
                if expired:
                    log.info("released %d lapsed holds", expired)
                return expired

    def _hold_locked(self, uow: UnitOfWork, gift_id: str) -> HoldRecord:
        """The gift's hold, read again once its wallet is locked (every hold change takes that lock)."""
        hold = uow.hold_by_gift(gift_id)
        if hold is None:
            raise not_found("HOLD_NOT_FOUND", f"gift {gift_id} has no hold", gift_id=gift_id)
        self.accounts.wallet(uow, hold.user_id)
        locked = uow.hold_by_gift(gift_id)
        assert locked is not None
        return locked

    def _return_held(self, uow: UnitOfWork, hold: HoldRecord, state: str, kind: str) -> HoldRecord:
        now = self.clock.now()
        accounts = WalletAccounts(hold.user_id)
        purchased = hold.amount - hold.promotional_amount
        self.accounts.post(
            uow,
            hold.user_id,
            kind,
            hold.gift_id,
            [
                Posting(accounts.held_promotional, -hold.promotional_amount),
                Posting(accounts.promotional, hold.promotional_amount),
                Posting(accounts.held_purchased, -purchased),
                Posting(accounts.purchased, purchased),
            ],
            now,
        )
        moved = uow.move_hold(hold.hold_id, HELD, state, now)
        assert moved is not None
        self.accounts.settle_debt(uow, accounts, hold.gift_id, now)
        return moved


def _one(outcomes: list[HoldRecord | DomainError]) -> HoldRecord:
    """The outcome of a batch of one: the hold, or its refusal raised."""
    [outcome] = outcomes
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def _hold_mismatch(hold: HoldRecord, ask: HoldAsk) -> DomainError | None:
    """A gift's existing hold is the answer to holding for it again, if it is the same hold."""
    if hold.user_id == ask.user_id and hold.amount == ask.amount:
        return None
    return already_exists(
        "HOLD_MISMATCH",
        f"gift {hold.gift_id} already has a hold of {hold.amount} coins from {hold.user_id}",
        gift_id=hold.gift_id,
        user_id=hold.user_id,
        amount=hold.amount,
    )


def _hold_postings(hold: HoldRecord) -> list[Posting]:
    accounts = WalletAccounts(hold.user_id)
    purchased = hold.amount - hold.promotional_amount
    return [
        Posting(accounts.promotional, -hold.promotional_amount),
        Posting(accounts.held_promotional, hold.promotional_amount),
        Posting(accounts.purchased, -purchased),
        Posting(accounts.held_purchased, purchased),
    ]


def _captured(hold: HoldRecord, left: Spendable | None) -> tuple[HoldRecord, list[Posting]]:
    """A held or expired hold, captured, and the postings that spend it (see `Holds.capture`).

    An expired hold spends from `left`, its wallet's coins as the batch has left them, which it updates.
    """
    accounts = WalletAccounts(hold.user_id)
    if hold.state == HELD:
        promotional, purchased, debt = hold.promotional_amount, hold.amount - hold.promotional_amount, 0
        postings = [
            Posting(accounts.held_promotional, -promotional),
            Posting(accounts.held_purchased, -purchased),
        ]
    else:  # EXPIRED: spend from the current balance, the shortfall on credit
        assert hold.state == EXPIRED and left is not None
        promotional = min(hold.amount, left.promotional)
        purchased = min(hold.amount - promotional, left.purchased)
        debt = hold.amount - promotional - purchased
        left.promotional -= promotional
        left.purchased -= purchased
        postings = [
            Posting(accounts.promotional, -promotional),
            Posting(accounts.purchased, -purchased),
            Posting(accounts.debt, -debt),
        ]
    postings += [
        Posting(SPENT_PROMOTIONAL, promotional),
        # Coins owed count as paid for: the debt entry above says they are not paid yet.
        Posting(SPENT_PURCHASED, purchased + debt),
    ]
    captured = replace(hold, state=CAPTURED, promotional_amount=promotional, debt_added=debt)
    return captured, postings
