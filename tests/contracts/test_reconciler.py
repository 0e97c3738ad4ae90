"""What the reconciler (and operators) rely on of the books' RPCs, against the real services: windows
[start, end) of create times, keyset pages that list each record once, oldest first, tokens bound to
their query, bounded id lists, bounded summaries; and who may call them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2

from services.runtime.auth import Caller
from services.runtime.timestamps import to_timestamp
from tests.gifting.harness import Suite, new_id, refused
from tests.support.identity import as_caller, operator, service, user

RECONCILER = service("reconciler")
OPS = operator("ops")


def gifts_a_second_apart(suite: Suite, n: int) -> list[gifting_pb2.GiftTransfer]:
    """n completed gifts, the clock a second on between them."""
    c = suite.clients
    c.viewer("ana")
    c.creator("cara")
    sent = []
    for _ in range(n):
        sent.append(c.send("ana", gift_id="rose", recipient_id="cara"))
        suite.clock.advance(seconds=1)
    return sent


def listing(suite: Suite, name: str) -> tuple[Callable[..., Any], Callable[[Any], list[str]], str]:
    """A reconciler listing: its call, the gift ids of a response, the name of its ids field."""
    c = suite.clients
    if name == "ListHolds":
        return c.wallet.ListHolds, lambda r: [h.hold.gift_id for h in r.holds], "gift_ids"
    if name == "ListDiamondCredits":
        return c.payout.ListDiamondCredits, lambda r: [b.credit.gift_id for b in r.credits], "gift_ids"
    return c.gifting.ListGiftTransfers, lambda r: [t.transfer.transfer_id for t in r.transfers], "transfer_ids"


REQUESTS = {
    "ListHolds": wallet_pb2.ListHoldsRequest,
    "ListDiamondCredits": payout_pb2.ListDiamondCreditsRequest,
    "ListGiftTransfers": gifting_pb2.ListGiftTransfersRequest,
}
LISTINGS = sorted(REQUESTS)


def ask(call: Callable[..., Any], request: Any, caller: Caller = RECONCILER) -> Any:
    return call(request, metadata=as_caller(caller), timeout=10)


@pytest.mark.parametrize("name", LISTINGS)
def test_a_window_is_paged_oldest_first_each_record_once(suite: Suite, name: str) -> None:
    sent = gifts_a_second_apart(suite, 5)
    call, ids_of, _ = listing(suite, name)
    start, end = sent[1].create_time, sent[4].create_time  # [start, end): gifts 1, 2 and 3
    request = REQUESTS[name](start_time=start, end_time=end, page_size=2)
    first = ask(call, request)
    assert ids_of(first) == [sent[1].transfer_id, sent[2].transfer_id] and first.next_page_token
    request.page_token = first.next_page_token
    last = ask(call, request)
    assert ids_of(last) == [sent[3].transfer_id] and last.next_page_token == ""
    everything = ask(call, REQUESTS[name]())  # no window: all of them
    assert ids_of(everything) == [t.transfer_id for t in sent]


@pytest.mark.parametrize("name", LISTINGS)
def test_a_page_token_is_good_only_for_the_query_that_made_it(suite: Suite, name: str) -> None:
    sent = gifts_a_second_apart(suite, 3)
    call, _, _ = listing(suite, name)
    token = ask(call, REQUESTS[name](start_time=sent[0].create_time, page_size=1)).next_page_token
    for request in (
        REQUESTS[name](start_time=sent[1].create_time, page_size=1, page_token=token),  # another window
        REQUESTS[name](page_size=1, page_token=token[:-4] + "AAAA"),  # tampered with
        REQUESTS[name](page_size=1, page_token="not-a-token"),
    ):
        error = refused(partial(ask, call, request))
        assert (error.code, [v.field for v in error.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


@pytest.mark.parametrize("name", LISTINGS)
def test_ids_are_looked_up_at_most_500_at_once_and_never_with_a_window(suite: Suite, name: str) -> None:
    sent = gifts_a_second_apart(suite, 2)
    call, ids_of, field = listing(suite, name)
    unknown = new_id()
    found = ask(call, REQUESTS[name](**{field: [sent[1].transfer_id, unknown, sent[0].transfer_id]}))
    assert ids_of(found) == [sent[0].transfer_id, sent[1].transfer_id]  # oldest first; the unknown left out
    too_many = REQUESTS[name](**{field: [new_id() for _ in range(501)]})
    error = refused(lambda: ask(call, too_many))
    assert (error.code, [v.field for v in error.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    both = REQUESTS[name](**{field: [unknown]}, start_time=sent[0].create_time)
    assert [v.field for v in refused(lambda: ask(call, both)).violations] == [field]
    backwards = REQUESTS[name](start_time=sent[1].create_time, end_time=sent[0].create_time)
    assert [v.field for v in refused(lambda: ask(call, backwards)).violations] == ["end_time"]


def test_gifts_are_listed_by_state_and_step(suite: Suite) -> None:
    sent = gifts_a_second_apart(suite, 1)
    failed = refused(lambda: suite.clients.send("ana", gift_id="universe", recipient_id="cara"))
    call, ids_of, _ = listing(suite, "ListGiftTransfers")
    by_state = gifting_pb2.ListGiftTransfersRequest(states=[gifting_pb2.GIFT_TRANSFER_STATE_FAILED])
    [record] = ask(call, by_state).transfers
    assert (record.transfer.transfer_id, record.cause) == (failed.metadata["transfer_id"], "INSUFFICIENT_FUNDS")
    assert record.step == gifting_pb2.GIFT_TRANSFER_STEP_FAILED and record.cause_message
    completed = gifting_pb2.ListGiftTransfersRequest(steps=[gifting_pb2.GIFT_TRANSFER_STEP_COMPLETED])
    assert ids_of(ask(call, completed)) == [sent[0].transfer_id]
    failing = gifting_pb2.ListGiftTransfersRequest(steps=[gifting_pb2.GIFT_TRANSFER_STEP_FAILING])
    assert ids_of(ask(call, failing)) == []


@pytest.mark.parametrize("service_name", ["wallet", "payout"])
def test_a_summary_needs_a_window_of_at_most_31_days(suite: Suite, service_name: str) -> None:
    stub = getattr(suite.clients, service_name)
    request_type = wallet_pb2.SummarizeBooksRequest if service_name == "wallet" else payout_pb2.SummarizeBooksRequest
    now = suite.clock.now()
    ok = request_type(start_time=to_timestamp(now - timedelta(days=31)), end_time=to_timestamp(now))
    assert ask(stub.SummarizeBooks, ok).as_of == to_timestamp(now)
    too_long = request_type(start_time=to_timestamp(now - timedelta(days=32)), end_time=to_timestamp(now))
    assert [v.field for v in refused(lambda: ask(stub.SummarizeBooks, too_long)).violations] == ["end_time"]
    missing = request_type(end_time=to_timestamp(now))
    assert [v.field for v in refused(lambda: ask(stub.SummarizeBooks, missing)).violations] == ["start_time"]


# --- who may call --------------------------------------------------------------------------------------

OPERATOR_ONLY = {
    ("wallet", "GetUserWallet"): wallet_pb2.GetUserWalletRequest(user_id="ana"),
    ("wallet", "ListUserTransactions"): wallet_pb2.ListUserTransactionsRequest(user_id="ana"),
    ("wallet", "ListPromotions"): wallet_pb2.ListPromotionsRequest(),
    ("wallet", "ListAuditRecords"): wallet_pb2.ListAuditRecordsRequest(),
    ("gifting", "ListAuditRecords"): gifting_pb2.ListAuditRecordsRequest(),
    ("payout", "ListCreators"): payout_pb2.ListCreatorsRequest(),
    ("payout", "ListPayoutsByState"): payout_pb2.ListPayoutsByStateRequest(),
    ("payout", "ListAuditRecords"): payout_pb2.ListAuditRecordsRequest(),
}
OPERATOR_OR_RECONCILER = {
    ("wallet", "ListHolds"): wallet_pb2.ListHoldsRequest(),
    ("gifting", "ListGiftTransfers"): gifting_pb2.ListGiftTransfersRequest(),
    ("payout", "ListDiamondCredits"): payout_pb2.ListDiamondCreditsRequest(),
}
CALLERS = {"a user": user("ana"), "gifting": service("gifting"), "reconciler": RECONCILER, "an operator": OPS}


@pytest.mark.parametrize(("rpc", "request_message"), [*OPERATOR_ONLY.items(), *OPERATOR_OR_RECONCILER.items()])
def test_operator_rpcs_are_refused_to_users_and_services(
    suite: Suite, rpc: tuple[str, str], request_message: Any
) -> None:
    suite.clients.viewer("ana")
    service_name, method = rpc
    call = getattr(getattr(suite.clients, service_name), method)
    allowed = {"an operator"} | ({"reconciler"} if rpc in OPERATOR_OR_RECONCILER else set())
    for who, caller in CALLERS.items():
        if who in allowed:
            ask(call, request_message, caller)
        else:
            error = refused(partial(ask, call, request_message, caller))
            assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), who
