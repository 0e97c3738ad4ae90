"""The wallet's rules (SPEC §3), in plain Python over a unit of work: no protobuf, no gRPC.

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

Balances derive from accounts: total = the four wallet accounts, held = the two held ones,
available = total - held, promotional = promotional + held promotional. Promotional coins are held
and spent first, so a capture's transfer tells how much of a gift was paid for.

Debt: a refund takes the purchase's coins back from the available purchased coins; what is missing
(already spent or held) becomes debt and freezes spending. Purchased coins that come back (a
purchase, a released or expired hold) settle debt first. So a wallet in debt never has available
purchased coins, and no balance is ever negative.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from enum import Enum
from functools import partial
from typing import Protocol

from opentelemetry import trace

from services.runtime.clock import Clock
from services.runtime.db import Selection
from services.runtime.errors import (
    DomainError,
    already_exists,
    bad_field,
    failed_precondition,
    not_found,
    unavailable,
)
from services.runtime.ledger import (
    MAX_AMOUNT,
    MAX_BALANCE,
    Movement,
    Overdraft,
    Posting,
    balance_limit_exceeded,
    new_id,
)
from services.runtime.pipeline import Later
from services.runtime.telemetry import COINS_MOVED, STORE_NOTIFICATIONS, traced
from services.runtime.validation import Validator, age_on
from services.wallet.settings import PackageConfig
from services.wallet.storage import (
    APPLIED,
    CAPTURED,
    CHARGEBACK,
    EXPIRED,
    HELD,
    NO_PURCHASE,
    RELEASED,
    REVERSAL,
    UNCHANGED,
    BookedHoldRecord,
    Duplicate,
    HoldRecord,
    PromotionRecord,
    PurchaseRecord,
    RefundsRow,
    ReversalsRow,
    StoreNotificationRecord,
    TakingsRow,
    WalletRecord,
    WalletStore,
    WalletUnit,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

COIN = "coin"
MAX_STORE_TRANSACTION_ID_LENGTH = 256  # purchases.store_transaction_id's column
ADULT_AGE = 18
DEFAULT_CURRENCY = "USD"

ISSUED_BY_PURCHASE = "platform:coins:issued:purchase"
ISSUED_BY_PROMOTION = "platform:coins:issued:promotion"
SPENT_PURCHASED = "platform:coins:spent:purchased"
SPENT_PROMOTIONAL = "platform:coins:spent:promotional"
REFUNDED = "platform:coins:refunded"
PLATFORM_ACCOUNTS = (ISSUED_BY_PURCHASE, ISSUED_BY_PROMOTION, SPENT_PURCHASED, SPENT_PROMOTIONAL, REFUNDED)

# Ledger transfer kinds that appear in a wallet's history.
PURCHASE, PROMOTION, HOLD, CAPTURE, RELEASE, EXPIRY, REFUND, DEBT_SETTLEMENT, REINSTATEMENT = (
    "purchase",
    "promotion",
    "hold",
    "capture",
    "release",
    "expiry",
    "refund",
    "debt_settlement",
    "reinstatement",
)
PROMOTION_FUNDING = "promotion_funding"


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


# --- what the domain returns -------------------------------------------------------------------


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
class HoldReads:
    """What deciding holds reads (`WalletBook.read_holds`), queued in the transaction's pipeline."""

    wallets: Later[dict[str, WalletRecord]]  # locked
    balances: Later[dict[str, _Spendable]]
    holds: Later[dict[str, HoldRecord]]  # by gift id


@dataclass(frozen=True)
class CaptureReads:
    """What capturing holds reads (`WalletBook.read_captures`), queued in the transaction's pipeline."""

    wallets: Later[set[str]]  # locked: the users holding the gifts
    holds: Later[dict[str, HoldRecord]]  # by gift id


@dataclass(frozen=True)
class HoldAsk:
    """One hold asked for (`WalletBook.hold_many`)."""

    gift_id: str
    user_id: str
    amount: int
    ttl_seconds: int = 0  # 0: the default


@dataclass
class _Spendable:
    """A locked wallet's coins a batch may still spend, as its earlier items left them."""

    promotional: int
    purchased: int
    debt: int

    @property
    def available(self) -> int:
        return self.promotional + self.purchased


