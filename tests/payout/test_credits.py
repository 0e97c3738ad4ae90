"""CreditDiamonds (internal, from the gifting saga): once per gift, only from gifting, only to who may receive."""

from __future__ import annotations

import threading
from datetime import date

import grpc
from giftcoin.payout.v1 import payout_pb2
from sqlalchemy import select

from services.payout import model, storage
from services.runtime.errors import DomainError
from tests.payout.conftest import GIFTING, PayoutHarness, credit_request, rid
from tests.support.identity import operator, service, user


def balance(payout: PayoutHarness, creator_id: str) -> int:
    return int(payout.earnings(creator_id).diamond_balance)


def test_credit_moves_diamonds_from_the_platform_to_the_creator(payout: PayoutHarness) -> None:
    payout.register("alice")
    credit = payout.credit("alice", 150, gift_id="gift-1")
    assert (credit.gift_id, credit.creator_id, credit.diamonds) == ("gift-1", "alice", 150)
    assert credit.credit_id
    assert balance(payout, "alice") == 150
    with payout.components.db.transaction() as conn:
        ledger = storage.UnitOfWork(conn).ledger
        assert ledger.balance(model.DIAMONDS_ISSUED) == -150
    assert payout.ledger_problems() == []


def test_the_gifts_coins_are_recorded_on_the_credit(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.call("CreditDiamonds", credit_request("alice", 50, "gift-1", coins=100, promotional_coins=30), GIFTING)
    with payout.components.db.transaction() as conn:
        row = conn.execute(select(storage.diamond_credits).where(storage.diamond_credits.c.gift_id == "gift-1")).one()
    assert (row.diamonds, row.coins, row.promotional_coins) == (50, 100, 30)


def test_the_same_gift_credits_once_under_any_request_id(payout: PayoutHarness) -> None:
    payout.register("alice")
    request = credit_request("alice", 70, "gift-1")
    first = payout.call("CreditDiamonds", request, GIFTING)
    assert payout.call("CreditDiamonds", request, GIFTING) == first  # the same request id: replayed
    request.request_id = rid()
    again = payout.call("CreditDiamonds", request, GIFTING)  # another request id: the existing credit
    assert again.credit.credit_id == first.credit.credit_id
    assert balance(payout, "alice") == 70
    assert payout.count(storage.diamond_credits) == 1
    assert payout.ledger_problems() == []


def test_concurrent_credits_of_one_gift_credit_once(payout: PayoutHarness) -> None:
    payout.register("alice")
    results: list[str] = []

    def send() -> None:
        response = payout.call("CreditDiamonds", credit_request("alice", 40, "gift-race"), GIFTING)
        results.append(response.credit.credit_id)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    assert balance(payout, "alice") == 40
    assert payout.ledger_problems() == []


def test_a_gift_credited_with_other_terms_is_a_mismatch(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.register("bob")
    payout.credit("alice", 70, gift_id="gift-1")
    for other in (credit_request("alice", 71, "gift-1"), credit_request("bob", 70, "gift-1")):
        error = payout.refused("CreditDiamonds", other, GIFTING)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_MISMATCH")
        assert error.metadata["credited_diamonds"] == "70" and error.metadata["credited_creator_id"] == "alice"
    assert (balance(payout, "alice"), balance(payout, "bob")) == (70, 0)


def test_recipients_who_cannot_receive_are_refused(payout: PayoutHarness) -> None:
    payout.register("minor", born=date(2010, 3, 3), verified=False, destination=None)
    for creator_id in ("nobody", "minor"):
        error = payout.refused("CreditDiamonds", credit_request(creator_id, 5, f"gift-{creator_id}"), GIFTING)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_CANNOT_RECEIVE")
        assert error.metadata["creator_id"] == creator_id
    assert payout.count(storage.diamond_credits) == 0
    assert payout.count(storage.ledger.transfers) == 0


def test_only_gifting_may_credit(payout: PayoutHarness) -> None:
    payout.register("alice")
    for caller in (user("alice"), operator("ops"), service("wallet")):
        error = payout.refused("CreditDiamonds", credit_request("alice", 5, "gift-1"), caller)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert balance(payout, "alice") == 0


def test_bad_credits_name_their_fields(payout: PayoutHarness) -> None:
    request = payout_pb2.CreditDiamondsRequest(
        request_id="", gift_id="", creator_id="bad id", diamonds=-1, coins=-1, promotional_coins=-1
    )
    error = payout.refused("CreditDiamonds", request, GIFTING)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == {"request_id", "gift_id", "creator_id", "diamonds", "coins", "promotional_coins"}
    more_promotional = credit_request("alice", 5, "gift-1", coins=10, promotional_coins=11)
    assert fields(payout.refused("CreditDiamonds", more_promotional, GIFTING)) == {"promotional_coins"}


def fields(error: DomainError) -> set[str]:
    return {v.field for v in error.violations}


def test_diamond_history_newest_first_in_pages(payout: PayoutHarness) -> None:
    payout.register("alice")
    for n in range(5):
        payout.credit("alice", 10 + n, gift_id=f"gift-{n}")
        payout.clock.advance(seconds=1)
    seen: list[payout_pb2.DiamondTransaction] = []
    token = ""
    pages = 0
    while True:
        page = payout.call(
            "ListDiamondTransactions",
            payout_pb2.ListDiamondTransactionsRequest(page_size=2, page_token=token),
            user("alice"),
        )
        seen.extend(page.transactions)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [t.reference for t in seen] == [f"gift-{n}" for n in reversed(range(5))]
    assert [t.diamonds_delta for t in seen] == [14, 13, 12, 11, 10]
    assert {t.kind for t in seen} == {payout_pb2.DIAMOND_TRANSACTION_KIND_GIFT_CREDIT}
    assert len({t.transaction_id for t in seen}) == 5

    error = payout.refused(
        "ListDiamondTransactions", payout_pb2.ListDiamondTransactionsRequest(page_token="garbage"), user("alice")
    )
    assert (error.code, fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"})
    others = payout.refused("ListDiamondTransactions", payout_pb2.ListDiamondTransactionsRequest(), user("bob"))
    assert (others.code, others.reason) == (grpc.StatusCode.NOT_FOUND, "CREATOR_NOT_FOUND")


def test_a_credit_books_the_gifts_coins_split_into_the_creators_and_the_platforms_share(payout: PayoutHarness) -> None:
    payout.register("alice")
    payout.call("CreditDiamonds", credit_request("alice", 50, "gift-1", coins=101, promotional_coins=30), GIFTING)
    # One Rose: its creator's share floors to nothing, its coin is all the platform's.
    payout.call("CreditDiamonds", credit_request("alice", 0, "gift-2", coins=1), GIFTING)
    with payout.components.db.transaction() as conn:
        ledger = storage.UnitOfWork(conn).ledger
        assert ledger.balances(
            [
                model.GIFT_COINS,
                model.CREATORS_SHARE,
                model.PLATFORM_SHARE,
                model.DIAMONDS_ISSUED,
            ]
        ) == {
            model.GIFT_COINS: -101 - 1,
            model.CREATORS_SHARE: 50,  # coins that became the creator's diamonds
            model.PLATFORM_SHARE: (101 - 50) + 1,
            model.DIAMONDS_ISSUED: -50,
        }
        transfers = conn.execute(
            select(storage.ledger.transfers.c.reference).where(storage.ledger.transfers.c.kind == "gift_credit")
        ).scalars()
        assert sorted(transfers) == ["gift-1", "gift-2"]  # one transfer per gift, diamonds and coins together
    assert payout.ledger_problems() == []


def test_a_credit_of_more_diamonds_than_coins_is_refused(payout: PayoutHarness) -> None:
    payout.register("alice")
    error = payout.refused("CreditDiamonds", credit_request("alice", 11, "gift-1", coins=10), GIFTING)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["diamonds"]
    assert balance(payout, "alice") == 0
