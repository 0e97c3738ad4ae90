"""Hostile input, aimed where it used to hurt: tampered page tokens, NUL and oversize text, request ids in
other spellings, balances driven to their bound. Each is refused with its code and reason, never
INTERNAL, on SQLite and PostgreSQL alike (the three services in this process: tests/gifting/harness.py)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2

from services.runtime.clock import SystemClock
from services.runtime.db import Database
from services.runtime.ledger import MAX_AMOUNT, MAX_BALANCE, Movement, Posting
from services.wallet.model import ISSUED_BY_PURCHASE, PURCHASE, WalletAccounts
from services.wallet.receipts import mint_receipt
from services.wallet.storage import UnitOfWork
from tests.gifting.harness import OPERATOR, Suite, ledgers_problems, new_id, refused, start_suite
from tests.support.identity import as_caller, service, user

ALICE, CAROL = user("alice"), user("carol")


@pytest.fixture
def suite(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The three services in this process; each test checks what it must conserve."""
    running = start_suite(make_database)
    try:
        yield running
    finally:
        running.close()


def _token(cursor: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def _lists(s: Suite) -> list[tuple[Callable[..., Any], type, str, dict[str, object]]]:
    """(method, request type, the list's name in its tokens, a cursor of the right shape)."""
    c = s.clients
    instant, transfer = "2026-12-01T10:00:00+00:00", str(uuid.uuid4())
    return [
        (c.wallet.ListTransactions, wallet_pb2.ListTransactionsRequest, "transactions", {"before": 5}),
        (
            c.payout.ListDiamondTransactions,
            payout_pb2.ListDiamondTransactionsRequest,
            "diamond_transactions",
            {"position": 5},
        ),
        (c.payout.ListPayouts, payout_pb2.ListPayoutsRequest, "payouts", {"created_at": instant, "payout_id": "po_1"}),
        (c.gifting.ListSentGifts, gifting_pb2.ListSentGiftsRequest, "sent", {"at": instant, "id": transfer}),
        (
            c.gifting.ListReceivedGifts,
            gifting_pb2.ListReceivedGiftsRequest,
            "received",
            {"at": instant, "id": transfer},
        ),
    ]


def _tampered(name: str, cursor: dict[str, object]) -> list[str]:
    """Tokens a client could make of a genuine one: every value at and past its column's edge."""
    tokens = [
        "%%%",
        "e30",  # {} without padding
        _token([name]),
        _token({**cursor, "list": "elsewhere"}),
        _token({**cursor, "list": name, "extra": 1}),
        _token({"list": name}),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),  # nesting deeper than the parser goes
        "A" * 10_000,
    ]
    for key, value in cursor.items():
        if isinstance(value, int):
            edges: list[object] = [2**63, 2**64, -(2**63) - 1, 0, -1, 1.5, True, "5", None, 1e309]
        elif key in ("at", "created_at"):
            edges = [
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00",
                "0001-01-01T00:00:00+00:00",
                "2026-12-01T10:00:00",
                "2026-12-01T10:00:00+02:00",
                "not a time",
                12,
            ]
        else:
            edges = ["x" * 65, "", "nul\u0000", "a b", 7, ["po_1"]]
        tokens += [_token({**cursor, "list": name, key: edge}) for edge in edges]
    return tokens


def test_a_tampered_page_token_is_invalid_argument_on_page_token(suite: Suite) -> None:
    c = suite.clients
    c.viewer("alice")
    c.creator("alice")
    for method, request_type, name, cursor in _lists(suite):
        genuine = method(request_type(page_token=_token({**cursor, "list": name})), metadata=as_caller(ALICE))
        assert genuine is not None  # a token of the right shape pages, even past the end
        for token in _tampered(name, cursor):
            error = refused(partial(method, request_type(page_token=token), metadata=as_caller(ALICE)))
            assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), (name, token)
            assert [v.field for v in error.violations] == ["page_token"], (name, token)


def _invalid(call: Callable[[], Any], field: str) -> None:
    error = refused(call)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), error
    assert field in [v.field for v in error.violations], error


