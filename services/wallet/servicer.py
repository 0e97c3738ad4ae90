"""WalletService over gRPC: validate, translate protobuf <-> domain, nothing else.

Every mutating RPC runs its domain call through `self.calls` (runtime.guarded: the request-id store,
AIP-155), keyed by the caller's subject and the request id, so a replay returns the recorded response
or business failure.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import Executor
from datetime import datetime

import grpc
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from google.protobuf import timestamp_pb2

from services.runtime.audit import AuditLog
from services.runtime.auth import calling_user_id
from services.runtime.errors import DomainError, item_results
from services.runtime.guarded import GuardedCalls
from services.runtime.ledger import MAX_AMOUNT
from services.runtime.pagination import CursorValue, Listing, decode_page_token, encode_page_token
from services.runtime.timestamps import to_timestamp
from services.runtime.validation import Validator, clamp_page_size
from services.wallet import model
from services.wallet.domain import CaptureReads, HoldReads, UnitOfWork, Wallets
from services.wallet.model import (
    CAPTURED,
    CHARGEBACK,
    EXPIRED,
    HELD,
    MAX_STORE_TRANSACTION_ID_LENGTH,
    REFUND,
    RELEASED,
    BookedHoldRecord,
    HoldAsk,
    HoldRecord,
    PromotionRecord,
    PurchaseRecord,
)

FULL_NAME = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name
MAX_RECEIPT_LENGTH = 16_384
MAX_SUMMARY_DAYS = 31

HoldOutcome = wallet_pb2.HoldCoinsResponse | DomainError
CaptureOutcome = wallet_pb2.CaptureHoldResponse | DomainError

_WALLET_STATUS = {
    model.WalletStatus.ACTIVE: wallet_pb2.WALLET_STATUS_ACTIVE,
    model.WalletStatus.FROZEN: wallet_pb2.WALLET_STATUS_FROZEN,
}
_PURCHASE_STATE = {
    "": wallet_pb2.PURCHASE_STATE_COMPLETED,
    REFUND: wallet_pb2.PURCHASE_STATE_REFUNDED,
    CHARGEBACK: wallet_pb2.PURCHASE_STATE_CHARGED_BACK,
}
_REFUND_KIND = {wallet_pb2.REFUND_KIND_REFUND: REFUND, wallet_pb2.REFUND_KIND_CHARGEBACK: CHARGEBACK}
_REFUND_KIND_PB = {v: k for k, v in _REFUND_KIND.items()}
_HOLD_STATE = {
    HELD: wallet_pb2.HOLD_STATE_HELD,
    CAPTURED: wallet_pb2.HOLD_STATE_CAPTURED,
    RELEASED: wallet_pb2.HOLD_STATE_RELEASED,
    EXPIRED: wallet_pb2.HOLD_STATE_EXPIRED,
}
_TRANSACTION_KIND = {
    model.PURCHASE: wallet_pb2.TRANSACTION_KIND_PURCHASE,
    model.PROMOTION: wallet_pb2.TRANSACTION_KIND_PROMOTION,
    model.HOLD: wallet_pb2.TRANSACTION_KIND_HOLD,
    model.CAPTURE: wallet_pb2.TRANSACTION_KIND_CAPTURE,
    model.RELEASE: wallet_pb2.TRANSACTION_KIND_RELEASE,
    model.EXPIRY: wallet_pb2.TRANSACTION_KIND_EXPIRY,
    model.REFUND: wallet_pb2.TRANSACTION_KIND_REFUND,
    model.DEBT_SETTLEMENT: wallet_pb2.TRANSACTION_KIND_DEBT_SETTLEMENT,
    model.REINSTATEMENT: wallet_pb2.TRANSACTION_KIND_REINSTATEMENT,
}


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(
        self,
        wallets: Wallets,
        calls: GuardedCalls[UnitOfWork],
        audit: AuditLog,
        hold_ttl_max_seconds: int,
        store_threads: Executor,
    ) -> None:
        self.wallets = wallets
        self.calls = calls
        self.audit = audit
        self.hold_ttl_max_seconds = hold_ttl_max_seconds
        self.store_threads = store_threads

    # --- user ---------------------------------------------------------------------------------

    def OpenWallet(
        self, request: wallet_pb2.OpenWalletRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.OpenWalletResponse:
        user_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        born = None
        if not request.HasField("date_of_birth"):
            v.fail("date_of_birth", "required")
        else:
            d = request.date_of_birth
            born = v.calendar_date(d.year, d.month, d.day, "date_of_birth")
        v.country(request.country_code)
        v.check()
        assert born is not None

        def work(uow: UnitOfWork) -> wallet_pb2.OpenWalletResponse:
            wallet = self.wallets.open_wallet(uow, user_id, born, request.country_code)
            return wallet_pb2.OpenWalletResponse(wallet=_wallet(wallet))

        return self.calls.once("OpenWallet", request, wallet_pb2.OpenWalletResponse, work)

    def GetWallet(
        self, request: wallet_pb2.GetWalletRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.GetWalletResponse:
        user_id = calling_user_id()
        wallet = self.calls.read(lambda uow: self.wallets.get_wallet(uow, user_id))
        return wallet_pb2.GetWalletResponse(wallet=_wallet(wallet))

    async def PurchaseCoins(
        self, request: wallet_pb2.PurchaseCoinsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.PurchaseCoinsResponse:
        """Waits on a store (Apple's or Google's servers verify the receipt): on threads of its own, so
        that a slow or silent store holds up purchases only, never the database's threads (holds)."""
        run = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(self.store_threads, run, self._purchase, request)

    def _purchase(self, request: wallet_pb2.PurchaseCoinsRequest) -> wallet_pb2.PurchaseCoinsResponse:
        user_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.package_id, "package_id")
        if request.currency_code:
            v.currency(request.currency_code)
        if not request.HasField("receipt"):
            v.fail("receipt", "required: the store's receipt")
        else:
            v.identifier(request.receipt.store, "receipt.store")
            v.text(request.receipt.payload, "receipt.payload", max_length=MAX_RECEIPT_LENGTH)
        v.check()

        def verify() -> model.VerifiedPurchase:
            return self.wallets.verify_purchase(
                self.calls.transactions,
                user_id,
                request.package_id,
                request.currency_code,
                request.receipt.store,
                request.receipt.payload,
            )

        def work(uow: UnitOfWork, verified: model.VerifiedPurchase) -> wallet_pb2.PurchaseCoinsResponse:
            result = self.wallets.purchase(uow, user_id, verified)
            return wallet_pb2.PurchaseCoinsResponse(purchase=_purchase(result.purchase), wallet=_wallet(result.wallet))

        return self.calls.once_prepared("PurchaseCoins", request, wallet_pb2.PurchaseCoinsResponse, verify, work)

    def ClaimPromotion(
        self, request: wallet_pb2.ClaimPromotionRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ClaimPromotionResponse:
        user_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.promotion_id, "promotion_id")
        v.check()

        def work(uow: UnitOfWork) -> wallet_pb2.ClaimPromotionResponse:
            result = self.wallets.claim_promotion(uow, user_id, request.promotion_id)
            return wallet_pb2.ClaimPromotionResponse(coins_granted=result.coins_granted, wallet=_wallet(result.wallet))

        return self.calls.once("ClaimPromotion", request, wallet_pb2.ClaimPromotionResponse, work)

    def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListTransactionsResponse:
        transactions, token = self._history(calling_user_id(), request.page_size, request.page_token)
        return wallet_pb2.ListTransactionsResponse(transactions=transactions, next_page_token=token)

    def _history(self, user_id: str, page_size: int, page_token: str) -> tuple[list[wallet_pb2.Transaction], str]:
        v = Validator()
        v.page_size(page_size)
        v.check()
        cursor = decode_page_token(page_token, "transactions", {"before": CursorValue.POSITION})
        before = None if cursor is None else cursor["before"]
        size = clamp_page_size(page_size)
        page = self.calls.read(lambda uow: self.wallets.transactions(uow, user_id, size, before))
        token = "" if page.next_cursor is None else encode_page_token("transactions", {"before": page.next_cursor})
        return [_transaction(t) for t in page.transactions], token

    # --- anyone -------------------------------------------------------------------------------

    def ListCoinPackages(
        self, request: wallet_pb2.ListCoinPackagesRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListCoinPackagesResponse:
        v = Validator()
        if request.currency_code:
            v.currency(request.currency_code)
        v.check()
        return wallet_pb2.ListCoinPackagesResponse(
            packages=[
                wallet_pb2.CoinPackage(
                    package_id=p.package_id, coins=p.coins, price=_money(p.price_minor, p.currency_code)
                )
                for p in self.wallets.catalogue.packages(request.currency_code)
            ]
        )

    # --- operator -----------------------------------------------------------------------------

    def RefundPurchase(
        self, request: wallet_pb2.RefundPurchaseRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.RefundPurchaseResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.store, "store")
        v.text(request.store_transaction_id, "store_transaction_id", max_length=MAX_STORE_TRANSACTION_ID_LENGTH)
        v.enum(request.kind, set(_REFUND_KIND), "kind")
        v.check()

        def work(uow: UnitOfWork) -> wallet_pb2.RefundPurchaseResponse:
            result = self.wallets.refund(uow, request.store, request.store_transaction_id, _REFUND_KIND[request.kind])
            return wallet_pb2.RefundPurchaseResponse(
                purchase=_purchase(result.purchase),
                coins_reclaimed=result.coins_reclaimed,
                debt_added=result.debt_added,
                wallet=_wallet(result.wallet),
            )

        target = f"{request.store}:{request.store_transaction_id}"
        return self.calls.once("RefundPurchase", request, wallet_pb2.RefundPurchaseResponse, work, target)

    def CreatePromotion(
        self, request: wallet_pb2.CreatePromotionRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.CreatePromotionResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.promotion_id, "promotion_id")
        v.text(request.name, "name")
        v.positive(request.coins_per_claim, "coins_per_claim", maximum=MAX_AMOUNT)
        v.positive(request.budget, "budget", maximum=MAX_AMOUNT)
        if 0 < request.budget < request.coins_per_claim:
            v.fail("budget", "must be at least coins_per_claim")
        start = _timestamp(v, request, "start_time")
        end = _timestamp(v, request, "end_time")
        if start is not None and end is not None and end <= start:
            v.fail("end_time", "must be after start_time")
        v.check()
        assert start is not None and end is not None
        record = PromotionRecord(
            request.promotion_id, request.name, request.coins_per_claim, request.budget, start, end
        )

        def work(uow: UnitOfWork) -> wallet_pb2.CreatePromotionResponse:
            return wallet_pb2.CreatePromotionResponse(promotion=_promotion(self.wallets.create_promotion(uow, record)))

        return self.calls.once(
            "CreatePromotion", request, wallet_pb2.CreatePromotionResponse, work, request.promotion_id
        )

    def GetUserWallet(
        self, request: wallet_pb2.GetUserWalletRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.GetUserWalletResponse:
        v = Validator()
        v.identifier(request.user_id, "user_id")
        v.check()
        wallet = self.calls.read(lambda uow: self.wallets.get_wallet(uow, request.user_id))
        return wallet_pb2.GetUserWalletResponse(wallet=_wallet(wallet))

    def ListUserTransactions(
        self, request: wallet_pb2.ListUserTransactionsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListUserTransactionsResponse:
        v = Validator()
        v.identifier(request.user_id, "user_id")
        v.check()
        transactions, token = self._history(request.user_id, request.page_size, request.page_token)
        return wallet_pb2.ListUserTransactionsResponse(transactions=transactions, next_page_token=token)

    def ListPromotions(
        self, request: wallet_pb2.ListPromotionsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListPromotionsResponse:
        v = Validator()
        v.page_size(request.page_size)
        v.check()
        cursor = decode_page_token(request.page_token, "promotions", {"after": CursorValue.IDENTIFIER})
        size = clamp_page_size(request.page_size)
        after = None if cursor is None else cursor["after"]
        page, more = self.calls.read(lambda uow: self.wallets.promotions(uow, size, after))
        token = encode_page_token("promotions", {"after": page[-1].record.promotion_id}) if more else ""
        return wallet_pb2.ListPromotionsResponse(promotions=[_promotion(p) for p in page], next_page_token=token)

    def ListAuditRecords(
        self, request: wallet_pb2.ListAuditRecordsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListAuditRecordsResponse:
        records, token = self.audit.page(request.page_size, request.page_token)
        return wallet_pb2.ListAuditRecordsResponse(records=records, next_page_token=token)

    # --- reconciler -----------------------------------------------------------------------------

    def ListHolds(
        self, request: wallet_pb2.ListHoldsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ListHoldsResponse:
        listing = Listing("holds", request, "gift_ids", Validator())
        s = listing.selection
        page, more = self.calls.read(
            lambda uow: self.wallets.booked_holds(uow, listing.size, (s.start, s.end), s.ids, s.after)
        )
        token = listing.next_token(more, page[-1].hold.created_at, page[-1].hold.hold_id) if page else ""
        return wallet_pb2.ListHoldsResponse(holds=[_booked_hold(h) for h in page], next_page_token=token)

    def SummarizeBooks(
        self, request: wallet_pb2.SummarizeBooksRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.SummarizeBooksResponse:
        start, end = Validator().summary_window(request, MAX_SUMMARY_DAYS)
        s = self.calls.read(lambda uow: self.wallets.summary(uow, start, end))
        return wallet_pb2.SummarizeBooksResponse(
            takings=[
                wallet_pb2.StoreTakings(
                    store=t.store, amount=_money(t.amount_minor, t.currency_code), purchases=t.purchases, coins=t.coins
                )
                for t in s.takings
            ],
            refunds=[
                wallet_pb2.RefundTotals(
                    kind=_REFUND_KIND_PB[r.kind],
                    amount=_money(r.amount_minor, r.currency_code),
                    refunds=r.refunds,
                    coins_reclaimed=r.coins_reclaimed,
                    debt_added=r.debt_added,
                )
                for r in s.refunds
            ],
            reversals=[
                wallet_pb2.RefundReversals(
                    amount=_money(r.amount_minor, r.currency_code), reversals=r.reversals, coins=r.coins
                )
                for r in s.reversals
            ],
            coins_purchased=s.coins_purchased,
            coins_granted=s.coins_granted,
            coins_outstanding=s.coins_outstanding,
            coins_outstanding_promotional=s.coins_outstanding_promotional,
            coins_held=s.coins_held,
            promotion_budgets_remaining=s.promotion_budgets_remaining,
            as_of=to_timestamp(s.as_of),
        )

    # --- internal: gifting --------------------------------------------------------------------

    def HoldCoins(
        self, request: wallet_pb2.HoldCoinsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.HoldCoinsResponse:
        self._validate_hold(request).check()

        def work(uow: UnitOfWork) -> wallet_pb2.HoldCoinsResponse:
            hold = self.wallets.hold(uow, request.gift_id, request.user_id, request.amount, request.ttl_seconds)
            return wallet_pb2.HoldCoinsResponse(hold=_hold(hold))

        return self.calls.once("HoldCoins", request, wallet_pb2.HoldCoinsResponse, work)

    def BatchHoldCoins(
        self, request: wallet_pb2.BatchHoldCoinsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.BatchHoldCoinsResponse:
        def read(uow: UnitOfWork, requests: list[wallet_pb2.HoldCoinsRequest]) -> HoldReads:
            return self.wallets.read_holds(uow, [_hold_ask(r) for r in requests])

        def work(uow: UnitOfWork, requests: list[wallet_pb2.HoldCoinsRequest], reads: HoldReads) -> list[HoldOutcome]:
            asks = [_hold_ask(r) for r in requests]
            return [_hold_response(o) for o in self.wallets.hold_many(uow, asks, reads)]

        outcomes = self.calls.each(
            "HoldCoins", request.requests, self._validate_hold, wallet_pb2.HoldCoinsResponse, work, read
        )
        return wallet_pb2.BatchHoldCoinsResponse(results=item_results(wallet_pb2.HoldCoinsResult, outcomes))

    def _validate_hold(self, request: wallet_pb2.HoldCoinsRequest) -> Validator:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.gift_id, "gift_id")
        v.identifier(request.user_id, "user_id")
        v.positive(request.amount, "amount", maximum=MAX_AMOUNT)
        v.non_negative(request.ttl_seconds, "ttl_seconds", maximum=self.hold_ttl_max_seconds)
        return v

    def CaptureHold(
        self, request: wallet_pb2.CaptureHoldRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.CaptureHoldResponse:
        _validate_capture(request).check()

        def work(uow: UnitOfWork) -> wallet_pb2.CaptureHoldResponse:
            return wallet_pb2.CaptureHoldResponse(hold=_hold(self.wallets.capture(uow, request.gift_id)))

        return self.calls.once("CaptureHold", request, wallet_pb2.CaptureHoldResponse, work)

    def BatchCaptureHolds(
        self, request: wallet_pb2.BatchCaptureHoldsRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.BatchCaptureHoldsResponse:
        def read(uow: UnitOfWork, requests: list[wallet_pb2.CaptureHoldRequest]) -> CaptureReads:
            return self.wallets.read_captures(uow, [r.gift_id for r in requests])

        def work(
            uow: UnitOfWork, requests: list[wallet_pb2.CaptureHoldRequest], reads: CaptureReads
        ) -> list[CaptureOutcome]:
            return [_capture_response(o) for o in self.wallets.capture_many(uow, [r.gift_id for r in requests], reads)]

        outcomes = self.calls.each(
            "CaptureHold", request.requests, _validate_capture, wallet_pb2.CaptureHoldResponse, work, read
        )
        return wallet_pb2.BatchCaptureHoldsResponse(results=item_results(wallet_pb2.CaptureHoldResult, outcomes))

    def ReleaseHold(
        self, request: wallet_pb2.ReleaseHoldRequest, context: grpc.ServicerContext
    ) -> wallet_pb2.ReleaseHoldResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.gift_id, "gift_id")
        v.check()

        def work(uow: UnitOfWork) -> wallet_pb2.ReleaseHoldResponse:
            return wallet_pb2.ReleaseHoldResponse(hold=_hold(self.wallets.release(uow, request.gift_id)))

        return self.calls.once("ReleaseHold", request, wallet_pb2.ReleaseHoldResponse, work)


def _hold_ask(request: wallet_pb2.HoldCoinsRequest) -> HoldAsk:
    return HoldAsk(request.gift_id, request.user_id, request.amount, request.ttl_seconds)


def _validate_capture(request: wallet_pb2.CaptureHoldRequest) -> Validator:
    v = Validator()
    v.request_id(request.request_id)
    v.identifier(request.gift_id, "gift_id")
    return v


def _hold_response(outcome: HoldRecord | DomainError) -> HoldOutcome:
    return outcome if isinstance(outcome, DomainError) else wallet_pb2.HoldCoinsResponse(hold=_hold(outcome))


def _capture_response(outcome: HoldRecord | DomainError) -> CaptureOutcome:
    return outcome if isinstance(outcome, DomainError) else wallet_pb2.CaptureHoldResponse(hold=_hold(outcome))


def _timestamp(v: Validator, request: wallet_pb2.CreatePromotionRequest, field: str) -> datetime | None:
    if not request.HasField(field):  # type: ignore[arg-type]
        v.fail(field, "required")
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, field)
    return v.timestamp(stamp.seconds, stamp.nanos, field)


def _money(amount_minor: int, currency_code: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency_code=currency_code)


def _wallet(w: model.Wallet) -> wallet_pb2.Wallet:
    b = w.balance
    return wallet_pb2.Wallet(
        user_id=w.user_id,
        status=_WALLET_STATUS[w.status],
        date_of_birth=common_pb2.Date(year=w.date_of_birth.year, month=w.date_of_birth.month, day=w.date_of_birth.day),
        country_code=w.country_code,
        adult=w.adult,
        balance=wallet_pb2.Balance(
            total=b.total, held=b.held, available=b.available, promotional=b.promotional, purchased=b.purchased
        ),
        debt=w.debt,
        create_time=to_timestamp(w.created_at),
    )


def _purchase(p: PurchaseRecord) -> wallet_pb2.Purchase:
    return wallet_pb2.Purchase(
        purchase_id=p.purchase_id,
        user_id=p.user_id,
        package_id=p.package_id,
        coins=p.coins,
        price=_money(p.price_minor, p.currency_code),
        store=p.store,
        store_transaction_id=p.store_transaction_id,
        state=_PURCHASE_STATE[p.refund_kind],
        create_time=to_timestamp(p.created_at),
    )


def _promotion(p: model.Promotion) -> wallet_pb2.Promotion:
    r = p.record
    return wallet_pb2.Promotion(
        promotion_id=r.promotion_id,
        name=r.name,
        coins_per_claim=r.coins_per_claim,
        budget=r.budget,
        remaining=p.remaining,
        start_time=to_timestamp(r.start_time),
        end_time=to_timestamp(r.end_time),
    )


def _hold(h: HoldRecord) -> wallet_pb2.Hold:
    return wallet_pb2.Hold(
        hold_id=h.hold_id,
        gift_id=h.gift_id,
        user_id=h.user_id,
        amount=h.amount,
        promotional_amount=h.promotional_amount,
        state=_HOLD_STATE[h.state],
        expire_time=to_timestamp(h.expire_time),
        create_time=to_timestamp(h.created_at),
    )


def _booked_hold(b: BookedHoldRecord) -> wallet_pb2.BookedHold:
    return wallet_pb2.BookedHold(
        hold=_hold(b.hold),
        update_time=to_timestamp(b.updated_at),
        debt_added=b.hold.debt_added,
        spent_coins=b.spent,
        spent_promotional_coins=b.spent_promotional,
        capture_transfers=b.capture_transfers,
    )


def _transaction(t: model.Transaction) -> wallet_pb2.Transaction:
    return wallet_pb2.Transaction(
        transaction_id=t.transaction_id,
        kind=_TRANSACTION_KIND[t.kind],
        total_delta=t.total_delta,
        held_delta=t.held_delta,
        promotional_delta=t.promotional_delta,
        reference=t.reference,
        create_time=to_timestamp(t.created_at),
    )