@dataclass(frozen=True)
class BooksSummary:
    """The wallet's money over a window, and its coins outstanding now (`WalletBook.summary`)."""

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


@dataclass(frozen=True)
class TransactionPage:
    transactions: list[Transaction]
    next_cursor: int | None  # pass back as `before` for the next page; None on the last page


# --- the payment-provider interface ------------------------------------------------------------


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


class PaymentProvider(Protocol):
    """A store that verifies its receipts (the sandbox store, the App Store, Google Play)."""

    store: str

    def verify(self, payload: str) -> VerifiedReceipt:
        """The verified purchase; raises ReceiptRejected when the receipt is not genuine or credits
        nothing, StoreUnavailable when the store cannot tell now."""
        ...


# A store's refusal that is about the purchase's state at the store, not the receipt's form.
_STORE_STATE_REASONS = frozenset({"RECEIPT_REVOKED", "RECEIPT_PENDING", "RECEIPT_ALREADY_CONSUMED"})

# The namespace of account tokens (a constant: the apps compute the same tokens).
ACCOUNT_TOKEN_NAMESPACE = uuid.UUID("6f0d4c2e-8a57-4c1b-9d0e-3b9a2f6c7e41")


def account_token(user_id: str) -> str:
    """The UUID an app binds a store purchase to for `user_id` (App Store appAccountToken, Google Play
    obfuscatedAccountId): a receipt bound to another token credits nobody else's wallet."""
    return str(uuid.uuid5(ACCOUNT_TOKEN_NAMESPACE, user_id))


@dataclass(frozen=True)
class StoreNotice:
    """A store's word that a purchase was refunded, charged back, or its refund reversed."""

    store: str
    notification_id: str  # the store's id of the notification: it applies once
    kind: str  # REFUND | CHARGEBACK | REVERSAL (storage's names)
    store_transaction_id: str
    occurred_at: datetime  # the store's time of the event: a later event decides over an earlier one


# What a store notification did: APPLIED, UNCHANGED, NO_PURCHASE (storage's names), or DUPLICATE.
DUPLICATE = "duplicate"


# --- the catalogue -----------------------------------------------------------------------------


class Catalogue:
    """The coin packages on sale, from configuration."""

    def __init__(self, packages: Sequence[PackageConfig]) -> None:
        self._packages = sorted(packages, key=lambda p: (p.coins, p.package_id))
        self._by_id = {p.package_id: p for p in self._packages}
        self.currencies = frozenset(currency for p in self._packages for currency, _ in p.prices)

    def packages(self, currency: str) -> list[CoinPackage]:
        """Packages priced in `currency`, smallest first."""
        currency = currency or DEFAULT_CURRENCY
        if currency not in self.currencies:
            raise bad_field(
                "CURRENCY_NOT_SUPPORTED",
                "currency_code",
                f"no coin packages are sold in {currency}",
                currency_code=currency,
            )
        return [
            CoinPackage(p.package_id, p.coins, dict(p.prices)[currency], currency)
            for p in self._packages
            if currency in dict(p.prices)
        ]

    def package(self, package_id: str, currency: str) -> CoinPackage:
        currency = currency or DEFAULT_CURRENCY
        config = self._by_id.get(package_id)
        if config is None:
            raise bad_field("PACKAGE_NOT_FOUND", "package_id", f"no coin package {package_id!r}", package_id=package_id)
        price = dict(config.prices).get(currency)
        if price is None:
            raise bad_field(
                "CURRENCY_NOT_SUPPORTED",
                "currency_code",
                f"package {package_id} is not sold in {currency}",
                package_id=package_id,
                currency_code=currency,
            )
        return CoinPackage(config.package_id, config.coins, price, currency)


# --- the wallet's rules ------------------------------------------------------------------------