def test_nul_and_oversize_text_is_refused_before_storage(suite: Suite) -> None:
    c = suite.clients
    c.creator("carol")
    for name in ("Rose\u0000", "R" * 65):
        _invalid(partial(c.upsert, "nul-gift", name, 5), "name")
    for reference in ("IBAN\u0000DE", "x" * 257):
        destination = payout_pb2.PayoutDestination(
            kind=payout_pb2.DESTINATION_KIND_BANK_ACCOUNT, account_reference=reference, currency_code="USD"
        )
        request = payout_pb2.SetPayoutDestinationRequest(request_id=new_id(), destination=destination)
        _invalid(
            partial(c.payout.SetPayoutDestination, request, metadata=as_caller(CAROL)),
            "destination.account_reference",
        )
    for promotion_name in ("welcome\u0000", "w" * 257):
        promotion = wallet_pb2.CreatePromotionRequest(
            request_id=new_id(), promotion_id="p1", name=promotion_name, coins_per_claim=10, budget=100
        )
        promotion.start_time.FromSeconds(1_800_000_000)
        promotion.end_time.FromSeconds(1_800_086_400)
        _invalid(partial(c.wallet.CreatePromotion, promotion, metadata=as_caller(OPERATOR)), "name")
    for txn in ("txn\u00001", "t" * 257):
        refund = wallet_pb2.RefundPurchaseRequest(
            request_id=new_id(), store="sandbox", store_transaction_id=txn, kind=wallet_pb2.REFUND_KIND_REFUND
        )
        _invalid(partial(c.wallet.RefundPurchase, refund, metadata=as_caller(OPERATOR)), "store_transaction_id")
    # An id with a trailing newline, and ids, codes, targets with NUL.
    _invalid(lambda: c.send("alice", gift_id="rose\n"), "gift_id")
    _invalid(lambda: c.send("alice", recipient_id="carol\u0000"), "recipient_id")
    stream = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="live\u00001")
    _invalid(lambda: c.send("alice", target=stream), "target.id")
    opened = wallet_pb2.OpenWalletRequest(request_id=new_id(), country_code="US\n")
    _invalid(lambda: c.wallet.OpenWallet(opened, metadata=as_caller(ALICE)), "country_code")


def test_a_receipt_whose_transaction_id_or_amount_no_column_holds_is_refused(suite: Suite) -> None:
    c = suite.clients
    c.viewer("alice", package_id="")
    for payload in (
        mint_receipt("coins_70", "t" * 257),
        mint_receipt("coins_70", "txn\u00001"),
        mint_receipt("coins_70", amount_minor=2**63),
        mint_receipt("coins_70", amount_minor=-1),
    ):
        request = wallet_pb2.PurchaseCoinsRequest(
            request_id=new_id(), package_id="coins_70", receipt=wallet_pb2.Receipt(store="sandbox", payload=payload)
        )
        error = refused(partial(c.wallet.PurchaseCoins, request, metadata=as_caller(ALICE)))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_INVALID")
    assert c.balance("alice").total == 0


def test_extreme_integers_are_invalid_argument(suite: Suite) -> None:
    c = suite.clients
    c.viewer("alice")
    c.creator("carol")
    gifting = as_caller(service("gifting"))
    for amount in (2**63 - 1, -(2**63), MAX_AMOUNT + 1):
        hold = wallet_pb2.HoldCoinsRequest(request_id=new_id(), gift_id="g1", user_id="alice", amount=amount)
        _invalid(partial(c.wallet.HoldCoins, hold, metadata=gifting), "amount")
        credit = payout_pb2.CreditDiamondsRequest(
            request_id=new_id(), gift_id="g1", creator_id="carol", diamonds=amount, coins=amount
        )
        _invalid(partial(c.payout.CreditDiamonds, credit, metadata=gifting), "diamonds")
        _invalid(partial(c.send, "alice", quantity=amount), "quantity")
        quote = payout_pb2.QuotePayoutRequest(diamonds=amount if amount < 0 else MAX_BALANCE + 1)
        _invalid(partial(c.payout.QuotePayout, quote, metadata=as_caller(CAROL)), "diamonds")
    for size in (-1, -(2**31)):
        listing = wallet_pb2.ListTransactionsRequest(page_size=size)
        _invalid(partial(c.wallet.ListTransactions, listing, metadata=as_caller(ALICE)), "page_size")
    assert c.balance("alice").total == 700
    assert suite.problems() == []


def test_one_uuid_is_one_request_id_and_other_spellings_are_refused(suite: Suite) -> None:
    c = suite.clients
    c.viewer("alice")
    c.creator("carol")
    canonical = str(uuid.uuid4())
    sent = c.send("alice", c.send_request(quantity=10, request_id=canonical))
    assert sent.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
    raw = uuid.UUID(canonical)
    for spelling in (canonical.upper(), raw.hex, f"{{{canonical}}}", f"urn:uuid:{canonical}", f" {canonical}"):
        error = refused(partial(c.send, "alice", c.send_request(quantity=10, request_id=spelling)))
        assert (error.code, [v.field for v in error.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])
    # The canonical spelling replays: value moved once.
    assert c.send("alice", c.send_request(quantity=10, request_id=canonical)).transfer_id == sent.transfer_id
    assert c.balance("alice").total == 700 - 10
    assert c.diamonds("carol") == 5
    assert suite.problems() == []


