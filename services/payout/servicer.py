"""PayoutService over gRPC: validates requests, calls the domain, turns its results into protobuf.

Who may call what is the ACCESS table in app.py; user RPCs act only for the caller (the token's
user id is the creator id). Every mutating RPC runs through the request-id store (AIP-155).
"""

from __future__ import annotations

from datetime import date

import grpc
from giftcoin.common.v1 import common_pb2
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc

from services.payout import model
from services.payout.domain import Payouts, UnitOfWork
from services.payout.model import (
    FAILED,
    MAX_SANDBOX_DELAY_SECONDS,
    PAID,
    PROCESSING,
    REQUESTED,
    SANDBOX,
    BookedCreditRecord,
    Creator,
    Credit,
    CreditRequest,
    Destination,
    DiamondTransaction,
    Payout,
    Quote,
    sandbox_behaviour,
)
from services.runtime.audit import AuditLog
from services.runtime.auth import calling_user_id
from services.runtime.errors import DomainError, FieldViolation, invalid_argument, item_results
from services.runtime.guarded import GuardedCalls
from services.runtime.ledger import MAX_AMOUNT, MAX_BALANCE
from services.runtime.pagination import CursorValue, Listing, decode_page_token, encode_page_token, filtered
from services.runtime.timestamps import from_timestamp, to_timestamp
from services.runtime.validation import Validator, clamp_page_size

FULL_NAME = payout_pb2.DESCRIPTOR.services_by_name["PayoutService"].full_name
MAX_REFERENCE_LENGTH = 256
MAX_SUMMARY_DAYS = 31

_KYC = {
    payout_pb2.KYC_STATUS_UNVERIFIED: model.KYC_UNVERIFIED,
    payout_pb2.KYC_STATUS_VERIFIED: model.KYC_VERIFIED,
    payout_pb2.KYC_STATUS_REJECTED: model.KYC_REJECTED,
}
_KYC_PB = {v: k for k, v in _KYC.items()}
_KINDS = {
    payout_pb2.DESTINATION_KIND_BANK_ACCOUNT: model.BANK_ACCOUNT,
    payout_pb2.DESTINATION_KIND_PAYPAL: model.PAYPAL,
    payout_pb2.DESTINATION_KIND_SANDBOX: SANDBOX,
}
_KINDS_PB = {v: k for k, v in _KINDS.items()}
_STATES_PB = {
    REQUESTED: payout_pb2.PAYOUT_STATE_REQUESTED,
    PROCESSING: payout_pb2.PAYOUT_STATE_PROCESSING,
    PAID: payout_pb2.PAYOUT_STATE_PAID,
    FAILED: payout_pb2.PAYOUT_STATE_FAILED,
}
_STATES = {v: k for k, v in _STATES_PB.items()}
_TRANSACTION_KINDS_PB = {
    model.GIFT_CREDIT: payout_pb2.DIAMOND_TRANSACTION_KIND_GIFT_CREDIT,
    model.PAYOUT: payout_pb2.DIAMOND_TRANSACTION_KIND_PAYOUT,
    model.PAYOUT_RETURNED: payout_pb2.DIAMOND_TRANSACTION_KIND_PAYOUT_RETURNED,
}


