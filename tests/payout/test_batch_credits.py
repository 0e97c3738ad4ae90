"""BatchCreditDiamonds (internal, from gifting): many credits in one call, each answered as CreditDiamonds would."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from datetime import date
from functools import partial
from typing import Any, TypeVar

import grpc
from giftcoin.payout.v1 import payout_pb2
from sqlalchemy import event

from services.payout import model, storage
from services.runtime.errors import from_rpc_error, to_item_error
from tests.payout.conftest import GIFTING, PayoutHarness, credit_request, rid
from tests.support.identity import operator, service, user

MINOR = date(2010, 3, 3)
_ITEM_PREFIX = re.compile(r"requests\[\d+\]\.")
Outcome = tuple[str, Any]  # ("response", CreditDiamondsResponse) or ("error", ItemError)
T = TypeVar("T")


def batch(
    payout: PayoutHarness, requests: Sequence[payout_pb2.CreditDiamondsRequest]
) -> list[payout_pb2.CreditDiamondsResult]:
    response = payout.call("BatchCreditDiamonds", payout_pb2.BatchCreditDiamondsRequest(requests=requests), GIFTING)
    assert len(response.results) == len(requests)
    return list(response.results)


def outcome(result: payout_pb2.CreditDiamondsResult) -> Outcome:
    kind = result.WhichOneof("outcome")
    assert kind is not None
    return kind, getattr(result, kind)


def unary(payout: PayoutHarness, request: payout_pb2.CreditDiamondsRequest) -> Outcome:
    """What CreditDiamonds answers, in the batch's terms: its response, or its error as an ItemError."""
    try:
        return "response", payout.call("CreditDiamonds", request, GIFTING)
    except grpc.RpcError as rpc_error:
        error = from_rpc_error(rpc_error)
        assert error is not None, rpc_error
        return "error", to_item_error(error)


def reason(o: Outcome) -> str:
    kind, value = o
    return "OK" if kind == "response" else str(value.reason)


def balance(payout: PayoutHarness, creator_id: str) -> int:
    return int(payout.earnings(creator_id).diamond_balance)


