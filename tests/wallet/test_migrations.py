"""The Alembic migrations build exactly the schema storage.py describes, on SQLite and PostgreSQL, and
carry a database's rows from one revision to the next."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select

from services.runtime.db import Database, alembic_config
from services.runtime.ledger import Ledger, Posting, ledger_problems
from services.wallet import storage
from tests.support import databases

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_migrations_match_the_tables_in_code(wallet_url: str) -> None:
    db = Database.from_url(wallet_url, pool_size=1)
    try:
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), storage.metadata)
    finally:
        db.dispose()
    assert differences == []


def test_migration_0002_leaves_platform_balances_unstored_and_every_entry_where_it_was(
    backend: str, tmp_path: Path
) -> None:
    url = databases.empty_database(backend, tmp_path)
    config = alembic_config(storage.MIGRATIONS_DIR, url)
    command.upgrade(config, "0001")
    db = Database.from_url(url, pool_size=1)
    accounts = storage.ledger.accounts
    try:
        with db.transaction() as conn:  # the rows revision 0001's code wrote: platform balances stored as 0
            for code, platform in (("platform:coins:issued:purchase", True), ("wallet:purchased:ana", False)):
                conn.execute(
                    insert(accounts).values(code=code, unit="coin", platform=platform, balance=0, created_at=NOW)
                )
            Ledger(storage.ledger, conn).post(
                "purchase",
                "pur_1",
                [Posting("platform:coins:issued:purchase", -700), Posting("wallet:purchased:ana", 700)],
                NOW,
            )
        command.upgrade(config, "head")  # rebuilds ledger_accounts on SQLite, with entries referring to it
        with db.transaction() as conn:
            stored = dict(conn.execute(select(accounts.c.code, accounts.c.balance)).tuples().all())
            assert stored == {"platform:coins:issued:purchase": None, "wallet:purchased:ana": 700}
            assert Ledger(storage.ledger, conn).balance("platform:coins:issued:purchase") == -700
            assert ledger_problems(storage.ledger, conn) == []
    finally:
        db.dispose()
