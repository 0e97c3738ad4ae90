"""giftctl's RPC commands against the real wallet and payout, in-process over gRPC on 127.0.0.1,
on a fresh database per test (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.giftctl import cli
from services.payout import app as payout_app
from services.payout import settings as payout_settings
from services.payout import storage as payout_storage
from services.runtime.config import Env
from services.runtime.db import Database
from services.runtime.ledger import LedgerTables, ledger_problems
from services.runtime.server import create_server
from services.wallet import app as wallet_app
from services.wallet import settings as wallet_settings
from services.wallet import storage as wallet_storage


def check_books(database_url: str, tables: LedgerTables) -> None:
    db = Database.from_url(database_url, pool_size=1)
    try:
        with db.transaction() as conn:
            assert ledger_problems(tables, conn) == []
    finally:
        db.dispose()


@pytest.fixture
def wallet(make_database: Callable[[str], str]) -> Iterator[str]:
    """A running wallet's address; its books are checked after the test."""
    url = make_database("wallet")
    settings = wallet_settings.load_settings(
        Env({"GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_WALLET_DATABASE_URL": url, "GIFTCOIN_MIGRATE_ON_START": "false"})
    )
    running = create_server(wallet_app.build(settings), settings, "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    running.stop(None)
    check_books(url, wallet_storage.ledger)


@pytest.fixture
def payout(make_database: Callable[[str], str]) -> Iterator[str]:
    url = make_database("payout")
    settings = payout_settings.load_settings(
        Env(
            {
                "GIFTCOIN_DEV_MODE": "true",
                "GIFTCOIN_PAYOUT_DATABASE_URL": url,
                "GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": "3600000",
            }
        )
    )
    running = create_server(payout_app.build(settings), settings, "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    running.stop(None)
    check_books(url, payout_storage.ledger)


DOCS = (Path(__file__).resolve().parents[2] / "docs" / "giftctl.md").read_text()


class Giftctl:
    """Runs giftctl in-process against fixed targets; returns (exit status, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], **targets: str) -> None:
        self.capsys = capsys
        self.target_options = [f"--{service}={target}" for service, target in targets.items()]

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        status = cli.main([*argv, *self.target_options])
        out, err = self.capsys.readouterr()
        return status, out, err

    def json(self, *argv: str) -> Any:
        status, out, err = self(*argv, "--json")
        assert (status, err) == (0, ""), err
        return json.loads(out)


def test_a_viewer_buys_coins_and_replays_are_answered_by_the_wallet(
    wallet: str, capsys: pytest.CaptureFixture[str]
) -> None:
    giftctl = Giftctl(capsys, wallet=wallet)
    opened = giftctl.json("--as", "user:ana", "wallet", "open", "--birth-date", "1994-05-17", "--country", "us")
    assert opened["wallet"]["user_id"] == "ana" and opened["wallet"]["country_code"] == "US"

    packages = giftctl.json("wallet", "packages")["packages"]
    assert {"package_id": "coins_700", "coins": 700, "price": {"amount_minor": 999, "currency_code": "USD"}} in packages

    request_id = str(uuid.uuid4())
    buy = ("--as", "user:ana", "wallet", "buy", "--package", "coins_700", "--transaction-id", "store-1")
    bought = giftctl.json(*buy, "--request-id", request_id)
    assert bought["purchase"]["coins"] == 700
    assert bought["wallet"]["balance"]["total"] == 700

    # The same request id replays the first answer; the same receipt under a new id credits nothing.
    assert giftctl.json(*buy, "--request-id", request_id) == bought
    status, out, err = giftctl(*buy)
    assert (status, out) == (1, "")
    assert err == (
        "giftctl: wallet refused: ALREADY_EXISTS RECEIPT_ALREADY_USED: "
        "store transaction store-1 of store sandbox was already credited\n"
    )
    assert err in DOCS  # docs/giftctl.md shows what giftctl prints

    status, _, err = giftctl("--as", "user:ana", "wallet", "buy", "--package", "coins_70", "--request-id", request_id)
    assert status == 1
    assert err.startswith("giftctl: wallet refused: ALREADY_EXISTS REQUEST_ID_REUSED: ")

    # Under --request-id alone, the receipt is made from the request id: the same command replays.
    again = ("--as", "user:ana", "wallet", "buy", "--package", "coins_70", "--request-id", str(uuid.uuid4()))
    first = giftctl.json(*again)
    assert giftctl.json(*again) == first
    assert first["wallet"]["balance"]["total"] == 770

    # --json on a refusal: the refusal as one JSON object, on stderr.
    status, out, err = giftctl(*buy, "--json")
    assert (status, out) == (1, "")
    refusal = json.loads(err)["error"]
    assert (refusal["service"], refusal["code"], refusal["reason"]) == (
        "wallet",
        "ALREADY_EXISTS",
        "RECEIPT_ALREADY_USED",
    )
    assert refusal["metadata"]["store_transaction_id"] == "store-1"
    assert err in DOCS

    # A bad receipt: its message once, the field named after it.
    status, _, err = giftctl("--as", "user:ana", "wallet", "buy", "--package", "coins_70", "--receipt", "forged.sig")
    assert status == 1
    message = "the sandbox receipt does not verify: signature does not verify"
    assert err == f"giftctl: wallet refused: INVALID_ARGUMENT RECEIPT_INVALID: {message} (receipt.payload)\n"
    assert err in DOCS

    assert giftctl.json("--as", "user:ana", "wallet", "get")["wallet"]["balance"]["total"] == 770
    history = giftctl.json("--as", "user:ana", "wallet", "history")
    assert [t["kind"] for t in history["transactions"]] == ["TRANSACTION_KIND_PURCHASE"] * 2

    status, out, _ = giftctl("--as", "user:ana", "wallet", "get")
    assert status == 0
    assert out.splitlines()[1].strip() == ("balance: 770 coins (held 0, available 770; promotional 0, purchased 770)")


def test_operator_commands_and_bad_fields_named_by_the_service(wallet: str, capsys: pytest.CaptureFixture[str]) -> None:
    giftctl = Giftctl(capsys, wallet=wallet)
    promotion = giftctl.json(
        "--as", "operator:ops", "wallet", "promotion", "create", "welcome", "--coins", "100", "--budget", "150"
    )["promotion"]
    assert (promotion["coins_per_claim"], promotion["remaining"]) == (100, 150)

    giftctl.json("--as", "user:ana", "wallet", "open", "--birth-date", "1994-05-17", "--country", "US")
    claimed = giftctl.json("--as", "user:ana", "wallet", "claim", "welcome")
    assert claimed["coins_granted"] == 100
    assert claimed["wallet"]["balance"]["promotional"] == 100

    # A second claim is refused by the wallet, with its reason.
    status, _, err = giftctl("--as", "user:ana", "wallet", "claim", "welcome")
    assert status == 1 and " PROMOTION_ALREADY_CLAIMED: " in err

    status, out, err = giftctl("--as", "user:ana", "wallet", "claim", "")
    assert (status, out) == (1, "")
    assert err.startswith("giftctl: wallet refused: INVALID_ARGUMENT INVALID_ARGUMENT: ")
    assert "(promotion_id: " in err


def test_a_creator_sets_up_payouts_and_gets_quotes(payout: str, capsys: pytest.CaptureFixture[str]) -> None:
    giftctl = Giftctl(capsys, payout=payout)
    creator = giftctl.json("--as", "user:cara", "payout", "register", "--birth-date", "1991-02-03", "--country", "US")
    assert creator["creator"]["kyc_status"] == "KYC_STATUS_UNVERIFIED"
    verified = giftctl.json("--as", "operator:ops", "payout", "creator", "verify", "cara")
    assert verified["creator"]["kyc_status"] == "KYC_STATUS_VERIFIED"
    status, out, _ = giftctl("--as", "user:cara", "payout", "destination", "--account", "succeed")
    assert status == 0
    assert out.strip().endswith("payouts to sandbox succeed (USD)")

    earnings = giftctl.json("--as", "user:cara", "payout", "earnings")
    assert earnings["diamond_balance"] == 0
    assert earnings["rate"] == {"numerator": 100, "denominator": 200}

    quote = giftctl.json("--as", "user:cara", "payout", "quote")["quote"]
    assert quote["meets_minimum"] is False
    assert quote["minimum"] == {"amount_minor": 1000, "currency_code": "USD"}

    status, out, err = giftctl("--as", "user:cara", "payout", "request")
    assert (status, out) == (1, "")
    assert err == (
        "giftctl: payout refused: FAILED_PRECONDITION BELOW_PAYOUT_THRESHOLD: "
        "net 0.00 USD is below the minimum payout of 10.00 USD\n"
    )
    assert err in DOCS

    assert giftctl.json("--as", "user:cara", "payout", "payouts") == {"payouts": [], "next_page_token": ""}
