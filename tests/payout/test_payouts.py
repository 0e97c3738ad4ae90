"""Quotes and payouts over gRPC: refusals, the provider's paths, limits, ownership, replays."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date

import grpc
from giftcoin.payout.v1 import payout_pb2

from services.payout import model, storage
from services.runtime.errors import DomainError
from tests.payout.conftest import GIFTING, PayoutHarness, rid
from tests.support.identity import operator, user

# At the default rate (100 cents per 200 diamonds) and fee (3%), net reaches the 10.00 minimum at
# 2060 diamonds: gross 1030, fee floor(30.9) = 30, net 1000. One diamond less: gross 1029, net 999.
ENOUGH = 2060


def refused_payout(payout: PayoutHarness, creator_id: str, diamonds: int = 0) -> DomainError:
    request = payout_pb2.RequestPayoutRequest(request_id=rid(), diamonds=diamonds)
    return payout.refused("RequestPayout", request, user(creator_id))


def snapshot(payout: PayoutHarness) -> tuple[int, int, int, int]:
    """Everything a refused payout must leave alone."""
    return (
        payout.count(storage.payouts),
        payout.count(storage.ledger.transfers),
        payout.count(storage.ledger.entries),
        payout.count(storage.sandbox_payments),
    )


def amounts(message: payout_pb2.Quote | payout_pb2.Payout) -> tuple[int, int, int, int]:
    return message.diamonds, message.gross.amount_minor, message.fee.amount_minor, message.net.amount_minor


def test_below_threshold_is_refused_and_nothing_moves(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", ENOUGH - 1)
    quote = payout.quote("alice")
    assert amounts(quote) == (2058, 1029, 30, 999)
    assert not quote.meets_minimum and quote.minimum.amount_minor == 1000
    before = snapshot(payout)
    error = refused_payout(payout, "alice")
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BELOW_PAYOUT_THRESHOLD")
    assert (error.metadata["net"], error.metadata["minimum"]) == ("999", "1000")
    assert snapshot(payout) == before
    assert payout.earnings("alice").diamond_balance == ENOUGH - 1


def test_a_payout_pays_exactly_the_quoted_net(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 5001)
    quote = payout.quote("alice")
    assert amounts(quote) == (5000, 2500, 75, 2425) and quote.meets_minimum and quote.within_daily_limit

    requested = payout.request_payout("alice")
    assert requested.state == payout_pb2.PAYOUT_STATE_REQUESTED
    assert amounts(requested) == amounts(quote)
    earnings = payout.earnings("alice")
    assert (earnings.diamond_balance, earnings.pending_diamonds, earnings.pending_net.amount_minor) == (1, 5000, 2425)

    report = payout.process()
    assert (report.submitted, report.paid) == (1, 1)
    paid = payout.get_payout("alice", requested.payout_id)
    assert paid.state == payout_pb2.PAYOUT_STATE_PAID and paid.provider_reference
    assert amounts(paid) == amounts(quote)
    assert payout.payments("alice") == [(requested.payout_id, 2425, "paid")]

    earnings = payout.earnings("alice")
    assert earnings.diamond_balance == 1 and earnings.pending_diamonds == 0
    assert (earnings.paid_net.amount_minor, earnings.paid_net.currency_code) == (2425, "USD")
    with payout.components.db.transaction() as conn:
        ledger = storage.UnitOfWork(conn).ledger
        assert ledger.balance(model.cash_paid_out("USD")) == 2425
        assert ledger.balance(model.fee_revenue("USD")) == 75
        assert ledger.balance(model.cash_issued("USD")) == -2500
        assert ledger.balance(model.DIAMONDS_REDEEMED) == 5000
    assert payout.ledger_problems() == []
    assert payout.process().paid == 0  # nothing left to do; paid once


def test_provider_failure_returns_every_diamond(payout: PayoutHarness) -> None:
    payout.register("alice", destination="fail")
    payout.credit("alice", 3000)
    requested = payout.request_payout("alice", 2500)
    assert payout.earnings("alice").diamond_balance == 500
    assert payout.process().failed == 1
    failed = payout.get_payout("alice", requested.payout_id)
    assert failed.state == payout_pb2.PAYOUT_STATE_FAILED and failed.failure_reason
    earnings = payout.earnings("alice")
    assert (earnings.diamond_balance, earnings.pending_diamonds, earnings.paid_net.amount_minor) == (3000, 0, 0)
    history = payout.call(
        "ListDiamondTransactions", payout_pb2.ListDiamondTransactionsRequest(), user("alice")
    ).transactions
    assert [(t.kind, t.diamonds_delta) for t in history] == [
        (payout_pb2.DIAMOND_TRANSACTION_KIND_PAYOUT_RETURNED, 2500),
        (payout_pb2.DIAMOND_TRANSACTION_KIND_PAYOUT, -2500),
        (payout_pb2.DIAMOND_TRANSACTION_KIND_GIFT_CREDIT, 3000),
    ]
    assert [t.reference for t in history[:2]] == [requested.payout_id] * 2
    assert payout.payments("alice") == [(requested.payout_id, 1213, "failed")]
    assert payout.ledger_problems() == []
    # The diamonds can be cashed out again, to a destination that works.
    payout.set_destination("alice", "succeed")
    payout.request_payout("alice")
    assert payout.process().paid == 1


def test_provider_delay_leaves_it_processing_then_completes(payout: PayoutHarness) -> None:
    payout.register("alice", destination="delay:60")
    payout.credit("alice", 4000)
    requested = payout.request_payout("alice")
    assert payout.process().still_processing == 1
    assert payout.get_payout("alice", requested.payout_id).state == payout_pb2.PAYOUT_STATE_PROCESSING
    payout.clock.advance(seconds=30)
    assert payout.process().still_processing == 1
    assert payout.earnings("alice").pending_net.amount_minor == requested.net.amount_minor
    payout.clock.advance(seconds=31)
    assert payout.process().paid == 1
    assert payout.get_payout("alice", requested.payout_id).state == payout_pb2.PAYOUT_STATE_PAID
    assert payout.payments("alice") == [(requested.payout_id, requested.net.amount_minor, "paid")]
    assert payout.ledger_problems() == []


def test_requirements_refuse_with_their_reasons(payout: PayoutHarness) -> None:
    payout.register("unverified", verified=False)
    payout.register("nowhere", destination=None)
    payout.register("minor", born=date(2010, 1, 1))
    payout.register("rejected", verified=False)
    payout.call(
        "VerifyCreator",
        payout_pb2.VerifyCreatorRequest(
            request_id=rid(), creator_id="rejected", kyc_status=payout_pb2.KYC_STATUS_REJECTED
        ),
        operator("kyc"),
    )
    for creator_id in ("unverified", "nowhere", "rejected"):
        payout.credit(creator_id, 5000)
    before = snapshot(payout)
    expected = {
        "unverified": (grpc.StatusCode.FAILED_PRECONDITION, "KYC_NOT_VERIFIED"),
        "rejected": (grpc.StatusCode.FAILED_PRECONDITION, "KYC_NOT_VERIFIED"),
        "nowhere": (grpc.StatusCode.FAILED_PRECONDITION, "PAYOUT_DESTINATION_MISSING"),
        "minor": (grpc.StatusCode.FAILED_PRECONDITION, "CREATOR_NOT_ELIGIBLE"),
        "stranger": (grpc.StatusCode.NOT_FOUND, "CREATOR_NOT_FOUND"),
    }
    for creator_id, (code, reason) in expected.items():
        error = refused_payout(payout, creator_id)
        assert (error.code, error.reason) == (code, reason), creator_id
    assert snapshot(payout) == before


def test_more_diamonds_than_the_balance_are_refused(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 3000)
    error = refused_payout(payout, "alice", 3001)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")
    assert (error.metadata["balance"], error.metadata["diamonds"]) == ("3000", "3001")
    quote_error = payout.refused("QuotePayout", payout_pb2.QuotePayoutRequest(diamonds=3001), user("alice"))
    assert quote_error.reason == "INSUFFICIENT_DIAMONDS"


def test_daily_limit_per_utc_day(start_payout: Callable[..., PayoutHarness]) -> None:
    payout = start_payout(GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS="3000")
    payout.register("alice")
    payout.credit("alice", 20_000)
    error = refused_payout(payout, "alice")  # net 9700 > 3000
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DAILY_PAYOUT_LIMIT_EXCEEDED")
    assert error.metadata["daily_remaining"] == "3000"

    first = payout.request_payout("alice", 6000)  # net 2910
    payout.process()
    assert payout.quote("alice", 2100).daily_remaining.amount_minor == 90
    error = refused_payout(payout, "alice", 2100)
    assert error.reason == "DAILY_PAYOUT_LIMIT_EXCEEDED"

    payout.clock.advance(hours=12)  # 2026-01-02 00:00 UTC: a new day
    assert payout.quote("alice").daily_remaining.amount_minor == 3000
    second = payout.request_payout("alice", 6000)
    payout.process()
    assert {
        p.state for p in (payout.get_payout("alice", first.payout_id), payout.get_payout("alice", second.payout_id))
    } == {payout_pb2.PAYOUT_STATE_PAID}


def test_a_failed_payout_does_not_count_against_the_day(start_payout: Callable[..., PayoutHarness]) -> None:
    payout = start_payout(GIFTCOIN_PAYOUT_DAILY_MAXIMUM_CENTS="3000")
    payout.register("alice", destination="fail")
    payout.credit("alice", 6000)
    payout.request_payout("alice")
    payout.process()
    assert payout.quote("alice").daily_remaining.amount_minor == 3000


def test_one_payout_in_flight_per_creator(payout: PayoutHarness) -> None:
    payout.register("alice", destination="delay:60")
    payout.credit("alice", 10_000)
    first = payout.request_payout("alice", 3000)
    error = refused_payout(payout, "alice", 3000)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYOUT_IN_FLIGHT")
    assert error.metadata["payout_id"] == first.payout_id
    payout.process()  # processing is still in flight
    assert refused_payout(payout, "alice", 3000).reason == "PAYOUT_IN_FLIGHT"
    payout.clock.advance(seconds=61)
    payout.process()
    assert payout.request_payout("alice", 3000).state == payout_pb2.PAYOUT_STATE_REQUESTED


def test_concurrent_requests_for_one_creator_at_most_one_succeeds(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 50_000)
    outcomes: list[str] = []
    lock = threading.Lock()

    def request() -> None:
        try:
            payout.request_payout("alice", 4000)
            result = "ok"
        except grpc.RpcError as error:
            result = str(error.code())
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1
    assert outcomes.count(str(grpc.StatusCode.FAILED_PRECONDITION)) == 7
    assert payout.count(storage.payouts) == 1
    assert payout.earnings("alice").diamond_balance == 46_000
    payout.process()
    assert len(payout.payments("alice")) == 1
    assert payout.ledger_problems() == []


def test_replays_are_identical_and_reuse_is_refused(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 5000)
    request_id = rid()
    first = payout.request_payout("alice", 4000, request_id)
    payout.process()
    assert payout.request_payout("alice", 4000, request_id) == first  # the first response, not today's state
    assert payout.count(storage.payouts) == 1
    reused = payout.refused(
        "RequestPayout", payout_pb2.RequestPayoutRequest(request_id=request_id, diamonds=4001), user("alice")
    )
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


def test_a_refusal_is_replayed_under_its_request_id(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 100)
    request = payout_pb2.RequestPayoutRequest(request_id=rid())
    assert payout.refused("RequestPayout", request, user("alice")).reason == "BELOW_PAYOUT_THRESHOLD"
    payout.credit("alice", 5000)
    assert payout.refused("RequestPayout", request, user("alice")).reason == "BELOW_PAYOUT_THRESHOLD"
    request.request_id = rid()
    assert payout.call("RequestPayout", request, user("alice")).payout.diamonds == 5100


def test_payouts_and_earnings_are_the_callers_own(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.register("bob")
    payout.credit("alice", 5000)
    alices = payout.request_payout("alice")
    error = payout.refused("GetPayout", payout_pb2.GetPayoutRequest(payout_id=alices.payout_id), user("bob"))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    # A missing id is answered as another creator's is: a stranger cannot tell which ids exist.
    missing = payout.refused("GetPayout", payout_pb2.GetPayoutRequest(payout_id="po_missing"), user("bob"))
    assert (missing.code, missing.reason) == (error.code, error.reason)
    assert missing.message == error.message.replace(alices.payout_id, "po_missing")
    assert payout.earnings("bob").diamond_balance == 0
    assert list(payout.call("ListPayouts", payout_pb2.ListPayoutsRequest(), user("bob")).payouts) == []
    stranger = payout.refused("GetEarnings", payout_pb2.GetEarningsRequest(), user("carol"))
    assert (stranger.code, stranger.reason) == (grpc.StatusCode.NOT_FOUND, "CREATOR_NOT_FOUND")
    for caller in (operator("ops"), GIFTING):
        for method, request in (
            ("GetEarnings", payout_pb2.GetEarningsRequest()),
            ("GetPayout", payout_pb2.GetPayoutRequest(payout_id=alices.payout_id)),
            ("RequestPayout", payout_pb2.RequestPayoutRequest(request_id=rid())),
        ):
            error = payout.refused(method, request, caller)
            assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_earnings_show_value_rate_pending_and_paid(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 9999)
    earnings = payout.earnings("alice")
    assert earnings.diamond_balance == 9999
    assert (earnings.cash_value.amount_minor, earnings.cash_value.currency_code) == (4999, "USD")
    assert (earnings.rate.numerator, earnings.rate.denominator) == (100, 200)
    assert earnings.pending_diamonds == 0 and earnings.paid_net.amount_minor == 0


def test_list_payouts_newest_first_in_pages(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.credit("alice", 30_000)
    ids = []
    for n in range(5):
        ids.append(payout.request_payout("alice", 3000).payout_id)
        payout.process()
        if n >= 2:  # the first three share an instant: their ids order them
            payout.clock.advance(seconds=1)
    listed: list[payout_pb2.Payout] = []
    token = ""
    while True:
        page = payout.call("ListPayouts", payout_pb2.ListPayoutsRequest(page_size=2, page_token=token), user("alice"))
        listed.extend(page.payouts)
        token = page.next_page_token
        if not token:
            break
    assert len(listed) == 5 and {p.payout_id for p in listed} == set(ids)
    assert [p.payout_id for p in listed[:2]] == [ids[4], ids[3]]
    assert [p.payout_id for p in listed[2:]] == sorted(ids[:3], reverse=True)
    assert {p.state for p in listed} == {payout_pb2.PAYOUT_STATE_PAID}
    wrong_list = payout.call(
        "ListDiamondTransactions", payout_pb2.ListDiamondTransactionsRequest(page_size=1), user("alice")
    ).next_page_token
    error = payout.refused("ListPayouts", payout_pb2.ListPayoutsRequest(page_token=wrong_list), user("alice"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and error.violations[0].field == "page_token"


def test_bad_payout_input_names_the_field(payout: PayoutHarness) -> None:
    payout.register("alice")
    bad = payout.refused(
        "RequestPayout", payout_pb2.RequestPayoutRequest(request_id="1234", diamonds=-5), user("alice")
    )
    assert bad.code is grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.violations} == {"request_id", "diamonds"}
    for method, request, field in (
        ("QuotePayout", payout_pb2.QuotePayoutRequest(diamonds=-1), "diamonds"),
        ("GetPayout", payout_pb2.GetPayoutRequest(), "payout_id"),
        ("ListPayouts", payout_pb2.ListPayoutsRequest(page_size=-1), "page_size"),
    ):
        error = payout.refused(method, request, user("alice"))
        assert (error.code, [v.field for v in error.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
