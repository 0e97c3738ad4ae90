"""What the payout database itself guarantees, on SQLite and PostgreSQL (not the code in front of it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from services.payout import storage
from services.runtime.db import Database
from services.runtime.ledger import Ledger, Posting

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(make_database: Callable[[str], str]) -> Iterator[Database]:
    database = Database.from_url(make_database("payout"))
    with database.transaction() as conn:
        conn.execute(
            insert(storage.creators).values(
                creator_id="alice",
                date_of_birth=date(1990, 1, 1),
                country_code="US",
                gifting_enabled=True,
                kyc_status="verified",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    yield database
    database.dispose()


def payout_row(payout_id: str, state: str = "requested") -> dict[str, object]:
    return {
        "payout_id": payout_id,
        "creator_id": "alice",
        "diamonds": 2000,
        "gross": 1000,
        "fee": 30,
        "net": 970,
        "currency": "USD",
        "state": state,
        "destination_kind": "sandbox",
        "destination_reference": "succeed",
        "destination_currency": "USD",
        "provider_reference": "",
        "failure_reason": "",
        "submissions": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }


def credit_row(credit_id: str, gift_id: str) -> dict[str, object]:
    return {
        "credit_id": credit_id,
        "gift_id": gift_id,
        "creator_id": "alice",
        "diamonds": 5,
        "coins": 10,
        "promotional_coins": 0,
        "transfer_id": f"credit:{credit_id}",
        "created_at": NOW,
    }


def test_migrations_make_exactly_the_tables_the_code_uses(db: Database) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), storage.metadata) == []


def test_the_database_allows_one_payout_in_flight_per_creator(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(insert(storage.payouts).values(payout_row("po_1")))
    for state in ("requested", "processing"):
        with pytest.raises(IntegrityError), db.transaction() as conn:
            conn.execute(insert(storage.payouts).values(payout_row("po_2", state)))
    with db.transaction() as conn:  # settled payouts do not hold the slot
        conn.execute(update(storage.payouts).where(storage.payouts.c.payout_id == "po_1").values(state="paid"))
        conn.execute(insert(storage.payouts).values(payout_row("po_2")))
        conn.execute(insert(storage.payouts).values(payout_row("po_0", "failed")))


def test_the_database_allows_one_credit_per_gift(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(insert(storage.diamond_credits).values(credit_row("cr_1", "gift-1")))
    with pytest.raises(IntegrityError), db.transaction() as conn:
        conn.execute(insert(storage.diamond_credits).values(credit_row("cr_2", "gift-1")))


def test_the_database_refuses_amounts_that_do_not_add_up(db: Database) -> None:
    for bad in ({"net": 971}, {"diamonds": 0}, {"state": "lost"}):
        with pytest.raises(IntegrityError), db.transaction() as conn:
            conn.execute(insert(storage.payouts).values({**payout_row("po_bad"), **bad}))


def test_a_payouts_settlement_transfer_can_be_written_once(db: Database) -> None:
    with db.transaction() as conn:
        ledger = Ledger(storage.ledger, conn)
        ledger.open_account("platform:a", "diamond", NOW, platform=True)
        ledger.open_account("platform:b", "diamond", NOW, platform=True)
        ledger.post(
            "payout_paid", "po_1", [Posting("platform:a", -1), Posting("platform:b", 1)], NOW, "payout-paid:po_1"
        )
    with pytest.raises(IntegrityError), db.transaction() as conn:
        Ledger(storage.ledger, conn).post(
            "payout_paid", "po_1", [Posting("platform:a", -1), Posting("platform:b", 1)], NOW, "payout-paid:po_1"
        )
