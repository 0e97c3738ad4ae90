"""The wallet's rules (SPEC §3), in plain Python over a unit of work: no protobuf, no gRPC, no SQL.

`Wallets` is every rule, by subject: the wallet's accounts and what all rules share (accounts.py),
holds (holds.py), purchases and the stores' refunds (purchases.py), promotions (promotions.py); a
wallet's own lifecycle, its history and the books' reads are here. The records and states they speak
are in model.py; each method that needs a transaction takes the `UnitOfWork` (storage's: one
transaction) as its first argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

from services.runtime.clock import Clock
from services.runtime.errors import already_exists
from services.wallet.accounts import UnitRunner
from services.wallet.holds import CaptureReads, HoldReads, HoldRules
from services.wallet.model import (
    BUDGET_ACCOUNTS,
    CAPTURE,
    COIN,
    HELD_PROMOTIONAL_ACCOUNTS,
    HELD_PURCHASED_ACCOUNTS,
    PLATFORM_ACCOUNTS,
    PROMOTIONAL_ACCOUNTS,
    PURCHASED_ACCOUNTS,
    SPENT_PROMOTIONAL,
    SPENT_PURCHASED,
    BookedHoldRecord,
    BooksSummary,
    Duplicate,
    Transaction,
    TransactionPage,
    Wallet,
    WalletAccounts,
    WalletRecord,
)
from services.wallet.promotions import PromotionRules
from services.wallet.purchases import Catalogue, PaymentProvider, PurchaseRules, apply_notice_once
from services.wallet.storage import UnitOfWork

__all__ = [
    "CaptureReads",
    "Catalogue",
    "HoldReads",
    "PaymentProvider",
    "UnitOfWork",
    "UnitRunner",
    "Wallets",
    "apply_notice_once",
]


class Wallets(HoldRules, PurchaseRules, PromotionRules):
    """Every wallet rule; each method runs inside the unit of work it is given."""

    def __init__(
        self,
        catalogue: Catalogue,
        providers: Mapping[str, PaymentProvider],
        clock: Clock,
        hold_ttl_seconds: int = 600,
    ) -> None:
        self.catalogue = catalogue
        self.providers = dict(providers)
        self.clock = clock
        self.hold_ttl_seconds = hold_ttl_seconds

    def open_platform_accounts(self, uow: UnitOfWork) -> None:
        now = self.clock.now()
        for code in PLATFORM_ACCOUNTS:
            uow.ledger.open_account(code, COIN, now, platform=True)

    def open_wallet(self, uow: UnitOfWork, user_id: str, date_of_birth: date, country_code: str) -> Wallet:
        now = self.clock.now()
        record = WalletRecord(user_id, date_of_birth, country_code, now)
        try:
            uow.insert_wallet(record)
        except Duplicate:
            raise already_exists(
                "WALLET_ALREADY_EXISTS", f"user {user_id} already has a wallet", user_id=user_id
            ) from None
        accounts = WalletAccounts(user_id)
        for code in accounts.coins:
            uow.ledger.open_account(code, COIN, now)
        # The debt account is the platform's claim on the user: it goes negative, like a platform account.
        uow.ledger.open_account(accounts.debt, COIN, now, platform=True)
        return self._view(uow, record)

    def get_wallet(self, uow: UnitOfWork, user_id: str) -> Wallet:
        return self._view(uow, self._wallet(uow, user_id, lock=False))

    # --- history ------------------------------------------------------------------------------

    def transactions(self, uow: UnitOfWork, user_id: str, page_size: int, before: int | None) -> TransactionPage:
        """The user's movements, newest first; `before` is the previous page's `next_cursor`."""
        self._wallet(uow, user_id, lock=False)
        records = uow.history(user_id, before, page_size + 1)
        page, more = records[:page_size], len(records) > page_size
        accounts = WalletAccounts(user_id)
        held = {accounts.held_purchased, accounts.held_promotional}
        promotional = {accounts.promotional, accounts.held_promotional}
        deltas: dict[str, list[int]] = {r.transfer_id: [0, 0, 0] for r in page}
        for transfer_id, account, amount in uow.entries(list(deltas), accounts.coins):
            delta = deltas[transfer_id]
            delta[0] += amount
            delta[1] += amount if account in held else 0
            delta[2] += amount if account in promotional else 0
        transactions = [
            Transaction(
                transaction_id=r.transfer_id,
                kind=r.kind,
                total_delta=deltas[r.transfer_id][0],
                held_delta=deltas[r.transfer_id][1],
                promotional_delta=deltas[r.transfer_id][2],
                reference=r.reference,
                created_at=r.created_at,
            )
            for r in page
        ]
        return TransactionPage(transactions, page[-1].seq if more else None)

    # --- the books: operators' and the reconciler's reads ---------------------------------------

    def booked_holds(
        self,
        uow: UnitOfWork,
        page_size: int,
        window: tuple[datetime | None, datetime | None] = (None, None),
        gift_ids: tuple[str, ...] = (),
        after: tuple[datetime, str] | None = None,
    ) -> tuple[list[BookedHoldRecord], bool]:
        """Holds in (create time, id) order after `after` (a hold's (create time, id)), made in the window
        [start, end) or of these gifts (not both; neither: all), each with what its gift's captures spent;
        and whether more follow."""
        spent = (SPENT_PURCHASED, SPENT_PROMOTIONAL)
        records = uow.booked_holds(window, gift_ids, after, page_size + 1, CAPTURE, spent)
        return records[:page_size], len(records) > page_size

    def summary(self, uow: UnitOfWork, start: datetime, end: datetime) -> BooksSummary:
        """Fiat taken and given back, coins issued, over [start, end); the coins outstanding now."""
        window = uow.window_totals(start, end)
        now = self.clock.now()
        on = uow.outstanding(
            [
                PURCHASED_ACCOUNTS,
                PROMOTIONAL_ACCOUNTS,
                HELD_PURCHASED_ACCOUNTS,
                HELD_PROMOTIONAL_ACCOUNTS,
                BUDGET_ACCOUNTS,
            ]
        )
        held = on[HELD_PURCHASED_ACCOUNTS] + on[HELD_PROMOTIONAL_ACCOUNTS]
        return BooksSummary(
            takings=window.takings,
            refunds=window.refunds,
            reversals=window.reversals,
            coins_purchased=sum(t.coins for t in window.takings),
            coins_granted=window.granted,
            coins_outstanding=on[PURCHASED_ACCOUNTS] + on[PROMOTIONAL_ACCOUNTS] + held,
            coins_outstanding_promotional=on[PROMOTIONAL_ACCOUNTS] + on[HELD_PROMOTIONAL_ACCOUNTS],
            coins_held=held,
            promotion_budgets_remaining=on[BUDGET_ACCOUNTS],
            as_of=now,
        )