class WalletBook:
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

    def open_platform_accounts(self, uow: WalletUnit) -> None:
        now = self.clock.now()
        for code in PLATFORM_ACCOUNTS:
            uow.ledger.open_account(code, COIN, now, platform=True)

    # --- wallets ------------------------------------------------------------------------------

    def open_wallet(self, uow: WalletUnit, user_id: str, date_of_birth: date, country_code: str) -> Wallet:
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

    def get_wallet(self, uow: WalletUnit, user_id: str) -> Wallet:
        return self._view(uow, self._wallet(uow, user_id, lock=False))

    def _wallet(self, uow: WalletUnit, user_id: str, lock: bool = True) -> WalletRecord:
        record = uow.lock_wallet(user_id) if lock else uow.wallet(user_id)
        if record is None:
            raise _wallet_not_found(user_id)
        return record

    def _view(self, uow: WalletUnit, record: WalletRecord) -> Wallet:
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

    # --- purchases and refunds ----------------------------------------------------------------

    def verify_purchase(
        self, wallet_store: WalletStore, user_id: str, package_id: str, currency: str, store: str, payload: str
    ) -> VerifiedPurchase:
        """What `purchase` credits: the package, and the store's word on the receipt.

        Run once the request id is claimed and outside the purchase's transaction, so that a replayed
        request never asks the store again and no transaction waits on a store. Only adults buy: a
        minor's purchase is refused before any store is asked.
        """
        package = self.catalogue.package(package_id, currency)
        buyer = wallet_store.run(lambda uow: self._wallet(uow, user_id, lock=False))
        if age_on(buyer.date_of_birth, self.clock.now().date()) < ADULT_AGE:
            raise failed_precondition(
                "PURCHASER_UNDERAGE", f"user {user_id} is under {ADULT_AGE}: only adults buy coins", user_id=user_id
            )
        receipt = self._verify(store, payload, user_id)
        if receipt.package_id != package.package_id or receipt.currency_code not in (None, package.currency_code):
            raise bad_field(
                "RECEIPT_PACKAGE_MISMATCH",
                "package_id",
                f"the receipt is for {receipt.package_id} in {receipt.currency_code}, "
                f"not {package.package_id} in {package.currency_code}",
                receipt_package_id=receipt.package_id,
                receipt_currency_code=receipt.currency_code,
                package_id=package.package_id,
                currency_code=package.currency_code,
            )
        return VerifiedPurchase(package, receipt)

    def purchase(self, uow: WalletUnit, user_id: str, verified: VerifiedPurchase) -> PurchaseResult:
        """Credit a verified purchase's package; a store transaction credits once, ever."""
        package, receipt = verified.package, verified.receipt
        # The store's notifications of this transaction and its purchase are decided one at a time.
        uow.lock_store_transaction(receipt.store, receipt.store_transaction_id)
        wallet = self._wallet(uow, user_id)
        self._check_room(uow, user_id, package.coins)
        now = self.clock.now()
        record = PurchaseRecord(
            purchase_id=new_id("pur"),
            user_id=user_id,
            package_id=package.package_id,
            coins=package.coins,
            # What the store charged, where it says.
            price_minor=package.price_minor if receipt.amount_minor is None else receipt.amount_minor,
            currency_code=receipt.currency_code or package.currency_code,
            store=receipt.store,
            store_transaction_id=receipt.store_transaction_id,
            created_at=now,
            original_transaction_id=receipt.original_transaction_id,
            order_id=receipt.order_id,
            consumed_at=None if receipt.needs_consuming else now,
        )
        try:
            uow.insert_purchase(record)
        except Duplicate:
            raise already_exists(
                "RECEIPT_ALREADY_USED",
                f"store transaction {receipt.store_transaction_id} of store {receipt.store} was already credited",
                store=receipt.store,
                store_transaction_id=receipt.store_transaction_id,
            ) from None
        if receipt.consumed:
            raise failed_precondition(
                "RECEIPT_ALREADY_CONSUMED",
                f"store {receipt.store} says its purchase {receipt.store_transaction_id} was consumed already",
                store=receipt.store,
                store_transaction_id=receipt.store_transaction_id,
            )
        if _refunded(uow.store_notifications_of(receipt.store, receipt.store_transaction_id)):
            # The store's refund arrived before the purchase did (a receipt kept from before the refund).
            raise failed_precondition(
                "RECEIPT_REVOKED",
                f"store {receipt.store} refunded its transaction {receipt.store_transaction_id}",
                store=receipt.store,
                store_transaction_id=receipt.store_transaction_id,
            )
        accounts = WalletAccounts(user_id)
        self._post(
            uow,
            user_id,
            PURCHASE,
            record.purchase_id,
            [Posting(ISSUED_BY_PURCHASE, -record.coins), Posting(accounts.purchased, record.coins)],
            now,
        )
        self._settle_debt(uow, accounts, record.purchase_id, now)
        return PurchaseResult(record, self._view(uow, wallet))

    def _verify(self, store: str, payload: str, user_id: str) -> VerifiedReceipt:
        provider = self.providers.get(store)
        if provider is None:
            raise bad_field(
                "STORE_NOT_SUPPORTED",
                "receipt.store",
                f"receipts of store {store!r} are not accepted here",
                store=store,
            )
        try:
            receipt = provider.verify(payload)
        except ReceiptRejected as exc:
            message = f"the {store} receipt does not verify: {exc}"
            if exc.reason in _STORE_STATE_REASONS:
                raise failed_precondition(exc.reason, message, store=store, **exc.metadata) from None
            raise bad_field(exc.reason, "receipt.payload", message, store=store, **exc.metadata) from None
        except StoreUnavailable as exc:
            raise unavailable(
                "DEPENDENCY_UNAVAILABLE", f"store {store} cannot verify the receipt now: {exc}", store=store
            ) from None
        if receipt.account_token and receipt.account_token != account_token(user_id):
            raise bad_field(
                "RECEIPT_ACCOUNT_MISMATCH",
                "receipt.payload",
                "the receipt was bought for another account",
                store=store,
                account_token=receipt.account_token,
            )
        # What a store vouches for is still stored: held to the columns' rules like a client's text.
        v = Validator()
        v.text(receipt.store_transaction_id, "receipt.payload", max_length=MAX_STORE_TRANSACTION_ID_LENGTH)
        if receipt.amount_minor is not None:
            v.non_negative(receipt.amount_minor, "receipt.payload", maximum=MAX_AMOUNT)
        if v.violations:
            raise bad_field(
                "RECEIPT_INVALID",
                "receipt.payload",
                f"the receipt's transaction id or amount is out of range: {v.violations[0].description}",
                store=store,
            )
        return receipt

    def _check_room(self, uow: WalletUnit, user_id: str, coins: int) -> None:
        """Refuse coins that would take a (locked) wallet's total past MAX_BALANCE."""
        total = sum(uow.ledger.balances(WalletAccounts(user_id).coins).values())
        if total + coins > MAX_BALANCE:
            raise balance_limit_exceeded(f"user {user_id}", COIN, total, coins)

    def refund(self, uow: WalletUnit, store: str, store_transaction_id: str, kind: str) -> RefundResult:
        """Take a refunded (or charged back) purchase's coins back; what was spent becomes debt."""
        purchase = uow.purchase_by_store_transaction(store, store_transaction_id)
        if purchase is None:
            raise not_found(
                "PURCHASE_NOT_FOUND",
                f"no purchase with store transaction {store_transaction_id} of store {store}",
                store=store,
                store_transaction_id=store_transaction_id,
            )
        wallet = self._wallet(uow, purchase.user_id)
        now = self.clock.now()
        accounts = WalletAccounts(purchase.user_id)
        reclaimed = min(purchase.coins, uow.ledger.balance(accounts.purchased))
        debt_added = purchase.coins - reclaimed
        try:
            uow.insert_refund(purchase.purchase_id, kind, reclaimed, debt_added, now)
        except Duplicate:
            raise already_exists(
                "PURCHASE_ALREADY_REFUNDED",
                f"purchase {purchase.purchase_id} was already refunded",
                purchase_id=purchase.purchase_id,
            ) from None
        self._post(
            uow,
            purchase.user_id,
            REFUND,
            purchase.purchase_id,
            [
                Posting(accounts.purchased, -reclaimed),
                Posting(accounts.debt, -debt_added),
                Posting(REFUNDED, purchase.coins),
            ],
            now,
        )
        return RefundResult(replace(purchase, refund_kind=kind), reclaimed, debt_added, self._view(uow, wallet))

    def apply_store_notice(self, uow: WalletUnit, notice: StoreNotice) -> str:
        """A store's refund, chargeback or refund reversal, once per notification id, in any order.

        Refunds go through `refund` (coins taken back, spent coins owed as debt: the wallet freezes). Of
        a purchase's notifications the one the store dated last decides: a notification delivered again
        changes nothing, and one that arrives after a later one of the same purchase changes nothing.
        A refund of a purchase not credited here is kept: that transaction is refused if it comes later.
        What it did: APPLIED, UNCHANGED or NO_PURCHASE.
        """
        uow.lock_store_transaction(notice.store, notice.store_transaction_id)
        purchase = uow.purchase_by_store_transaction(notice.store, notice.store_transaction_id)
        if purchase is not None:
            self._wallet(uow, purchase.user_id)  # every change of the purchase's wallet takes this lock
        earlier = uow.store_notifications_of(notice.store, notice.store_transaction_id)
        if purchase is None:
            outcome = NO_PURCHASE
        elif any(n.occurred_at > notice.occurred_at for n in earlier):
            outcome = UNCHANGED  # the store said something later already
        else:
            outcome = self._apply_notice(uow, purchase, notice.kind)
        record = StoreNotificationRecord(
            store=notice.store,
            notification_id=notice.notification_id,
            kind=notice.kind,
            store_transaction_id=notice.store_transaction_id,
            occurred_at=notice.occurred_at,
            outcome=outcome,
            received_at=self.clock.now(),
        )
        try:
            uow.insert_store_notification(record)
        except Duplicate:
            raise _NoticeSeen from None  # rolls back whatever this delivery did
        return outcome

    def _apply_notice(self, uow: WalletUnit, purchase: PurchaseRecord, kind: str) -> str:
        if kind == REVERSAL:
            if not purchase.refund_kind:
                return UNCHANGED
            self._reinstate(uow, purchase)
            return APPLIED
        if purchase.refund_kind:
            return UNCHANGED
        if purchase.reinstated:
            # One refund per purchase: a refund after a reversed refund needs an operator.
            log.warning("store refunded purchase %s again after reversing its refund", purchase.purchase_id)
            return UNCHANGED
        self.refund(uow, purchase.store, purchase.store_transaction_id, kind)
        return APPLIED

    def _reinstate(self, uow: WalletUnit, purchase: PurchaseRecord) -> None:
        """The store reversed a refund: the coins come back (paying off debt first)."""
        now = self.clock.now()
        uow.insert_reinstatement(purchase.purchase_id, now)
        accounts = WalletAccounts(purchase.user_id)
        self._post(
            uow,
            purchase.user_id,
            REINSTATEMENT,
            purchase.purchase_id,
            [Posting(REFUNDED, -purchase.coins), Posting(accounts.purchased, purchase.coins)],
            now,
        )
        self._settle_debt(uow, accounts, purchase.purchase_id, now)

    def purchases_to_consume(self, uow: WalletUnit, store: str, limit: int = 100) -> list[PurchaseRecord]:
        return uow.purchases_to_consume(store, limit)

    def consumed(self, uow: WalletUnit, purchase_id: str) -> None:
        uow.mark_consumed(purchase_id, self.clock.now())

    def _settle_debt(self, uow: WalletUnit, accounts: WalletAccounts, reference: str, now: datetime) -> None:
        """Available purchased coins pay off debt first."""
        debt = -uow.ledger.balance(accounts.debt)
        settled = min(debt, uow.ledger.balance(accounts.purchased))
        if settled > 0:
            self._post(
                uow,
                accounts.user_id,
                DEBT_SETTLEMENT,
                reference,
                [Posting(accounts.purchased, -settled), Posting(accounts.debt, settled)],
                now,
            )

    # --- promotions ---------------------------------------------------------------------------

    def create_promotion(self, uow: WalletUnit, record: PromotionRecord) -> Promotion:
        """A promotion and its budget: a holder account funded now, so claims can never overspend it."""
        now = self.clock.now()
        try:
            uow.insert_promotion(record, now)
        except Duplicate:
            raise already_exists(
                "PROMOTION_ALREADY_EXISTS",
                f"promotion {record.promotion_id} already exists",
                promotion_id=record.promotion_id,
            ) from None
        budget = promotion_budget_account(record.promotion_id)
        uow.ledger.open_account(budget, COIN, now)
        self._post(
            uow,
            "",
            PROMOTION_FUNDING,
            record.promotion_id,
            [Posting(ISSUED_BY_PROMOTION, -record.budget), Posting(budget, record.budget)],
            now,
        )
        return Promotion(record, record.budget)

    def claim_promotion(self, uow: WalletUnit, user_id: str, promotion_id: str) -> ClaimResult:
        wallet = self._wallet(uow, user_id)
        promotion = uow.promotion(promotion_id)
        if promotion is None:
            raise not_found("PROMOTION_NOT_FOUND", f"no promotion {promotion_id}", promotion_id=promotion_id)
        now = self.clock.now()
        if not promotion.start_time <= now < promotion.end_time:
            raise failed_precondition(
                "PROMOTION_NOT_ACTIVE",
                f"promotion {promotion_id} runs from {promotion.start_time.isoformat()} "
                f"to {promotion.end_time.isoformat()}",
                promotion_id=promotion_id,
                start_time=promotion.start_time.isoformat(),
                end_time=promotion.end_time.isoformat(),
            )
        coins = promotion.coins_per_claim
        self._check_room(uow, user_id, coins)
        try:
            uow.insert_claim(promotion_id, user_id, coins, now)
        except Duplicate:
            raise already_exists(
                "PROMOTION_ALREADY_CLAIMED",
                f"user {user_id} already claimed promotion {promotion_id}",
                promotion_id=promotion_id,
                user_id=user_id,
            ) from None
        try:
            self._post(
                uow,
                user_id,
                PROMOTION,
                promotion_id,
                [
                    Posting(promotion_budget_account(promotion_id), -coins),
                    Posting(WalletAccounts(user_id).promotional, coins),
                ],
                now,
            )
        except Overdraft:
            # The budget account's balance cannot go negative (a database constraint): the budget is spent.
            raise failed_precondition(
                "PROMOTION_BUDGET_EXHAUSTED",
                f"promotion {promotion_id} has fewer than {coins} coins left",
                promotion_id=promotion_id,
                coins_per_claim=coins,
            ) from None
        return ClaimResult(coins, self._view(uow, wallet))

    def promotion_remaining(self, uow: WalletUnit, promotion_id: str) -> int:
        return uow.ledger.balance(promotion_budget_account(promotion_id))

    # --- holds (two-phase spend) --------------------------------------------------------------
    #
    # A hold or a capture is the batch of one: `hold_many` and `capture_many` decide each item of a
    # batch (BatchHoldCoins, BatchCaptureHolds) as if the items ran one after another, in order, then
    # write the whole batch in a constant number of statements, whatever its size.

    def hold(self, uow: WalletUnit, gift_id: str, user_id: str, amount: int, ttl_seconds: int = 0) -> HoldRecord:
        """Reserve coins for a gift, promotional first. One hold per gift: asking again returns it."""
        return _one(self.hold_many(uow, [HoldAsk(gift_id, user_id, amount, ttl_seconds)]))

    def read_holds(self, uow: WalletUnit, asks: Sequence[HoldAsk]) -> HoldReads:
        """What deciding these asks reads, queued in the transaction's pipeline: the wallets locked, then
        their balances and the gifts' holds (one round trip, with whatever else is queued)."""
        users = {a.user_id for a in asks}
        return HoldReads(
            uow.lock_wallets(users),
            self._spendable(uow, users, with_debt=True),
            uow.holds_by_gifts({a.gift_id for a in asks}),
        )

    def hold_many(
        self, uow: WalletUnit, asks: Sequence[HoldAsk], reads: HoldReads | None = None
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
        existing, wallets, balances = reads.holds.get(), reads.wallets.get(), reads.balances.get()
        now = self.clock.now()
        outcomes, new = self._decide_holds(asks, existing, wallets, balances, now)
        uow.insert_holds(new)
        movements = [(r.user_id, Movement(HOLD, r.gift_id, _hold_postings(r))) for r in new]
        self._post_many(uow, movements, now, checked=False)  # decided over the locked balances
        return outcomes

    def _decide_holds(
        self,
        asks: Sequence[HoldAsk],
        existing: Mapping[str, HoldRecord],
        wallets: Mapping[str, WalletRecord],
        balances: Mapping[str, _Spendable],
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
                outcomes.append(_wallet_not_found(ask.user_id))
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

    def capture(self, uow: WalletUnit, gift_id: str) -> HoldRecord:
        """Spend a gift's hold. Capturing again returns the captured hold.

        THE EXPIRING-HOLD RULE (SPEC §4, "beware the expiring hold"): gifting captures only after the
        creator's diamonds are credited, and from then on the gift must complete. So a hold that has
        already EXPIRED (its coins returned to the wallet) is still captured: the same amount is spent
        from the wallet's current balance, promotional coins first; whatever the wallet no longer has
        is recorded as debt and freezes the wallet. The capture never fails and no balance goes
        negative; the ledger shows exactly how much was spent on credit.
        """
        return _one(self.capture_many(uow, [gift_id]))

    def read_captures(self, uow: WalletUnit, gift_ids: Iterable[str]) -> CaptureReads:
        """What capturing these gifts' holds reads, queued in the transaction's pipeline: the wallets
        holding them locked, then the holds (read once locked: every change of a hold takes its
        wallet's lock)."""
        gifts = set(gift_ids)
        return CaptureReads(uow.lock_wallets_holding(gifts), uow.holds_by_gifts(gifts))

    def capture_many(
        self, uow: WalletUnit, gift_ids: Sequence[str], reads: CaptureReads | None = None
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
        locked, holds = reads.wallets.get(), reads.holds.get()
        while unlocked := {h.user_id for h in holds.values()} - locked:  # holds made meanwhile: lock theirs too
            locked |= uow.lock_wallets(unlocked).get().keys()
            holds = uow.holds_by_gifts(gifts).get()
        expired = {h.user_id for h in holds.values() if h.state == EXPIRED}
        left = self._spendable(uow, expired).get() if expired else {}
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
        self._post_many(uow, movements, now, checked=False)  # decided over the locked balances
        uow.move_holds(moves, now)
        return outcomes

    def release(self, uow: WalletUnit, gift_id: str) -> HoldRecord:
        """Return a gift's held coins. Releasing again (or after expiry) returns the hold as it is."""
        hold = self._hold_locked(uow, gift_id)
        if hold.state in (RELEASED, EXPIRED):
            return hold
        if hold.state == CAPTURED:
            raise failed_precondition(
                "HOLD_ALREADY_CAPTURED", f"the hold of gift {gift_id} was captured", gift_id=gift_id
            )
        return self._return_held(uow, hold, RELEASED, RELEASE)

    def expire(self, uow: WalletUnit, gift_id: str) -> bool:
        """Release one hold whose time has passed (state EXPIRED); False if it is no longer due."""
        hold = self._hold_locked(uow, gift_id)
        if hold.state != HELD or hold.expire_time > self.clock.now():
            return False
        self._return_held(uow, hold, EXPIRED, EXPIRY)
        return True

    def expire_due_holds(self, store: WalletStore, batch: int = 100) -> int:
        """The expiry loop's step: release every lapsed hold, each in its own transaction."""
        expired = 0
        while True:
            due = store.run(lambda uow: uow.due_holds(self.clock.now(), batch))
            for gift_id in due:
                with (
                    traced(),
                    tracer.start_as_current_span("wallet.expire_hold", attributes={"giftcoin.gift_id": gift_id}),
                ):
                    expired += store.run(partial(self.expire, gift_id=gift_id))
            if len(due) < batch:
                if expired:
                    log.info("released %d lapsed holds", expired)
                return expired

    def _hold_locked(self, uow: WalletUnit, gift_id: str) -> HoldRecord:
        """The gift's hold, read again once its wallet is locked (every hold change takes that lock)."""
        hold = uow.hold_by_gift(gift_id)
        if hold is None:
            raise not_found("HOLD_NOT_FOUND", f"gift {gift_id} has no hold", gift_id=gift_id)
        self._wallet(uow, hold.user_id)
        locked = uow.hold_by_gift(gift_id)
        assert locked is not None
        return locked

    def _return_held(self, uow: WalletUnit, hold: HoldRecord, state: str, kind: str) -> HoldRecord:
        now = self.clock.now()
        accounts = WalletAccounts(hold.user_id)
        purchased = hold.amount - hold.promotional_amount
        self._post(
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
        self._settle_debt(uow, accounts, hold.gift_id, now)
        return moved

    # --- history ------------------------------------------------------------------------------

    def transactions(self, uow: WalletUnit, user_id: str, page_size: int, before: int | None) -> TransactionPage:
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

    # --- operators and the reconciler -----------------------------------------------------------

    def promotions(self, uow: WalletUnit, page_size: int, after: str | None) -> tuple[list[Promotion], bool]:
        """Promotions by id after `after`, each with what is left of its budget; and whether more follow."""
        records = uow.promotions_page(after, page_size + 1)
        page = records[:page_size]
        left = uow.ledger.balances(promotion_budget_account(r.promotion_id) for r in page)
        return [Promotion(r, left[promotion_budget_account(r.promotion_id)]) for r in page], len(records) > page_size

    def booked_holds(
        self, uow: WalletUnit, selection: Selection, page_size: int
    ) -> tuple[list[BookedHoldRecord], bool]:
        """Holds in (create time, id) order, each with what its gift's captures spent; and whether more follow."""
        records = uow.booked_holds(selection, page_size + 1, CAPTURE, (SPENT_PURCHASED, SPENT_PROMOTIONAL))
        return records[:page_size], len(records) > page_size

    def summary(self, uow: WalletUnit, start: datetime, end: datetime) -> BooksSummary:
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

    # ------------------------------------------------------------------------------------------

    def _post(
        self, uow: WalletUnit, user_id: str, kind: str, reference: str, postings: list[Posting], now: datetime
    ) -> None:
        """One ledger transfer, in `user_id`'s history (none for ""). Raises Overdraft: roll back then."""
        self._post_many(uow, [(user_id, Movement(kind, reference, postings))], now)

    def _post_many(
        self, uow: WalletUnit, movements: Sequence[tuple[str, Movement]], now: datetime, checked: bool = True
    ) -> None:
        """`_post` for many (user, movement) pairs, in a constant number of statements (`checked`: see
        Ledger.post_many)."""
        if not movements:
            return
        uow.post_many(movements, now, checked)
        moved: dict[str, int] = defaultdict(int)
        for _, movement in movements:
            moved[movement.kind] += sum(p.amount for p in movement.postings if p.amount > 0)
        for kind, amount in moved.items():
            COINS_MOVED.add(amount, {"giftcoin.movement.kind": kind})

    def _spendable(
        self, uow: WalletUnit, user_ids: Iterable[str], with_debt: bool = False
    ) -> Later[dict[str, _Spendable]]:
        """The available coins (and with `with_debt`, the debt) of locked wallets, in one read (later)."""
        accounts = [WalletAccounts(user_id) for user_id in user_ids]
        codes = [code for a in accounts for code in (a.promotional, a.purchased, *([a.debt] if with_debt else []))]
        return uow.ledger.balances_later(codes).then(
            lambda b: {
                a.user_id: _Spendable(b[a.promotional], b[a.purchased], -b[a.debt] if with_debt else 0)
                for a in accounts
            }
        )


class _NoticeSeen(Exception):
    """The store notification was applied before (raised inside the unit of work, so that it rolls back)."""


def apply_notice_once(book: WalletBook, store: WalletStore, notice: StoreNotice) -> str:
    """`apply_store_notice` in a unit of work of its own; a notification seen before is DUPLICATE."""
    try:
        outcome = store.run(lambda uow: book.apply_store_notice(uow, notice))
    except _NoticeSeen:
        outcome = DUPLICATE
    STORE_NOTIFICATIONS.add(1, {"giftcoin.store": notice.store, "giftcoin.outcome": outcome})
    return outcome


def _refunded(notifications: Sequence[StoreNotificationRecord]) -> bool:
    """Whether the store's last word on a transaction is a refund or chargeback."""
    if not notifications:
        return False
    return max(notifications, key=lambda n: n.occurred_at).kind in (REFUND, CHARGEBACK)


def _one(outcomes: list[HoldRecord | DomainError]) -> HoldRecord:
    """The outcome of a batch of one: the hold, or its refusal raised."""
    [outcome] = outcomes
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def _wallet_not_found(user_id: str) -> DomainError:
    return not_found("WALLET_NOT_FOUND", f"user {user_id} has no wallet", user_id=user_id)


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


def _captured(hold: HoldRecord, left: _Spendable | None) -> tuple[HoldRecord, list[Posting]]:
    """A held or expired hold, captured, and the postings that spend it (see `WalletBook.capture`).

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