def _fill_wallet(url: str, user_id: str, coins: int) -> None:
    """Coins put on a wallet through its ledger (a test's shortcut past a thousand purchases)."""
    db = Database.from_url(url, pool_size=1)
    try:
        movement = Movement(
            PURCHASE, "seed", [Posting(ISSUED_BY_PURCHASE, -coins), Posting(WalletAccounts(user_id).purchased, coins)]
        )
        db.run(lambda conn: UnitOfWork(conn).post_many([(user_id, movement)], SystemClock().now()))
    finally:
        db.dispose()


def test_a_wallet_at_its_bound_refuses_more_coins_with_a_reason(suite: Suite) -> None:
    c = suite.clients
    c.viewer("alice", package_id="")
    c.wallet.CreatePromotion(_promotion(suite, "welcome"), metadata=as_caller(OPERATOR))
    _fill_wallet(suite.wallet_url, "alice", MAX_BALANCE - 69)
    purchase = wallet_pb2.PurchaseCoinsRequest(
        request_id=new_id(),
        package_id="coins_70",
        receipt=wallet_pb2.Receipt(store="sandbox", payload=mint_receipt("coins_70")),
    )
    error = refused(lambda: c.wallet.PurchaseCoins(purchase, metadata=as_caller(ALICE)))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_LIMIT_EXCEEDED")
    assert error.metadata["limit"] == str(MAX_BALANCE) and error.metadata["balance"] == str(MAX_BALANCE - 69)
    claim = wallet_pb2.ClaimPromotionRequest(request_id=new_id(), promotion_id="welcome")
    error = refused(lambda: c.wallet.ClaimPromotion(claim, metadata=as_caller(ALICE)))
    assert error.reason == "BALANCE_LIMIT_EXCEEDED"
    assert c.balance("alice").total == MAX_BALANCE - 69  # and the wallet still reads
    assert ledgers_problems(suite.wallet_url, suite.payout_url) == []


def _promotion(s: Suite, promotion_id: str) -> wallet_pb2.CreatePromotionRequest:
    request = wallet_pb2.CreatePromotionRequest(
        request_id=new_id(), promotion_id=promotion_id, name="Welcome", coins_per_claim=100, budget=1000
    )
    request.start_time.FromDatetime(s.clock.now())
    request.end_time.FromSeconds(request.start_time.seconds + 86_400)
    return request


def test_diamonds_credited_up_to_their_bound_are_refused_with_a_reason_and_earnings_still_read(suite: Suite) -> None:
    c = suite.clients
    c.creator("carol")
    gifting = as_caller(service("gifting"))

    def batch(first: int, count: int) -> list[payout_pb2.CreditDiamondsResult]:
        requests = [
            payout_pb2.CreditDiamondsRequest(
                request_id=new_id(), gift_id=f"g{first + i}", creator_id="carol", diamonds=MAX_AMOUNT, coins=MAX_AMOUNT
            )
            for i in range(count)
        ]
        response = c.payout.BatchCreditDiamonds(
            payout_pb2.BatchCreditDiamondsRequest(requests=requests), metadata=gifting
        )
        return list(response.results)

    assert all(r.HasField("response") for r in batch(0, 500))
    assert all(r.HasField("response") for r in batch(500, 500))
    over = batch(1000, 1)[0].error  # the 1,001st credit of 10^12 would pass 10^15
    assert (over.code, over.reason) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "BALANCE_LIMIT_EXCEEDED")
    assert over.metadata["balance"] == str(MAX_BALANCE)
    earnings = c.payout.GetEarnings(payout_pb2.GetEarningsRequest(), metadata=as_caller(CAROL))
    assert earnings.diamond_balance == MAX_BALANCE
    quote = c.payout.QuotePayout(payout_pb2.QuotePayoutRequest(), metadata=as_caller(CAROL)).quote
    assert quote.diamonds == MAX_BALANCE
    # A gift to her now fails for the recipient, and the viewer's coins come back.
    c.viewer("alice")
    error = refused(lambda: c.send("alice", recipient_id="carol", quantity=10))
    assert (error.code, error.reason, error.metadata["cause"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RECIPIENT_CANNOT_RECEIVE",
        "BALANCE_LIMIT_EXCEEDED",
    )
    assert c.balance("alice").available == 700
    assert ledgers_problems(suite.wallet_url, suite.payout_url) == []
