"""Purchases: the catalogue, a store's receipt verified and credited once, and the stores' refunds,
chargebacks and refund reversals (SPEC §3)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from services.runtime.clock import Clock
from services.runtime.errors import already_exists, bad_field, failed_precondition, not_found, unavailable
from services.runtime.guarded import Transactions
from services.runtime.ledger import MAX_AMOUNT, Posting, new_id
from services.runtime.telemetry import STORE_NOTIFICATIONS
from services.runtime.validation import Validator, age_on
from services.wallet.accounts import Accounts
from services.wallet.model import (
    ADULT_AGE,
    APPLIED,
    CHARGEBACK,
    DUPLICATE,
    ISSUED_BY_PURCHASE,
    MAX_STORE_TRANSACTION_ID_LENGTH,
    NO_PURCHASE,
    PURCHASE,
    REFUND,
    REFUNDED,
    REINSTATEMENT,
    REVERSAL,
    UNCHANGED,
    CoinPackage,
    Duplicate,
    PurchaseRecord,
    PurchaseResult,
    ReceiptRejected,
    RefundResult,
    StoreNotice,
    StoreNotificationRecord,
    StoreUnavailable,
    VerifiedPurchase,
    VerifiedReceipt,
    WalletAccounts,
    account_token,
)
from services.wallet.settings import PackageConfig
from services.wallet.storage import UnitOfWork

log = logging.getLogger(__name__)

DEFAULT_CURRENCY = "USD"


class PaymentProvider(Protocol):
    """A store that verifies its receipts (the sandbox store, the App Store, Google Play)."""

    store: str

    def verify(self, payload: str) -> VerifiedReceipt:
        """The verified purchase; raises ReceiptRejected when the receipt is not genuine or credits
        nothing, StoreUnavailable when the store cannot tell now."""
        ...


# A store's refusal that is about the purchase's state at the store, not the receipt's form.
_STORE_STATE_REASONS = frozenset({"RECEIPT_REVOKED", "RECEIPT_PENDING", "RECEIPT_ALREADY_CONSUMED"})


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


# --- the purchases -----------------------------------------------------------------------------


class Purchases:
    """Crediting verified purchases, and taking refunded ones back."""

    def __init__(
        self, accounts: Accounts, catalogue: Catalogue, providers: Mapping[str, PaymentProvider], clock: Clock
    ) -> None:
        self.accounts = accounts
        self.catalogue = catalogue
        self.providers = dict(providers)
        self.clock = clock

    def verify_purchase(
        self,
        transactions: Transactions[UnitOfWork],
        user_id: str,
        package_id: str,
        currency: str,
        store: str,
        payload: str,
    ) -> VerifiedPurchase:
        """What `purchase` credits: the package, and the store's word on the receipt.

        Run once the request id is claimed and outside the purchase's transaction, so that a replayed
        request never asks the store again and no transaction waits on a store. Only adults buy: a
        minor's purchase is refused before any store is asked.
        """
        package = self.catalogue.package(package_id, currency)
        buyer = transactions.run(lambda uow: self.accounts.wallet(uow, user_id, lock=False))
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

    def purchase(self, uow: UnitOfWork, user_id: str, verified: VerifiedPurchase) -> PurchaseResult:
        """Credit a verified purchase's package; a store transaction credits once, ever."""
        package, receipt = verified.package, verified.receipt
        # The store's notifications of this transaction and its purchase are decided one at a time.
        uow.lock_store_transaction(receipt.store, receipt.store_transaction_id)
        wallet = self.accounts.wallet(uow, user_id)
        self.accounts.check_room(uow, user_id, package.coins)
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
        self.accounts.post(
            uow,
            user_id,
            PURCHASE,
            record.purchase_id,
            [Posting(ISSUED_BY_PURCHASE, -record.coins), Posting(accounts.purchased, record.coins)],
            now,
        )
        self.accounts.settle_debt(uow, accounts, record.purchase_id, now)
        return PurchaseResult(record, self.accounts.view(uow, wallet))

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

    def refund(self, uow: UnitOfWork, store: str, store_transaction_id: str, kind: str) -> RefundResult:
        """Take a refunded (or charged back) purchase's coins back; what was spent becomes debt."""
        purchase = uow.purchase_by_store_transaction(store, store_transaction_id)
        if purchase is None:
            raise not_found(
                "PURCHASE_NOT_FOUND",
                f"no purchase with store transaction {store_transaction_id} of store {store}",
                store=store,
                store_transaction_id=store_transaction_id,
            )
        wallet = self.accounts.wallet(uow, purchase.user_id)
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
        self.accounts.post(
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
        return RefundResult(replace(purchase, refund_kind=kind), reclaimed, debt_added, self.accounts.view(uow, wallet))

    def apply_store_notice(self, uow: UnitOfWork, notice: StoreNotice) -> str:
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
            self.accounts.wallet(uow, purchase.user_id)  # every change of the purchase's wallet takes this lock
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

    def _apply_notice(self, uow: UnitOfWork, purchase: PurchaseRecord, kind: str) -> str:
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

    def _reinstate(self, uow: UnitOfWork, purchase: PurchaseRecord) -> None:
        """The store reversed a refund: the coins come back (paying off debt first)."""
        now = self.clock.now()
        uow.insert_reinstatement(purchase.purchase_id, now)
        accounts = WalletAccounts(purchase.user_id)
        self.accounts.post(
            uow,
            purchase.user_id,
            REINSTATEMENT,
            purchase.purchase_id,
            [Posting(REFUNDED, -purchase.coins), Posting(accounts.purchased, purchase.coins)],
            now,
        )
        self.accounts.settle_debt(uow, accounts, purchase.purchase_id, now)

    def apply_notice_once(self, transactions: Transactions[UnitOfWork], notice: StoreNotice) -> str:
        """`apply_store_notice` in a unit of work of its own; a notification seen before is DUPLICATE."""
        try:
            outcome = transactions.run(lambda uow: self.apply_store_notice(uow, notice))
        except _NoticeSeen:
            outcome = DUPLICATE
        STORE_NOTIFICATIONS.add(1, {"giftcoin.store": notice.store, "giftcoin.outcome": outcome})
        return outcome

    def purchases_to_consume(self, uow: UnitOfWork, store: str, limit: int = 100) -> list[PurchaseRecord]:
        return uow.purchases_to_consume(store, limit)

    def consumed(self, uow: UnitOfWork, purchase_id: str) -> None:
        uow.mark_consumed(purchase_id, self.clock.now())


class _NoticeSeen(Exception):
    """The store notification was applied before (raised inside the unit of work, so that it rolls back)."""


def _refunded(notifications: Sequence[StoreNotificationRecord]) -> bool:
    """Whether the store's last word on a transaction is a refund or chargeback."""
    if not notifications:
        return False
    return max(notifications, key=lambda n: n.occurred_at).kind in (REFUND, CHARGEBACK)
