"""The wallet's rules (SPEC §3), in plain Python over a unit of work: no protobuf, no gRPC, no SQL.

`Wallets` is the facade the servicer, the stores' notifications and the loops call. It builds one
object per subject and hands each what it needs: `Accounts` (accounts.py: a wallet found and locked,
its view, the room checks, its transfers posted, its debt settled), given to `Holds` (holds.py),
`Purchases` (purchases.py: the catalogue, receipts credited, the stores' refunds) and `Promotions`
(promotions.py). A wallet's own lifecycle, its history and the books' reads are here. The records and
states they speak are in model.py; each method that needs a transaction takes the `UnitOfWork`
(storage's: one transaction) as its first argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime

from services.runtime.clock import Clock
from services.runtime.errors import DomainError, already_exists
from services.runtime.guarded import Transactions
from services.wallet.accounts import Accounts
from services.wallet.holds import CaptureReads, HoldReads, Holds
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
    ClaimResult,
    Duplicate,
    HoldAsk,
    HoldRecord,
    Promotion,
    PromotionRecord,
    PurchaseRecord,
    PurchaseResult,
    RefundResult,
    StoreNotice,
    Transaction,
    TransactionPage,
    VerifiedPurchase,
    Wallet,
    WalletAccounts,
    WalletRecord,
)
from services.wallet.promotions import Promotions
from services.wallet.purchases import Catalogue, PaymentProvider, Purchases
from services.wallet.storage import UnitOfWork

__all__ = [
    "CaptureReads",
    "Catalogue",
    "HoldReads",
    "PaymentProvider",
    "UnitOfWork",
    "Wallets",
]


class Wallets:
    """Every wallet rule; each method runs inside the unit of work it is given (or, given its `Transactions`,
    in units of work of its own). Holds, purchases and promotions are their own classes' (see there)."""

    def __init__(
        self,
        catalogue: Catalogue,
        providers: Mapping[str, PaymentProvider],
        clock: Clock,
        hold_ttl_seconds: int = 600,
    ) -> None:
        self.catalogue = catalogue  # the servicer lists its packages
        self.clock = clock
        self._accounts = Accounts(clock)
        self._holds = Holds(self._accounts, clock, hold_ttl_seconds)
        self._purchases = Purchases(self._accounts, catalogue, providers, clock)
        self._promotions = Promotions(self._accounts, clock)

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
        return self._accounts.view(uow, record)

    def get_wallet(self, uow: UnitOfWork, user_id: str) -> Wallet:
        return self._accounts.view(uow, self._accounts.wallet(uow, user_id, lock=False))

    # --- holds (holds.py) ---------------------------------------------------------------------------

    def hold(self, uow: UnitOfWork, gift_id: str, user_id: str, amount: int, ttl_seconds: int = 0) -> HoldRecord:
        return self._holds.hold(uow, gift_id, user_id, amount, ttl_seconds)

    def read_holds(self, uow: UnitOfWork, asks: Sequence[HoldAsk]) -> HoldReads:
        return self._holds.read_holds(uow, asks)

    def hold_many(
        self, uow: UnitOfWork, asks: Sequence[HoldAsk], reads: HoldReads | None = None
    ) -> list[HoldRecord | DomainError]:
        return self._holds.hold_many(uow, asks, reads)

    def capture(self, uow: UnitOfWork, gift_id: str) -> HoldRecord:
        return self._holds.capture(uow, gift_id)

    def read_captures(self, uow: UnitOfWork, gift_ids: Iterable[str]) -> CaptureReads:
        return self._holds.read_captures(uow, gift_ids)

    def capture_many(
        self, uow: UnitOfWork, gift_ids: Sequence[str], reads: CaptureReads | None = None
    ) -> list[HoldRecord | DomainError]:
        return self._holds.capture_many(uow, gift_ids, reads)

    def release(self, uow: UnitOfWork, gift_id: str) -> HoldRecord:
        return self._holds.release(uow, gift_id)

    def expire(self, uow: UnitOfWork, gift_id: str) -> bool:
        return self._holds.expire(uow, gift_id)

    def expire_due_holds(self, transactions: Transactions[UnitOfWork], batch: int = 100) -> int:
        return self._holds.expire_due_holds(transactions, batch)

    # --- purchases and the stores' refunds (purchases.py) ----------------------------------------

    def verify_purchase(
        self,
        transactions: Transactions[UnitOfWork],
        user_id: str,
        package_id: str,
        currency: str,
        store: str,
        payload: str,
    ) -> VerifiedPurchase:
        return self._purchases.verify_purchase(transactions, user_id, package_id, currency, store, payload)

    def purchase(self, uow: UnitOfWork, user_id: str, verified: VerifiedPurchase) -> PurchaseResult:
        return self._purchases.purchase(uow, user_id, verified)

    def refund(self, uow: UnitOfWork, store: str, store_transaction_id: str, kind: str) -> RefundResult:
        return self._purchases.refund(uow, store, store_transaction_id, kind)

    def apply_store_notice(self, uow: UnitOfWork, notice: StoreNotice) -> str:
        return self._purchases.apply_store_notice(uow, notice)

    def apply_notice_once(self, transactions: Transactions[UnitOfWork], notice: StoreNotice) -> str:
        return self._purchases.apply_notice_once(transactions, notice)

    def purchases_to_consume(self, uow: UnitOfWork, store: str, limit: int = 100) -> list[PurchaseRecord]:
        return self._purchases.purchases_to_consume(uow, store, limit)

    def consumed(self, uow: UnitOfWork, purchase_id: str) -> None:
        self._purchases.consumed(uow, purchase_id)

    # --- promotions (promotions.py) --------------------------------------------------------------

    def create_promotion(self, uow: UnitOfWork, record: PromotionRecord) -> Promotion:
        return self._promotions.create_promotion(uow, record)

    def claim_promotion(self, uow: UnitOfWork, user_id: str, promotion_id: str) -> ClaimResult:
        return self._promotions.claim_promotion(uow, user_id, promotion_id)

    def promotion_remaining(self, uow: UnitOfWork, promotion_id: str) -> int:
        return self._promotions.promotion_remaining(uow, promotion_id)

    def promotions(self, uow: UnitOfWork, page_size: int, after: str | None) -> tuple[list[Promotion], bool]:
        return self._promotions.promotions(uow, page_size, after)

    # --- history ------------------------------------------------------------------------------

    def transactions(self, uow: UnitOfWork, user_id: str, page_size: int, before: int | None) -> TransactionPage:
        """The user's movements, newest first; `before` is the previous page's `next_cursor`."""
        self._accounts.wallet(uow, user_id, lock=False)
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
