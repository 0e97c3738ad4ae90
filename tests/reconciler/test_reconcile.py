"""The reconciler proves the three services agree, through their RPCs, on SQLite and PostgreSQL.

Real services (in-process, real gRPC), a story of purchases, a promotion, gifts that complete and
gifts that fail, a refund and a payout; then the books are broken behind a service's back, one way
at a time, and the reconciler must name each break with its ids.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2

from services.reconciler import ReadFailed, Window
from services.reconciler.books import PayoutTotals, Refunds, Takings
from services.runtime.auth import service
from services.runtime.errors import from_rpc_error
from tests.gifting.harness import Suite, new_id
from tests.reconciler.conftest import (
    COMPLETED,
    OPS,
    Story,
    capture_behind_wallets_back,
    creator_ready,
    credit_again_behind_payouts_back,
    credit_behind_payouts_back,
    delete_credit_behind_payouts_back,
    reconcile,
    rename_hold_behind_wallets_back,
    story,
)
from tests.support.identity import user

PENDING = gifting_pb2.GIFT_TRANSFER_STATE_PENDING


def test_clean_books_reconcile_to_zero_and_the_summary_is_the_money_the_calls_moved(books: Suite) -> None:
    s = story(books)
    report = reconcile(books)
    assert report.discrepancies == []
    assert report.ok
    assert (report.gifts, report.completed, report.failed, report.in_flight) == (5, 3, 2, 0)
    assert report.watermark == report.window.end  # nothing in flight: the next run may start at the end

    m = report.money
    assert m.takings == [
        Takings(
            "sandbox",
            "USD",
            len(s.purchases),
            sum(p.price.amount_minor for p in s.purchases),
            sum(p.coins for p in s.purchases),
        )
    ]
    assert s.refund is not None
    refunded = next(p for p in s.purchases if p.store_transaction_id == "dan-1")
    assert m.refunds == [
        Refunds("refund", "USD", 1, refunded.price.amount_minor, s.refund.coins_reclaimed, s.refund.debt_added)
    ]
    assert (m.coins_purchased, m.coins_granted) == (sum(p.coins for p in s.purchases), s.granted)
    spent = sum(t.total_coins for t in s.completed)
    credited = sum(t.total_diamonds for t in s.completed)
    assert (m.coins_spent, m.diamonds_credited, m.platform_share) == (spent, credited, spent - credited)
    # Promotional coins are spent first: ana's doughnut and rose came out of her 100 granted coins.
    assert m.coins_spent_promotional == sum(t.total_coins for t in s.completed if t.sender_id == "ana")
    assert s.payout is not None
    assert m.payouts == [
        PayoutTotals(
            "paid",
            "USD",
            1,
            s.payout.diamonds,
            s.payout.gross.amount_minor,
            s.payout.fee.amount_minor,
            s.payout.net.amount_minor,
        )
    ]
    assert m.paid("fee_minor") == {"USD": s.payout.fee.amount_minor}
    balances = [books.clients.balance(v) for v in ("ana", "ben", "dan")]
    assert m.coins_outstanding_now == sum(b.total for b in balances)
    assert m.coins_outstanding_promotional_now == sum(b.promotional for b in balances)
    assert m.coins_held_now == 0
    assert m.promotion_budgets_remaining_now == s.promotion_budget - s.granted
    assert m.diamonds_outstanding_now == books.clients.diamonds("cara") == credited - s.payout.diamonds
    assert m.diamonds_in_payout_now == 0


Breaker = Callable[[Suite, Story], tuple[str, str, dict[str, str]]]  # -> kind, gift id, the ids it names


def captured_for_failed_gift(suite: Suite, s: Story) -> tuple[str, str, dict[str, str]]:
    hold_id = capture_behind_wallets_back(suite, s.failed_after_hold)
    return "FAILED_BUT_CAPTURED", s.failed_after_hold, {"hold_id": hold_id}


def captured_for_no_gift(suite: Suite, s: Story) -> tuple[str, str, dict[str, str]]:
    """A hold whose gift id names no gift: the failed gift's hold, renamed."""
    stranger = new_id()
    rename_hold_behind_wallets_back(suite, s.failed_after_hold, stranger)
    hold_id = capture_behind_wallets_back(suite, stranger)
    return "HOLD_WITHOUT_GIFT", stranger, {"hold_id": hold_id}


