"""What gifting expects of payout's CreditDiamonds, asked as service:gifting."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

import grpc
import pytest
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc

from services.gifting.ports import CreditOrder, StepUncertain
from services.runtime.clock import FakeClock
from tests.contracts.conftest import (
    OneAtATimePayout,
    Peer,
    diamond_balance,
    refusal,
    register_creator,
)
from tests.gifting.harness import new_id, refused
from tests.support.identity import as_caller, user


def credit(
    payout: OneAtATimePayout,
    gift_id: str,
    diamonds: int,
    creator_id: str = "carol",
    request_id: str = "",
    deadline: datetime | None = None,
) -> None:
    payout.credit_diamonds(
        CreditOrder(request_id or new_id(), gift_id, creator_id, diamonds, diamonds * 2, 0, deadline)
    )


def test_diamonds_are_credited_once_per_gift_whoever_asks_and_however_often(
    payout: OneAtATimePayout, payout_peer: Peer
) -> None:
    register_creator(payout_peer, "carol")
    gift, request_id = new_id(), new_id()
    credit(payout, gift, 5, request_id=request_id)
    credit(payout, gift, 5, request_id=request_id)  # the step retried
    credit(payout, gift, 5)  # another replica, another request id: still the one credit
    assert diamond_balance(payout_peer, "carol") == 5
    # The same gift with other amounts is a certain refusal, but NOT a sign that nothing was credited:
    # gifting never fails a gift on this reason.
    mismatch = refusal(lambda: credit(payout, gift, 6)).error
    assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_MISMATCH")
    assert diamond_balance(payout_peer, "carol") == 5


def test_a_recipient_that_cannot_receive_is_refused_with_nothing_credited(
    payout: OneAtATimePayout, payout_peer: Peer
) -> None:
    register_creator(payout_peer, "kid", adult=False)
    for creator_id in ("kid", "not_a_creator"):
        error = refusal(partial(credit, payout, new_id(), 5, creator_id=creator_id)).error
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_CANNOT_RECEIVE")
    assert diamond_balance(payout_peer, "kid") == 0


def test_a_zero_credit_still_checks_the_recipient(payout: OneAtATimePayout, payout_peer: Peer) -> None:
    """A send whose share floors to nothing (one Rose) still asks payout: the recipient is checked."""
    register_creator(payout_peer, "carol")
    gift = new_id()
    credit(payout, gift, 0)
    credit(payout, gift, 0)  # once per gift, like any credit
    assert diamond_balance(payout_peer, "carol") == 0
    error = refusal(lambda: credit(payout, new_id(), 0, creator_id="nobody")).error
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_CANNOT_RECEIVE")
    negative = refusal(lambda: credit(payout, new_id(), -1)).error
    assert negative.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in negative.violations] == ["requests[0].diamonds", "requests[0].coins"]


def test_a_credit_asked_after_its_deadline_credits_nothing_and_says_so_every_time(
    payout: OneAtATimePayout, payout_peer: Peer, clock: FakeClock
) -> None:
    """Once a gift's deadline has passed, asking for its credit again tells for certain whether it was
    credited: gifting fails the gift (and releases its hold) only on this refusal."""
    register_creator(payout_peer, "carol")
    late, request_id = new_id(), new_id()
    deadline = clock.now() + timedelta(seconds=60)
    clock.advance(seconds=61)
    for _ in range(2):  # the same request again: refused again, never credited late
        error = refusal(lambda: credit(payout, late, 5, request_id=request_id, deadline=deadline)).error
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_DEADLINE_PASSED")
    assert diamond_balance(payout_peer, "carol") == 0
    # A gift credited in time is answered as credited when asked again after its deadline.
    on_time, request_id = new_id(), new_id()
    deadline = clock.now() + timedelta(seconds=60)
    credit(payout, on_time, 5, request_id=request_id, deadline=deadline)
    clock.advance(seconds=61)
    credit(payout, on_time, 5, request_id=request_id, deadline=deadline)
    credit(payout, on_time, 5, deadline=deadline)  # under another request id too: the one credit
    assert diamond_balance(payout_peer, "carol") == 5


def test_only_gifting_may_credit_and_a_payout_that_is_down_is_no_answer(
    payout: OneAtATimePayout, payout_peer: Peer
) -> None:
    stub = payout_pb2_grpc.PayoutServiceStub(payout_peer.plain)
    request = payout_pb2.CreditDiamondsRequest(request_id=new_id(), gift_id=new_id(), creator_id="carol", diamonds=1)
    assert refused(lambda: stub.CreditDiamonds(request, metadata=as_caller(user("carol")))).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    payout_peer.server.stop(None)
    with pytest.raises(StepUncertain):
        credit(payout, new_id(), 1)
