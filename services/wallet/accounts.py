"""`Accounts`: what every wallet rule shares (holds, purchases, promotions and `Wallets` are each given
it): finding and locking a wallet, reading its balances, posting its transfers (each in its user's
history), settling its debt.

Balances derive from accounts (model's table): total = the four wallet accounts, held = the two held
ones, available = total - held, promotional = promotional + held promotional. Promotional coins are
held and spent first, so a capture's transfer tells how much of a gift was paid for.

Debt: a refund takes the purchase's coins back from the available purchased coins; what is missing
(already spent or held) becomes debt and freezes spending. Purchased coins that come back (a
purchase, a released or expired hold) settle debt first. So a wallet in debt never has available
purchased coins, and no balance is ever negative.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.runtime.clock import Clock
from services.runtime.errors import DomainError, not_found
from services.runtime.ledger import MAX_BALANCE, Movement, Posting, balance_limit_exceeded
from services.runtime.telemetry import COINS_MOVED
from services.runtime.validation import age_on
from services.wallet.model import (
    ADULT_AGE,
    COIN,
    DEBT_SETTLEMENT,
    Balance,
    Wallet,
    WalletAccounts,
    WalletRecord,
    WalletStatus,
)
from services.wallet.storage import UnitOfWork


@dataclass
class Spendable:
    """A locked wallet's coins a batch may still spend, as its earlier items left them."""

    promotional: int
    purchased: int
    debt: int

    @property
    def available(self) -> int:
        return self.promotional + self.purchased


class Accounts:
    """The wallet rules' shared steps; each runs inside the unit of work it is given."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def wallet(self, uow: UnitOfWork, user_id: str, lock: bool = True) -> WalletRecord:
        """The user's wallet, locked for the transaction unless `lock` is False; WALLET_NOT_FOUND if none."""
        record = uow.lock_wallet(user_id) if lock else uow.wallet(user_id)
        if record is None:
            raise wallet_not_found(user_id)
        return record

    def view(self, uow: UnitOfWork, record: WalletRecord) -> Wallet:
        """The wallet as its owner sees it: balances, debt and status, from its accounts."""
        accounts = WalletAccounts(record.user_id)
        b = uow.ledger.balances([*accounts.coins, accounts.debt])
        purchased = b[accounts.purchased] + b[accounts.held_purchased]
        promotional = b[accounts.promotional] + b[accounts.held_promotional]
        held = b[accounts.held_purchased] + b[accounts.held_promotional]
        total = purchased + promotional
        debt = -b[accounts.debt]
        return Wallet(
            user_id=record.user_id,
            status=WalletStatus.FROZEN if debt > 0 else WalletStatus.ACTIVE,
            date_of_birth=record.date_of_birth,
            country_code=record.country_code,
            adult=age_on(record.date_of_birth, self.clock.now().date()) >= ADULT_AGE,
            balance=Balance(total, held, total - held, promotional, purchased),
            debt=debt,
            created_at=record.created_at,
        )

    def check_room(self, uow: UnitOfWork, user_id: str, coins: int) -> None:
        """Refuse coins that would take a (locked) wallet's total past MAX_BALANCE."""
        total = sum(uow.ledger.balances(WalletAccounts(user_id).coins).values())
        if total + coins > MAX_BALANCE:
            raise balance_limit_exceeded(f"user {user_id}", COIN, total, coins)

    def settle_debt(self, uow: UnitOfWork, accounts: WalletAccounts, reference: str, now: datetime) -> None:
        """Available purchased coins pay off debt first."""
        debt = -uow.ledger.balance(accounts.debt)
        settled = min(debt, uow.ledger.balance(accounts.purchased))
        if settled > 0:
            self.post(
                uow,
                accounts.user_id,
                DEBT_SETTLEMENT,
                reference,
                [Posting(accounts.purchased, -settled), Posting(accounts.debt, settled)],
                now,
            )

    def post(
        self, uow: UnitOfWork, user_id: str, kind: str, reference: str, postings: list[Posting], now: datetime
    ) -> None:
        """One ledger transfer, in `user_id`'s history (none for ""). Raises Overdraft: roll back then."""
        self.post_many(uow, [(user_id, Movement(kind, reference, postings))], now)

    def post_many(
        self, uow: UnitOfWork, movements: Sequence[tuple[str, Movement]], now: datetime, checked: bool = True
    ) -> None:
        """`post` for many (user, movement) pairs, in a constant number of statements (`checked`: see
        Ledger.post_many)."""
        if not movements:
            return
        uow.post_many(movements, now, checked)
        moved: dict[str, int] = defaultdict(int)
        for _, movement in movements:
            moved[movement.kind] += sum(p.amount for p in movement.postings if p.amount > 0)
        for kind, amount in moved.items():
            COINS_MOVED.add(amount, {"giftcoin.movement.kind": kind})

    def spendable(
        self, uow: UnitOfWork, user_ids: Iterable[str], with_debt: bool = False
    ) -> Callable[[], dict[str, Spendable]]:
        """The available coins (and with `with_debt`, the debt) of locked wallets, in one read queued in
        the transaction's pipeline: made when called."""
        accounts = [WalletAccounts(user_id) for user_id in user_ids]
        codes = [code for a in accounts for code in (a.promotional, a.purchased, *([a.debt] if with_debt else []))]
        balances = uow.queue_balances(codes)

        def spendable() -> dict[str, Spendable]:
            b = balances()
            return {
                a.user_id: Spendable(b[a.promotional], b[a.purchased], -b[a.debt] if with_debt else 0) for a in accounts
            }

        return spendable


def wallet_not_found(user_id: str) -> DomainError:
    return not_found("WALLET_NOT_FOUND", f"user {user_id} has no wallet", user_id=user_id)