def credit_for_failed_gift(suite: Suite, s: Story) -> tuple[str, str, dict[str, str]]:
    credit_id = credit_behind_payouts_back(suite, s.failed_without_hold, "cara", diamonds=17499, coins=34999)
    return "FAILED_BUT_CREDITED", s.failed_without_hold, {"credit_id": credit_id}


def missing_credit(suite: Suite, s: Story) -> tuple[str, str, dict[str, str]]:
    doughnut = s.completed[0]
    delete_credit_behind_payouts_back(suite, doughnut.transfer_id)
    return "COMPLETED_NOT_CREDITED", doughnut.transfer_id, {}


def double_credit(suite: Suite, s: Story) -> tuple[str, str, dict[str, str]]:
    doughnut = s.completed[0]
    credit_again_behind_payouts_back(suite, doughnut.transfer_id, "cara", doughnut.total_diamonds)
    return "DOUBLE_CREDIT", doughnut.transfer_id, {}


@pytest.mark.parametrize(
    "breaker",
    [captured_for_failed_gift, captured_for_no_gift, credit_for_failed_gift, missing_credit, double_credit],
    ids=lambda b: b.__name__,
)
def test_books_broken_behind_a_services_back_are_reported_with_their_ids(books: Suite, breaker: Breaker) -> None:
    s = story(books)
    assert reconcile(books).ok
    kind, gift_id, ids = breaker(books, s)
    report = reconcile(books)
    assert not report.ok
    [found] = report.discrepancies
    assert (found.kind, found.gift_id) == (kind, gift_id)
    for name, value in ids.items():
        assert getattr(found, name) == value
    assert found.action and found.detail and found.age_seconds >= 0


def test_a_pending_gift_is_in_flight_for_the_sagas_normal_time_then_stuck(books: Suite) -> None:
    c = books.clients
    c.viewer("ana")
    creator_ready(books, "cara")
    books.stop_payout()
    waiting = c.send("ana", gift_id="doughnut", recipient_id="cara")
    assert waiting.state == PENDING  # no answer from payout: the gift waits for recovery (which waits for the test)
    books.start_payout()
    report = reconcile(books)
    assert report.ok and report.in_flight == 1
    assert report.watermark < report.window.end  # the next run must look at it again

    books.clock.advance(minutes=16)
    report = reconcile(books, in_flight=timedelta(minutes=15))
    [stuck] = report.discrepancies
    assert (stuck.kind, stuck.gift_id, stuck.age_seconds) == ("STUCK_GIFT", waiting.transfer_id, 16 * 60)

    books.recover()  # past its credit deadline: payout refuses the credit, the hold goes back
    assert c.transfer("ana", waiting.transfer_id).state == gifting_pb2.GIFT_TRANSFER_STATE_FAILED
    assert reconcile(books).ok


def test_a_window_checks_its_holds_and_credits_against_gifts_recorded_before_it(books: Suite) -> None:
    c = books.clients
    c.viewer("ana")
    creator_ready(books, "cara")
    books.stop_wallet()
    late = c.send("ana", gift_id="doughnut", recipient_id="cara")
    assert late.state == PENDING
    recorded = books.clock.now()
    books.clock.advance(seconds=10)
    books.start_wallet()
    books.recover()  # held, credited and captured ten seconds after it was recorded
    assert c.transfer("ana", late.transfer_id).state == COMPLETED

    after = reconcile(books, before=timedelta(seconds=5))  # its hold and credit, not its record
    assert after.ok and (after.gifts, after.checked) == (0, 1)
    before = reconcile(books, window=Window(recorded - timedelta(seconds=1), recorded + timedelta(seconds=5)))
    assert before.ok and (before.gifts, before.completed) == (1, 1)
    assert before.money.coins_spent == late.total_coins  # its hold, found by the gift's id


def test_only_operators_and_the_reconciler_may_read_the_books(books: Suite) -> None:
    story(books)
    assert reconcile(books, caller=OPS).ok
    for caller in (user("ana"), service("gifting"), service("wallet")):
        with pytest.raises(ReadFailed) as info:
            reconcile(books, caller=caller)
        error = from_rpc_error(info.value.error)
        assert error is not None and (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
