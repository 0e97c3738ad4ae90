"""The wallet's plain data: the records it stores, their states, its accounts' names, and what its
rules answer. No database, no gRPC: storage, the rules, the servicer and the stores' providers all
speak these.

Accounting (double entry, unit "coin", every movement one ledger transfer):

    per user (holder accounts: never negative)        platform accounts (may go negative)
      wallet:purchased:<u>          coins bought        platform:coins:issued:purchase    source of bought coins
      wallet:promotional:<u>        coins granted       platform:coins:issued:promotion   source of budgets
      wallet:held-purchased:<u>     held, bought        platform:coins:spent:purchased    gifts, paid for
      wallet:held-promotional:<u>   held, granted       platform:coins:spent:promotional  gifts, granted
    per promotion                                       platform:coins:refunded           issuance taken back
      promotion-budget:<id>         coins left          wallet:debt:<u>  the user's debt as the platform's
                                                                         claim on them: its balance is -debt

The id comes last, after a prefix that names the kind, so no id (ids may contain ':') can make one
account's code equal another's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum

COIN = "coin"
MAX_STORE_TRANSACTION_ID_LENGTH = 256  # purchases.store_transaction_id's column
ADULT_AGE = 18

# Hold states as stored.
HELD, CAPTURED, RELEASED, EXPIRED = "held", "captured", "released", "expired"
# Refund kinds as stored; a store notification is one of these or a refund's reversal.
REFUND, CHARGEBACK = "refund", "chargeback"
REVERSAL = "reversal"
# What a store notification changed, as stored; or DUPLICATE: it was applied before.
APPLIED, UNCHANGED, NO_PURCHASE = "applied", "unchanged", "no_purchase"
DUPLICATE = "duplicate"

# Ledger transfer kinds that appear in a wallet's history (a refund's or chargeback's transfer is REFUND).
PURCHASE, PROMOTION, HOLD, CAPTURE, RELEASE, EXPIRY, DEBT_SETTLEMENT, REINSTATEMENT = (
    "purchase",
    "promotion",
    "hold",
    "capture",
    "release",
    "expiry",
    "debt_settlement",
    "reinstatement",
)
PROMOTION_FUNDING = "promotion_funding"

# --- accounts ----------------------------------------------------------------------------------

ISSUED_BY_PURCHASE = "platform:coins:issued:purchase"
ISSUED_BY_PROMOTION = "platform:coins:issued:promotion"
SPENT_PURCHASED = "platform:coins:spent:purchased"
SPENT_PROMOTIONAL = "platform:coins:spent:promotional"
REFUNDED = "platform:coins:refunded"
PLATFORM_ACCOUNTS = (ISSUED_BY_PURCHASE, ISSUED_BY_PROMOTION, SPENT_PURCHASED, SPENT_PROMOTIONAL, REFUNDED)

# Each kind of per-user (and per-promotion) account: the prefix of its codes.
PURCHASED_ACCOUNTS = "wallet:purchased:"
PROMOTIONAL_ACCOUNTS = "wallet:promotional:"
HELD_PURCHASED_ACCOUNTS = "wallet:held-purchased:"
HELD_PROMOTIONAL_ACCOUNTS = "wallet:held-promotional:"
DEBT_ACCOUNTS = "wallet:debt:"
BUDGET_ACCOUNTS = "promotion-budget:"


@dataclass(frozen=True)
class WalletAccounts:
    user_id: str

    @property
    def purchased(self) -> str:
        return PURCHASED_ACCOUNTS + self.user_id

    @property
    def promotional(self) -> str:
        return PROMOTIONAL_ACCOUNTS + self.user_id

    @property
    def held_purchased(self) -> str:
        return HELD_PURCHASED_ACCOUNTS + self.user_id

    @property
    def held_promotional(self) -> str:
        return HELD_PROMOTIONAL_ACCOUNTS + self.user_id

    @property
    def debt(self) -> str:
        return DEBT_ACCOUNTS + self.user_id

    @property
    def coins(self) -> tuple[str, str, str, str]:
        """The holder accounts whose sum is the wallet's total."""
        return (self.purchased, self.promotional, self.held_purchased, self.held_promotional)


def promotion_budget_account(promotion_id: str) -> str:
    return BUDGET_ACCOUNTS + promotion_id


# --- records, as stored ------------------------------------------------------------------------


class Duplicate(Exception):
    """An insert broke a unique constraint: the thing already exists."""


@dataclass(frozen=True)
class WalletRecord:
    user_id: str
    date_of_birth: date
    country_code: str
    created_at: datetime


@dataclass(frozen=True)
class PurchaseRecord:
    purchase_id: str
    user_id: str
    package_id: str
    coins: int
    price_minor: int
    currency_code: str
    store: str
    store_transaction_id: str
    created_at: datetime
    original_transaction_id: str | None = None
    order_id: str | None = None
    consumed_at: datetime | None = None
    refund_kind: str = ""  # "", refund or chargeback ("" again once the store reversed the refund)
    reinstated: bool = False  # refunded, and the refund reversed


@dataclass(frozen=True)
class StoreNotificationRecord:
    store: str
    notification_id: str
    kind: str  # refund | chargeback | reversal
    store_transaction_id: str
    occurred_at: datetime  # the store's time of the event
    outcome: str  # applied | unchanged | no_purchase
    received_at: datetime


@dataclass(frozen=True)
class PromotionRecord:
    promotion_id: str
    name: str
    coins_per_claim: int
    budget: int
    start_time: datetime
    end_time: datetime


