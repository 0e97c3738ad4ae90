"""What the payout database itself guarantees, on SQLite and PostgreSQL (not the code in front of it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from services.payout import model, storage
from services.runtime.db import Database, alembic_config
from services.runtime.ledger import Ledger, Posting, ledger_problems
from tests.support import databases

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALICE = {
    "creator_id": "alice",
    "date_of_birth": date(1990, 1, 1),
    "country_code": "US",
    "gifting_enabled": True,
    "kyc_status": "verified",
    "created_at": NOW,
    "updated_at": NOW,
}


@pytest.fixture
def db(make_database: Callable[[str], str]) -> Iterator[Database]:
    database = Database.from_url(make_database("payout"))
    with database.transaction() as conn:
        conn.execute(insert(storage.creators).values(**ALICE))
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


def test_migration_0002_books_the_platforms_share_of_credits_recorded_before_it(backend: str, tmp_path: Path) -> None:
    """Credits written by revision 0001's code booked only their diamonds; 0002 books their coins."""
    url = databases.empty_database(backend, tmp_path)
    config = alembic_config(storage.MIGRATIONS_DIR, url)
    command.upgrade(config, "0001")
    db = Database.from_url(url, pool_size=1)
    try:
        with db.transaction() as conn:
            platform = {"unit": "diamond", "platform": True, "balance": 0, "created_at": NOW}
            conn.execute(insert(storage.ledger.accounts).values(code=model.DIAMONDS_ISSUED, **platform))
            conn.execute(
                insert(storage.ledger.accounts).values(
                    code="creator:alice:diamonds", unit="diamond", platform=False, balance=0, created_at=NOW
                )
            )
            conn.execute(insert(storage.creators).values(**ALICE))
            for credit_id, gift_id, diamonds, coins, promotional in (
                ("cr_1", "g1", 50, 101, 30),
                ("cr_2", "g2", 0, 1, 0),
            ):
                conn.execute(
                    insert(storage.diamond_credits).values(
                        credit_id=credit_id,
                        gift_id=gift_id,
                        creator_id="alice",
                        diamonds=diamonds,
                        coins=coins,
                        promotional_coins=promotional,
                        transfer_id=f"credit:{credit_id}",
                        created_at=NOW,
                    )
                )
            Ledger(storage.ledger, conn).post(
                "gift_credit",
                "g1",
                [Posting(model.DIAMONDS_ISSUED, -50), Posting("creator:alice:diamonds", 50)],
                NOW,
                transfer_id="credit:cr_1",
            )
        command.upgrade(config, "head")
        with db.transaction() as conn:
            ledger = Ledger(storage.ledger, conn)
            assert ledger.balances([model.PLATFORM_SHARE, model.CREATORS_SHARE, model.GIFT_COINS]) == {
                model.PLATFORM_SHARE: 51 + 1,
                model.CREATORS_SHARE: 50,
                model.GIFT_COINS: -(101 + 1),
            }
            booked = storage.CreditRepository(conn).booked(10)
            assert [(b.credit.gift_id, b.booked_diamonds, b.booked_share, b.diamond_transfers) for b in booked] == [
                ("g1", 50, 51, 1),
                ("g2", 0, 1, 0),
            ]
            stored = conn.execute(
                select(storage.ledger.accounts.c.balance).where(storage.ledger.accounts.c.code == model.DIAMONDS_ISSUED)
            ).scalar_one()
            assert stored is None  # a platform balance is no longer stored
            assert ledger_problems(storage.ledger, conn) == []
    finally:
        db.dispose()
