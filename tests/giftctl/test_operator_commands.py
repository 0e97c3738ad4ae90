"""giftctl's operator views, audit trails and `reconcile`, against the three real services in-process
(tests/gifting/harness.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.giftctl.test_rpc_commands import Giftctl
from tests.gifting.harness import Suite
from tests.reconciler.conftest import capture_behind_wallets_back, story, targets

OPS = ("--as", "operator:ops")


def giftctl_for(suite: Suite, capsys: pytest.CaptureFixture[str]) -> Giftctl:
    return Giftctl(capsys, **targets(suite))


def window(suite: Suite) -> tuple[str, ...]:
    """--since / --until around the suite's fake time."""
    now = suite.clock.now()
    return ("--since", (now - timedelta(hours=1)).isoformat(), "--until", (now + timedelta(seconds=1)).isoformat())


def test_operators_read_any_wallet_the_promotions_creators_gifts_and_payouts_by_state(
    books: Suite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = story(books)
    books.clients.creator("dora")  # registered, awaiting KYC
    giftctl = giftctl_for(books, capsys)

    ana = giftctl.json(*OPS, "wallet", "user", "get", "ana")["wallet"]
    assert ana["balance"]["total"] == books.clients.balance("ana").total
    first = giftctl.json(*OPS, "wallet", "user", "history", "ana", "--page-size", "2")
    rest = giftctl.json(*OPS, "wallet", "user", "history", "ana", "--page-token", first["next_page_token"])
    assert len(first["transactions"]) == 2 and rest["next_page_token"] == ""
    kinds = [t["kind"] for t in first["transactions"] + rest["transactions"]]
    assert kinds[-1] == "TRANSACTION_KIND_PURCHASE"  # newest first: her purchase came first

    [welcome] = giftctl.json(*OPS, "wallet", "promotion", "list")["promotions"]
    assert (welcome["promotion_id"], welcome["remaining"]) == ("welcome", s.promotion_budget - s.granted)

    unverified = giftctl.json(*OPS, "payout", "creator", "list", "--kyc", "unverified")["creators"]
    assert [c["creator_id"] for c in unverified] == ["dora"]
    everyone = giftctl.json(*OPS, "payout", "creator", "list")["creators"]
    assert [c["creator_id"] for c in everyone] == ["cara", "dora"]

    failed = giftctl.json(*OPS, "gifting", "transfers", "--state", "failed", *window(books))["transfers"]
    assert {t["transfer"]["transfer_id"] for t in failed} == {s.failed_after_hold, s.failed_without_hold}
    assert {t["cause"] for t in failed} == {"RECIPIENT_CANNOT_RECEIVE", "INSUFFICIENT_FUNDS"}
    assert all(t["cause_message"] and t["step"] == "GIFT_TRANSFER_STEP_FAILED" for t in failed)
    status, out, _ = giftctl(*OPS, "gifting", "transfers", "--state", "failed")
    assert status == 0
    assert out.splitlines()[0].split()[:3] == ["TIME", "AGE", "GIFT"]
    assert "INSUFFICIENT_FUNDS: " in out
    assert giftctl.json(*OPS, "gifting", "transfers", "--state", "pending")["transfers"] == []

    [paid] = giftctl.json(*OPS, "payout", "all-payouts", "--state", "paid")["payouts"]
    assert s.payout is not None and paid["payout_id"] == s.payout.payout_id
    assert giftctl.json(*OPS, "payout", "all-payouts", "--state", "processing")["payouts"] == []

    lion = s.completed[2]
    [hold] = giftctl.json(*OPS, "wallet", "holds", "--gift", lion.transfer_id)["holds"]
    assert (hold["hold"]["state"], hold["spent_coins"], hold["capture_transfers"]) == (
        "HOLD_STATE_CAPTURED",
        lion.total_coins,
        1,
    )
    [credit] = giftctl.json(*OPS, "payout", "credits", "--gift", lion.transfer_id)["credits"]
    assert (credit["booked_diamonds"], credit["booked_platform_share"]) == (
        lion.total_diamonds,
        lion.total_coins - lion.total_diamonds,
    )
    wallet_books = giftctl.json(*OPS, "wallet", "books", *window(books))
    assert wallet_books["coins_purchased"] == sum(p.coins for p in s.purchases)
    payout_books = giftctl.json(*OPS, "payout", "books", *window(books))
    assert payout_books["platform_share"] == sum(t.total_coins - t.total_diamonds for t in s.completed)

    # Users are not operators: giftctl says so before it calls.
    status, out, err = giftctl("--as", "user:ana", "wallet", "user", "get", "ben")
    assert (status, out) == (2, "") and "operator command" in err


def test_every_operator_action_leaves_one_audit_record_readable_by_operators(
    books: Suite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    story(books)  # an operator created a promotion, verified cara and refunded dan's purchase
    giftctl = giftctl_for(books, capsys)
    upsert = ("gifting", "gift", "upsert", "tiara", "--name", "Tiara", "--price", "300")
    request_id = "4e0b8a56-6a3b-4b49-9c53-1e0a6b2f61a7"
    giftctl.json("--as", "operator:curator", *upsert, "--request-id", request_id)
    giftctl.json("--as", "operator:curator", *upsert, "--request-id", request_id)  # a replay: no second record
    giftctl.json("--as", "operator:curator", "gifting", "gift", "retire", "tiara")
    status, _, _ = giftctl("--as", "operator:curator", "gifting", "gift", "retire", "no-such-gift")
    assert status == 1  # refused: no record

    gifting = giftctl.json(*OPS, "gifting", "audit")["records"]
    assert [(r["actor"], r["action"], r["target"]) for r in gifting] == [
        ("operator:curator", "RetireGift", "tiara"),
        ("operator:curator", "UpsertGift", "tiara"),
    ]
    assert gifting[1]["request_id"] == request_id
    assert json.loads(gifting[1]["request_json"])["coin_price"] == "300"  # proto3 JSON: int64 as a string
    assert gifting[0]["sequence"] > gifting[1]["sequence"] and gifting[0]["create_time"]

    wallet = giftctl.json(*OPS, "wallet", "audit")["records"]
    assert [(r["actor"], r["action"], r["target"]) for r in wallet] == [
        ("operator:ops", "RefundPurchase", "sandbox:dan-1"),
        ("operator:ops", "CreatePromotion", "welcome"),
    ]
    [verified] = giftctl.json(*OPS, "payout", "audit")["records"]
    assert (verified["action"], verified["target"]) == ("VerifyCreator", "cara")

    page = giftctl.json(*OPS, "wallet", "audit", "--page-size", "1")
    assert len(page["records"]) == 1 and page["next_page_token"]
    status, _, err = giftctl("--as", "user:ana", "gifting", "audit")
    assert status == 2 and "operator command" in err


def test_reconcile_prints_the_report_and_exits_non_zero_on_discrepancies(
    books: Suite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = story(books)
    giftctl = giftctl_for(books, capsys)
    status, out, err = giftctl("reconcile", *window(books))
    assert (status, err) == (0, "")
    assert "discrepancies: 0" in out and "the platform's share" in out

    capture_behind_wallets_back(books, s.failed_after_hold)
    status, out, err = giftctl("reconcile", *window(books), "--json")
    assert (status, err) == (3, "")
    report = json.loads(out)
    assert report["ok"] is False
    assert [(d["kind"], d["gift_id"]) for d in report["discrepancies"]] == [
        ("FAILED_BUT_CAPTURED", s.failed_after_hold)
    ]
    status, out, _ = giftctl(*OPS, "reconcile", *window(books))  # an operator may run it too
    assert status == 3 and "FAILED_BUT_CAPTURED" in out and "what to do:" in out

    status, out, err = giftctl("--as", "user:ana", "reconcile")
    assert (status, out) == (2, "") and "--as operator" in err