@dataclass(frozen=True)
class HoldRecord:
    hold_id: str
    gift_id: str
    user_id: str
    amount: int
    promotional_amount: int
    debt_added: int
    state: str
    expire_time: datetime
    created_at: datetime


@dataclass(frozen=True)
class BookedHoldRecord:
    """A hold, when it last changed, and what the ledger's capture transfers spent for its gift."""

    hold: HoldRecord
    updated_at: datetime
    spent: int
    spent_promotional: int
    capture_transfers: int


@dataclass(frozen=True)
class TakingsRow:
    store: str
    currency_code: str
    purchases: int
    amount_minor: int
    coins: int


@dataclass(frozen=True)
class RefundsRow:
    kind: str
    currency_code: str
    refunds: int
    amount_minor: int
    coins_reclaimed: int
    debt_added: int


@dataclass(frozen=True)
class ReversalsRow:
    currency_code: str
    reversals: int
    amount_minor: int
    coins: int


@dataclass(frozen=True)
class WindowTotals:
    """Purchases, refunds, refund reversals and promotion claims of a time window."""

    takings: list[TakingsRow]
    refunds: list[RefundsRow]
    reversals: list[ReversalsRow]
    granted: int


@dataclass(frozen=True)
class TransferRecord:
    seq: int
    transfer_id: str
    kind: str
    reference: str
    created_at: datetime


# --- what the rules answer ---------------------------------------------------------------------


class WalletStatus(Enum):
    ACTIVE = "active"
    FROZEN = "frozen"


@dataclass(frozen=True)
class Balance:
    total: int
    held: int
    available: int
    promotional: int
    purchased: int


@dataclass(frozen=True)
class Wallet:
    user_id: str
    status: WalletStatus
    date_of_birth: date
    country_code: str
    adult: bool
    balance: Balance
    debt: int
    created_at: datetime


@dataclass(frozen=True)
class CoinPackage:
    package_id: str
    coins: int
    price_minor: int
    currency_code: str


@dataclass(frozen=True)
class VerifiedPurchase:
    package: CoinPackage
    receipt: VerifiedReceipt


@dataclass(frozen=True)
class PurchaseResult:
    purchase: PurchaseRecord
    wallet: Wallet


@dataclass(frozen=True)
class RefundResult:
    purchase: PurchaseRecord
    coins_reclaimed: int
    debt_added: int
    wallet: Wallet


@dataclass(frozen=True)
class Promotion:
    record: PromotionRecord
    remaining: int


@dataclass(frozen=True)
class ClaimResult:
    coins_granted: int
    wallet: Wallet


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    kind: str
    total_delta: int
    held_delta: int
    promotional_delta: int
    reference: str
    created_at: datetime


@dataclass(frozen=True)
class TransactionPage:
    transactions: list[Transaction]
    next_cursor: int | None  # pass back as `before` for the next page; None on the last page


@dataclass(frozen=True)
class HoldAsk:
    """One hold asked for (`Wallets.hold_many`)."""

    gift_id: str
    user_id: str
    amount: int
    ttl_seconds: int = 0  # 0: the default


@dataclass(frozen=True)
class BooksSummary:
    """The wallet's money over a window, and its coins outstanding now (`Wallets.summary`)."""

    takings: list[TakingsRow]  # purchases by store and currency
    refunds: list[RefundsRow]  # refunds and chargebacks by kind and currency
    reversals: list[ReversalsRow]  # refunds the stores reversed, by currency
    coins_purchased: int
    coins_granted: int
    coins_outstanding: int
    coins_outstanding_promotional: int
    coins_held: int
    promotion_budgets_remaining: int
    as_of: datetime


# --- what the stores say -----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a store confirms about a purchase."""

    store: str
    store_transaction_id: str
    package_id: str
    # What the store charged; None where the store does not say (Google Play's purchase endpoint):
    # the catalogue's price in the requested currency is recorded then.
    amount_minor: int | None
    currency_code: str | None
    # The account token the store bound the purchase to (`account_token`); "" = not bound (only the
    # sandbox store issues unbound receipts: the real stores' providers refuse them).
    account_token: str = ""
    original_transaction_id: str | None = None  # App Store originalTransactionId
    order_id: str | None = None  # Google Play orderId
    # The store says the purchase was consumed already (Google Play): only a replay of one credited here.
    consumed: bool = False
    needs_consuming: bool = False  # the wallet must consume it at the store once credited (Google Play)


class ReceiptRejected(Exception):
    """The store does not vouch for this receipt: `reason` (an ErrorReason name) says why."""

    def __init__(self, message: str, reason: str = "RECEIPT_INVALID", **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class StoreUnavailable(Exception):
    """The store did not answer (or refused our credentials): nothing was decided, try again."""


@dataclass(frozen=True)
class StoreNotice:
    """A store's word that a purchase was refunded, charged back, or its refund reversed."""

    store: str
    notification_id: str  # the store's id of the notification: it applies once
    kind: str  # REFUND | CHARGEBACK | REVERSAL
    store_transaction_id: str
    occurred_at: datetime  # the store's time of the event: a later event decides over an earlier one


# The namespace of account tokens (a constant: the apps compute the same tokens).
ACCOUNT_TOKEN_NAMESPACE = uuid.UUID("6f0d4c2e-8a57-4c1b-9d0e-3b9a2f6c7e41")


def account_token(user_id: str) -> str:
    """The UUID an app binds a store purchase to for `user_id` (App Store appAccountToken, Google Play
    obfuscatedAccountId): a receipt bound to another token credits nobody else's wallet."""
    return str(uuid.uuid5(ACCOUNT_TOKEN_NAMESPACE, user_id))