class PayoutServicer(payout_pb2_grpc.PayoutServiceServicer):
    def __init__(self, calls: GuardedCalls[UnitOfWork], audit: AuditLog, payouts: Payouts) -> None:
        self.calls = calls
        self.audit = audit  # read by ListAuditRecords; calls write it
        self.payouts = payouts

    # --- creators ------------------------------------------------------------------------------

    def RegisterCreator(
        self, request: payout_pb2.RegisterCreatorRequest, context: grpc.ServicerContext
    ) -> payout_pb2.RegisterCreatorResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        born = _date_of_birth(v, request)
        v.country(request.country_code)
        v.check()
        if born is None:  # unreachable: check() refused a missing or invalid date
            raise invalid_argument([FieldViolation("date_of_birth", "required: a valid calendar date")])
        return self.calls.once(
            "RegisterCreator",
            request,
            payout_pb2.RegisterCreatorResponse,
            lambda uow: payout_pb2.RegisterCreatorResponse(
                creator=_creator(self.payouts.register_creator(uow, creator_id, born, request.country_code))
            ),
        )

    def SetPayoutDestination(
        self, request: payout_pb2.SetPayoutDestinationRequest, context: grpc.ServicerContext
    ) -> payout_pb2.SetPayoutDestinationResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        if not request.HasField("destination"):
            v.fail("destination", "required")
        else:
            d = request.destination
            v.enum(d.kind, set(_KINDS), "destination.kind")
            v.text(d.account_reference, "destination.account_reference", max_length=MAX_REFERENCE_LENGTH)
            sandbox = d.kind == payout_pb2.DESTINATION_KIND_SANDBOX
            if sandbox and d.account_reference and sandbox_behaviour(d.account_reference) is None:
                v.fail(
                    "destination.account_reference",
                    f'sandbox: "succeed", "fail" or "delay:<seconds>" (at most {MAX_SANDBOX_DELAY_SECONDS} seconds)',
                )
            v.currency(d.currency_code, "destination.currency_code")
        v.check()
        d = request.destination
        destination = Destination(_KINDS[d.kind], d.account_reference, d.currency_code)
        return self.calls.once(
            "SetPayoutDestination",
            request,
            payout_pb2.SetPayoutDestinationResponse,
            lambda uow: payout_pb2.SetPayoutDestinationResponse(
                creator=_creator(self.payouts.set_destination(uow, creator_id, destination))
            ),
        )

    def VerifyCreator(
        self, request: payout_pb2.VerifyCreatorRequest, context: grpc.ServicerContext
    ) -> payout_pb2.VerifyCreatorResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.creator_id, "creator_id")
        v.enum(request.kyc_status, set(_KYC), "kyc_status")
        v.check()
        return self.calls.once(
            "VerifyCreator",
            request,
            payout_pb2.VerifyCreatorResponse,
            lambda uow: payout_pb2.VerifyCreatorResponse(
                creator=_creator(self.payouts.verify_creator(uow, request.creator_id, _KYC[request.kyc_status]))
            ),
            audit_target=request.creator_id,
        )

    # --- credits -------------------------------------------------------------------------------

    def CreditDiamonds(
        self, request: payout_pb2.CreditDiamondsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.CreditDiamondsResponse:
        v = Validator()
        _check_credit(v, request)
        v.check()
        return self.calls.once(
            "CreditDiamonds",
            request,
            payout_pb2.CreditDiamondsResponse,
            lambda uow: _credited(self.payouts.credit_diamonds(uow, _credit_request(request))),
        )

    def BatchCreditDiamonds(
        self, request: payout_pb2.BatchCreditDiamondsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.BatchCreditDiamondsResponse:
        """Many CreditDiamonds in one transaction, each answered (and replayed) as CreditDiamonds would."""
        outcomes = self.calls.each(
            "CreditDiamonds",
            request.requests,
            _validate_credit,
            payout_pb2.CreditDiamondsResponse,
            lambda uow, requests, reads: [
                o if isinstance(o, DomainError) else _credited(o)
                for o in self.payouts.credit_many(uow, [_credit_request(r) for r in requests], reads)
            ],
            lambda uow, requests: self.payouts.read_credits(uow, [_credit_request(r) for r in requests]),
        )
        return payout_pb2.BatchCreditDiamondsResponse(results=item_results(payout_pb2.CreditDiamondsResult, outcomes))

    # --- reads ---------------------------------------------------------------------------------

    def GetEarnings(
        self, request: payout_pb2.GetEarningsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.GetEarningsResponse:
        creator_id = calling_user_id()
        e = self.calls.read(lambda uow: self.payouts.earnings(uow, creator_id))
        return payout_pb2.GetEarningsResponse(
            diamond_balance=e.diamond_balance,
            cash_value=_money(e.cash_value, e.currency),
            pending_diamonds=e.pending_diamonds,
            pending_net=_money(e.pending_net, e.currency),
            paid_net=_money(e.paid_net, e.currency),
            rate=common_pb2.Ratio(numerator=e.rate.cents, denominator=e.rate.diamonds),
        )

    def ListDiamondTransactions(
        self, request: payout_pb2.ListDiamondTransactionsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListDiamondTransactionsResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.page_size(request.page_size)
        v.check()
        cursor = decode_page_token(request.page_token, "diamond_transactions", {"position": CursorValue.POSITION})
        before = None if cursor is None else cursor["position"]
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.payouts.diamond_transactions(uow, creator_id, size, before))
        token = ""
        if page.has_more:
            token = encode_page_token("diamond_transactions", {"position": page.items[-1].position})
        return payout_pb2.ListDiamondTransactionsResponse(
            transactions=[_transaction(t) for t in page.items], next_page_token=token
        )

    def QuotePayout(
        self, request: payout_pb2.QuotePayoutRequest, context: grpc.ServicerContext
    ) -> payout_pb2.QuotePayoutResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.non_negative(request.diamonds, "diamonds", MAX_BALANCE)
        v.check()
        quote = self.calls.read(lambda uow: self.payouts.quote(uow, creator_id, request.diamonds))
        return payout_pb2.QuotePayoutResponse(quote=_quote(quote))

    def RequestPayout(
        self, request: payout_pb2.RequestPayoutRequest, context: grpc.ServicerContext
    ) -> payout_pb2.RequestPayoutResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        v.non_negative(request.diamonds, "diamonds", MAX_BALANCE)
        v.check()
        return self.calls.once(
            "RequestPayout",
            request,
            payout_pb2.RequestPayoutResponse,
            lambda uow: payout_pb2.RequestPayoutResponse(
                payout=_payout(self.payouts.request_payout(uow, creator_id, request.diamonds))
            ),
        )

    def GetPayout(
        self, request: payout_pb2.GetPayoutRequest, context: grpc.ServicerContext
    ) -> payout_pb2.GetPayoutResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.identifier(request.payout_id, "payout_id")
        v.check()
        payout = self.calls.read(lambda uow: self.payouts.get_payout(uow, creator_id, request.payout_id))
        return payout_pb2.GetPayoutResponse(payout=_payout(payout))

    def ListPayouts(
        self, request: payout_pb2.ListPayoutsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListPayoutsResponse:
        creator_id = calling_user_id()
        v = Validator()
        v.page_size(request.page_size)
        v.check()
        cursor = decode_page_token(
            request.page_token, "payouts", {"created_at": CursorValue.INSTANT, "payout_id": CursorValue.ID}
        )
        before = None if cursor is None else (cursor["created_at"], cursor["payout_id"])
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.payouts.list_payouts(uow, creator_id, size, before))
        token = ""
        if page.has_more:
            last = page.items[-1]
            token = encode_page_token("payouts", {"created_at": last.created_at, "payout_id": last.payout_id})
        return payout_pb2.ListPayoutsResponse(payouts=[_payout(p) for p in page.items], next_page_token=token)

    # --- operators and the reconciler -----------------------------------------------------------

    def ListCreators(
        self, request: payout_pb2.ListCreatorsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListCreatorsResponse:
        v = Validator()
        if request.kyc_status:
            v.enum(request.kyc_status, set(_KYC), "kyc_status")
        v.page_size(request.page_size)
        v.check()
        kyc = _KYC.get(request.kyc_status)
        listing = filtered("creators", kyc)
        cursor = decode_page_token(request.page_token, listing, {"after": CursorValue.IDENTIFIER})
        after = None if cursor is None else cursor["after"]
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.payouts.creators(uow, kyc, size, after))
        token = encode_page_token(listing, {"after": page.items[-1].creator_id}) if page.has_more else ""
        return payout_pb2.ListCreatorsResponse(creators=[_creator(c) for c in page.items], next_page_token=token)

    def ListPayoutsByState(
        self, request: payout_pb2.ListPayoutsByStateRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListPayoutsByStateResponse:
        v = Validator()
        for i, state in enumerate(request.states):
            v.enum(state, set(_STATES), f"states[{i}]")
        v.page_size(request.page_size)
        v.check()
        states = sorted({_STATES[s] for s in request.states})
        listing = filtered("payouts_by_state", states)
        cursor = decode_page_token(
            request.page_token, listing, {"created_at": CursorValue.INSTANT, "payout_id": CursorValue.ID}
        )
        position = None if cursor is None else (cursor["created_at"], cursor["payout_id"])
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.payouts.payouts_by_state(uow, states, size, position))
        token = ""
        if page.has_more:
            last = page.items[-1]
            token = encode_page_token(listing, {"created_at": last.created_at, "payout_id": last.payout_id})
        return payout_pb2.ListPayoutsByStateResponse(payouts=[_payout(p) for p in page.items], next_page_token=token)

    def ListDiamondCredits(
        self, request: payout_pb2.ListDiamondCreditsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListDiamondCreditsResponse:
        listing = Listing("diamond_credits", request, "gift_ids", Validator())
        selection = listing.selection
        page = self.calls.read(
            lambda uow: self.payouts.booked_credits(
                uow, listing.size, selection.start, selection.end, selection.ids, selection.after
            )
        )
        last = page.items[-1].credit if page.items else None
        token = listing.next_token(page.has_more, last.created_at, last.credit_id) if last else ""
        return payout_pb2.ListDiamondCreditsResponse(
            credits=[_booked_credit(c) for c in page.items], next_page_token=token
        )

    def SummarizeBooks(
        self, request: payout_pb2.SummarizeBooksRequest, context: grpc.ServicerContext
    ) -> payout_pb2.SummarizeBooksResponse:
        start, end = Validator().summary_window(request, MAX_SUMMARY_DAYS)
        s = self.calls.read(lambda uow: self.payouts.summary(uow, start, end))
        return payout_pb2.SummarizeBooksResponse(
            credits=s.credits,
            diamonds_credited=s.diamonds_credited,
            gift_coins=s.gift_coins,
            gift_promotional_coins=s.gift_promotional_coins,
            platform_share=s.platform_share,
            payouts=[
                payout_pb2.PayoutTotals(
                    state=_STATES_PB[t.state],
                    payouts=t.payouts,
                    diamonds=t.diamonds,
                    gross=_money(t.gross, t.currency),
                    fee=_money(t.fee, t.currency),
                    net=_money(t.net, t.currency),
                )
                for t in s.payouts
            ],
            diamonds_outstanding=s.diamonds_outstanding,
            diamonds_in_payout=s.diamonds_in_payout,
            as_of=to_timestamp(s.as_of),
        )

    def ListAuditRecords(
        self, request: payout_pb2.ListAuditRecordsRequest, context: grpc.ServicerContext
    ) -> payout_pb2.ListAuditRecordsResponse:
        records, token = self.audit.page(request.page_size, request.page_token)
        return payout_pb2.ListAuditRecordsResponse(records=records, next_page_token=token)


# --- protobuf <-> domain ----------------------------------------------------------------------------


def _validate_credit(request: payout_pb2.CreditDiamondsRequest) -> Validator:
    v = Validator()
    _check_credit(v, request)
    return v


def _check_credit(v: Validator, request: payout_pb2.CreditDiamondsRequest, prefix: str = "") -> None:
    """A CreditDiamondsRequest's fields; `prefix` places them in a batch ("requests[3].")."""
    v.request_id(request.request_id, f"{prefix}request_id")
    v.identifier(request.gift_id, f"{prefix}gift_id")
    v.identifier(request.creator_id, f"{prefix}creator_id")
    v.non_negative(request.diamonds, f"{prefix}diamonds", MAX_AMOUNT)
    v.non_negative(request.coins, f"{prefix}coins", MAX_AMOUNT)
    v.non_negative(request.promotional_coins, f"{prefix}promotional_coins", MAX_AMOUNT)
    if request.promotional_coins > request.coins >= 0:
        v.fail(f"{prefix}promotional_coins", "at most coins (the promotional part of the coins spent)")
    if request.diamonds > request.coins >= 0:
        v.fail(f"{prefix}diamonds", "at most coins: a gift never credits more diamonds than its coins")
    if request.HasField("credit_deadline"):
        v.timestamp(request.credit_deadline.seconds, request.credit_deadline.nanos, f"{prefix}credit_deadline")


def _credit_request(request: payout_pb2.CreditDiamondsRequest) -> CreditRequest:
    return CreditRequest(
        gift_id=request.gift_id,
        creator_id=request.creator_id,
        diamonds=request.diamonds,
        coins=request.coins,
        promotional_coins=request.promotional_coins,
        deadline=from_timestamp(request.credit_deadline) if request.HasField("credit_deadline") else None,
    )


def _credited(credit: Credit) -> payout_pb2.CreditDiamondsResponse:
    return payout_pb2.CreditDiamondsResponse(credit=_credit(credit))


def _date_of_birth(v: Validator, request: payout_pb2.RegisterCreatorRequest) -> date | None:
    if not request.HasField("date_of_birth"):
        v.fail("date_of_birth", "required: a valid calendar date")
        return None
    d = request.date_of_birth
    return v.calendar_date(d.year, d.month, d.day, "date_of_birth")


def _money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def _destination(d: Destination) -> payout_pb2.PayoutDestination:
    return payout_pb2.PayoutDestination(
        kind=_KINDS_PB[d.kind], account_reference=d.account_reference, currency_code=d.currency
    )


def _creator(c: Creator) -> payout_pb2.Creator:
    message = payout_pb2.Creator(
        creator_id=c.creator_id,
        date_of_birth=common_pb2.Date(year=c.date_of_birth.year, month=c.date_of_birth.month, day=c.date_of_birth.day),
        country_code=c.country_code,
        eligible=c.eligible,
        gifting_enabled=c.gifting_enabled,
        kyc_status=_KYC_PB[c.kyc_status],
        create_time=to_timestamp(c.created_at),
    )
    if c.destination is not None:
        message.destination.CopyFrom(_destination(c.destination))
    return message


def _credit(c: Credit) -> payout_pb2.DiamondCredit:
    return payout_pb2.DiamondCredit(
        credit_id=c.credit_id,
        gift_id=c.gift_id,
        creator_id=c.creator_id,
        diamonds=c.diamonds,
        create_time=to_timestamp(c.created_at),
    )


def _booked_credit(b: BookedCreditRecord) -> payout_pb2.BookedCredit:
    c = b.credit
    return payout_pb2.BookedCredit(
        credit=payout_pb2.DiamondCredit(
            credit_id=c.credit_id,
            gift_id=c.gift_id,
            creator_id=c.creator_id,
            diamonds=c.diamonds,
            create_time=to_timestamp(c.created_at),
        ),
        coins=c.coins,
        promotional_coins=c.promotional_coins,
        booked_diamonds=b.booked_diamonds,
        booked_platform_share=b.booked_share,
        diamond_transfers=b.diamond_transfers,
    )


def _transaction(t: DiamondTransaction) -> payout_pb2.DiamondTransaction:
    return payout_pb2.DiamondTransaction(
        transaction_id=t.transaction_id,
        kind=_TRANSACTION_KINDS_PB.get(t.kind, payout_pb2.DIAMOND_TRANSACTION_KIND_UNSPECIFIED),
        diamonds_delta=t.diamonds_delta,
        reference=t.reference,
        create_time=to_timestamp(t.created_at),
    )


def _quote(q: Quote) -> payout_pb2.Quote:
    return payout_pb2.Quote(
        diamonds=q.amounts.diamonds,
        gross=_money(q.amounts.gross, q.currency),
        fee=_money(q.amounts.fee, q.currency),
        net=_money(q.amounts.net, q.currency),
        minimum=_money(q.minimum, q.currency),
        meets_minimum=q.meets_minimum,
        daily_remaining=_money(q.daily_remaining, q.currency),
        within_daily_limit=q.within_daily_limit,
    )


def _payout(p: Payout) -> payout_pb2.Payout:
    return payout_pb2.Payout(
        payout_id=p.payout_id,
        creator_id=p.creator_id,
        diamonds=p.amounts.diamonds,
        gross=_money(p.amounts.gross, p.currency),
        fee=_money(p.amounts.fee, p.currency),
        net=_money(p.amounts.net, p.currency),
        state=_STATES_PB[p.state],
        destination=_destination(p.destination),
        provider_reference=p.provider_reference,
        failure_reason=p.failure_reason,
        create_time=to_timestamp(p.created_at),
        update_time=to_timestamp(p.updated_at),
    )