def until_answered(call: Callable[[], T], attempts: int = 5) -> T:
    """The call's answer, sending it again (unchanged) after a failure of the whole call."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except grpc.RpcError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def with_request_id(request: payout_pb2.CreditDiamondsRequest, request_id: str) -> payout_pb2.CreditDiamondsRequest:
    copy = payout_pb2.CreditDiamondsRequest()
    copy.CopyFrom(request)
    copy.request_id = request_id
    return copy


def comparable(outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
    """Outcomes with what differs between two servers taken out: credit ids become the position of the
    first outcome that carried them, and a batch item's field paths lose their "requests[i]." prefix.
    """
    first_seen: dict[str, int] = {}
    made: list[tuple[Any, ...]] = []
    for index, (kind, value) in enumerate(outcomes):
        if kind == "response":
            credit = value.credit
            seen = first_seen.setdefault(credit.credit_id, index)
            made.append(("response", seen, credit.gift_id, credit.creator_id, credit.diamonds, credit.create_time))
            continue
        unprefixed = {k: _ITEM_PREFIX.sub("", v) for k, v in value.metadata.items()}
        fields = sorted(_ITEM_PREFIX.sub("", v.field) for v in value.field_violations)
        made.append(("error", value.code, value.reason, _ITEM_PREFIX.sub("", value.message), unprefixed, fields))
    return made


def mixed_requests() -> list[payout_pb2.CreditDiamondsRequest]:
    """One of each case, against alice, bob and minor registered and gift-old credited to alice (70)."""
    return [
        credit_request("alice", 100, "gift-a"),
        credit_request("alice", 30, "gift-b"),  # a second gift to the same creator
        credit_request("alice", 100, "gift-a"),  # gift-a again, another request id: its credit
        credit_request("nobody", 5, "gift-c"),  # not a creator
        credit_request("minor", 5, "gift-d"),  # not eligible
        credit_request("bob", 0, "gift-e"),  # a share that floors to nothing: recorded, no transfer
        credit_request("alice", 71, "gift-old"),  # credited before with other terms
        credit_request("bad id", 5, "gift-x"),  # invalid
        credit_request("alice", 99, "gift-a"),  # credited earlier in this batch with other terms
        credit_request("bob", 40, "gift-f"),
        credit_request("minor", 5, "gift-g"),  # refused; the same gift to bob next is a new credit
        credit_request("bob", 6, "gift-g"),
    ]


def set_up(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.register("bob")
    payout.register("minor", born=MINOR, verified=False, destination=None)
    payout.credit("alice", 70, gift_id="gift-old")


def test_a_batch_answers_each_credit_as_credit_diamonds_one_after_another_would(
    start_payout: Callable[..., PayoutHarness],
) -> None:
    by_batch, by_unary = start_payout(), start_payout()
    for payout in (by_batch, by_unary):
        set_up(payout)
    requests = mixed_requests()

    batched = [outcome(r) for r in batch(by_batch, requests)]
    one_by_one = [unary(by_unary, r) for r in requests]

    assert [reason(o) for o in batched] == [
        "OK",
        "OK",
        "OK",
        "RECIPIENT_CANNOT_RECEIVE",
        "RECIPIENT_CANNOT_RECEIVE",
        "OK",
        "CREDIT_MISMATCH",
        "INVALID_ARGUMENT",
        "CREDIT_MISMATCH",
        "OK",
        "RECIPIENT_CANNOT_RECEIVE",
        "OK",
    ]
    assert comparable(batched) == comparable(one_by_one)
    assert batched[2][1].credit.credit_id == batched[0][1].credit.credit_id
    assert [v.field for v in batched[7][1].field_violations] == ["requests[7].creator_id"]
    for payout in (by_batch, by_unary):
        assert (balance(payout, "alice"), balance(payout, "bob"), balance(payout, "minor")) == (200, 46, 0)
        assert payout.count(storage.diamond_credits) == 6  # gift-old, a, b, e, f, g
        assert payout.count(storage.ledger.transfers) == 5  # gift-e moved nothing
        assert payout.ledger_problems() == []


def test_a_batch_item_and_credit_diamonds_replay_each_other_byte_for_byte(payout: PayoutHarness) -> None:
    payout.register("alice")
    first_in_batch = [credit_request("alice", 10, "gift-1"), credit_request("nobody", 5, "gift-2")]
    first_alone = [credit_request("alice", 20, "gift-3"), credit_request("nobody", 5, "gift-4")]
    answered_in_batch = batch(payout, first_in_batch)
    answered_alone = [unary(payout, r) for r in first_alone]

    replayed_alone = [unary(payout, r) for r in first_in_batch]
    replayed_in_batch = batch(payout, first_alone)

    assert [outcome(r) for r in answered_in_batch] == replayed_alone
    assert answered_alone == [outcome(r) for r in replayed_in_batch]
    ok_in_batch, ok_alone = answered_in_batch[0].response, answered_alone[0][1]
    assert replayed_alone[0][1].SerializeToString() == ok_in_batch.SerializeToString()
    assert replayed_in_batch[0].response.SerializeToString() == ok_alone.SerializeToString()
    assert reason(replayed_alone[1]) == reason(outcome(replayed_in_batch[1])) == "RECIPIENT_CANNOT_RECEIVE"
    assert balance(payout, "alice") == 30
    assert payout.count(storage.diamond_credits) == 2


def test_a_request_id_used_for_another_credit_is_refused_in_a_batch(payout: PayoutHarness) -> None:
    payout.register("alice")
    used_alone, used_in_batch = credit_request("alice", 10, "gift-1"), credit_request("alice", 20, "gift-2")
    unary(payout, used_alone)
    batch(payout, [used_in_batch])
    reused = credit_request("alice", 30, "gift-3")
    reused.request_id = used_alone.request_id
    other = credit_request("alice", 40, "gift-4")

    results = [outcome(r) for r in batch(payout, [reused, other])]
    assert [reason(o) for o in results] == ["REQUEST_ID_REUSED", "OK"]
    assert results[0][1].code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert results[0][1].metadata["method"] == "/giftcoin.payout.v1.PayoutService/CreditDiamonds"

    reused.request_id = used_in_batch.request_id
    error = payout.refused("CreditDiamonds", reused, GIFTING)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert balance(payout, "alice") == 70


def test_a_request_id_twice_in_one_batch_runs_once(payout: PayoutHarness) -> None:
    payout.register("alice")
    request = credit_request("alice", 10, "gift-1")
    first, second = (outcome(r) for r in batch(payout, [request, request]))
    assert reason(first) == "OK"
    assert (second[1].code, reason(second)) == (grpc.StatusCode.ABORTED.value[0], "REQUEST_IN_FLIGHT")
    retried = unary(payout, request)  # the retry the ABORTED invites: the first's answer
    assert retried[1].SerializeToString() == first[1].SerializeToString()
    assert balance(payout, "alice") == 10


def test_an_invalid_item_is_not_recorded(payout: PayoutHarness) -> None:
    payout.register("alice")
    bad = credit_request("alice", -5, "gift-1", coins=10)
    [result] = batch(payout, [bad])
    assert [v.field for v in outcome(result)[1].field_violations] == ["requests[0].diamonds"]
    bad.diamonds = 5  # corrected, under the same request id: a new request, not a reuse
    assert reason(unary(payout, bad)) == "OK"
    assert balance(payout, "alice") == 5


def test_batches_conserve_diamonds(payout: PayoutHarness) -> None:
    creators = ["alice", "bob", "carol"]
    for creator_id in creators:
        payout.register(creator_id)
    draw = random.Random(7)
    credited: dict[str, int] = dict.fromkeys(creators, 0)
    for n in range(6):
        requests = []
        for i in range(draw.randint(1, 40)):
            creator_id, diamonds = draw.choice(creators), draw.randint(0, 500)
            requests.append(credit_request(creator_id, diamonds, f"gift-{n}-{i}"))
            credited[creator_id] += diamonds
        assert all(reason(outcome(r)) == "OK" for r in batch(payout, requests))
    assert {c: balance(payout, c) for c in creators} == credited
    with payout.components.db.transaction() as conn:
        issued = storage.UnitOfWork(conn).ledger.balance(model.DIAMONDS_ISSUED)
    assert issued == -sum(credited.values())
    assert payout.ledger_problems() == []


def test_concurrent_overlapping_batches_credit_each_gift_once(payout: PayoutHarness) -> None:
    """Batches racing over the same gifts, under the same request ids (a client's retries) and under
    other ones (another replica), and unary credits among them: each gift is credited once.

    A whole call that fails is sent again as it was, as gifting does with a step whose outcome it does
    not know. (The request-id store decides a batch again when a concurrent batch claimed one of its
    ids first, and gives up after a few rounds: a failure of the call, never of the money.)
    """
    creators = ["alice", "bob", "carol", "dave"]
    for creator_id in creators:
        payout.register(creator_id)
    gifts = [credit_request(creators[i % 4], 10 + i, f"gift-{i}") for i in range(40)]
    answers: list[tuple[str, str]] = []  # (gift id, credit id)
    refusals: list[str] = []
    lock = threading.Lock()

    def send(seed: int, same_request_ids: bool) -> None:
        draw = random.Random(seed)
        for _ in range(4):
            chosen = draw.sample(gifts, 16)
            if not same_request_ids:
                chosen = [with_request_id(r, rid()) for r in chosen]
            results = until_answered(partial(batch, payout, chosen))
            with lock:
                for request, result in zip(chosen, results, strict=True):
                    if result.WhichOneof("outcome") == "response":
                        answers.append((request.gift_id, result.response.credit.credit_id))
                    else:
                        refusals.append(f"{request.gift_id}: {result.error.reason} {result.error.message}")

    def send_alone(seed: int) -> None:
        for request in random.Random(seed).sample(gifts, 16):
            again = with_request_id(request, rid())
            response = until_answered(partial(payout.call, "CreditDiamonds", again, GIFTING))
            with lock:
                answers.append((request.gift_id, response.credit.credit_id))

    threads = [threading.Thread(target=send, args=(seed, seed % 2 == 0)) for seed in range(6)]
    threads.append(threading.Thread(target=send_alone, args=(99,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert refusals == []
    assert len(answers) == 6 * 4 * 16 + 16
    credit_ids: dict[str, set[str]] = {}
    for gift_id, credit_id in answers:
        credit_ids.setdefault(gift_id, set()).add(credit_id)
    assert all(len(ids) == 1 for ids in credit_ids.values()), credit_ids
    assert payout.count(storage.diamond_credits) == len(credit_ids)
    expected = dict.fromkeys(creators, 0)
    for request in gifts:
        if request.gift_id in credit_ids:
            expected[request.creator_id] += request.diamonds
    assert {c: balance(payout, c) for c in creators} == expected
    assert payout.ledger_problems() == []


def test_only_gifting_may_credit_in_batches(payout: PayoutHarness) -> None:
    payout.register("alice")
    request = payout_pb2.BatchCreditDiamondsRequest(requests=[credit_request("alice", 5, "gift-1")])
    for caller in (user("alice"), operator("ops"), service("wallet")):
        error = payout.refused("BatchCreditDiamonds", request, caller)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert balance(payout, "alice") == 0


def test_a_batch_holds_1_to_500_credits(payout: PayoutHarness) -> None:
    payout.register("alice")
    for size in (0, 501):
        requests = [credit_request("alice", 1, f"gift-{i}") for i in range(size)]
        error = payout.refused("BatchCreditDiamonds", payout_pb2.BatchCreditDiamondsRequest(requests=requests), GIFTING)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error.violations] == ["requests"]
    assert balance(payout, "alice") == 0
    full = batch(payout, [credit_request("alice", 1, f"gift-{i}") for i in range(500)])
    assert all(r.WhichOneof("outcome") == "response" for r in full)
    assert balance(payout, "alice") == 500


def test_a_batch_runs_as_many_statements_whatever_its_size(payout: PayoutHarness) -> None:
    creators = [f"creator-{i}" for i in range(64)]
    for creator_id in creators:
        payout.register(creator_id, verified=False, destination=None)
    counted = {"statements": 0}

    def count(*_: object) -> None:
        counted["statements"] += 1

    def statements_of(requests: list[payout_pb2.CreditDiamondsRequest]) -> tuple[int, list[str]]:
        counted["statements"] = 0
        event.listen(payout.components.db.engine, "before_cursor_execute", count)
        try:
            results = batch(payout, requests)
        finally:
            event.remove(payout.components.db.engine, "before_cursor_execute", count)
        return counted["statements"], [reason(outcome(r)) for r in results]

    by_size = {}
    for size in (1, 8, 64):
        by_size[size], reasons = statements_of(
            [credit_request(creators[i], 7, f"gift-{size}-{i}") for i in range(size)]
        )
        assert reasons == ["OK"] * size
    assert by_size[1] == by_size[8] == by_size[64] <= 12, by_size
    # Gifts credited before (replayed or mismatched) and refusals among the new credits add none either.
    mixed = [credit_request(creators[i], 7, f"gift-64-{i}") for i in range(16)]
    mixed += [credit_request(creators[i], 8, f"gift-64-{i}") for i in range(16, 32)]
    mixed += [credit_request(f"nobody-{i}", 7, f"gift-mixed-{i}") for i in range(16)]
    mixed += [credit_request(creators[i], 7, f"gift-mixed-{i}") for i in range(16, 64)]
    statements, reasons = statements_of(mixed)
    assert reasons == ["OK"] * 16 + ["CREDIT_MISMATCH"] * 16 + ["RECIPIENT_CANNOT_RECEIVE"] * 16 + ["OK"] * 48
    assert statements <= by_size[64]
