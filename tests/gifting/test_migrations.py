"""The Alembic migrations build exactly the schema storage.py describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.gifting import storage
from services.runtime.db import Database


def test_migrations_match_the_tables_in_code(make_database: Callable[[str], str]) -> None:
    db = Database.from_url(make_database("gifting"), pool_size=1)
    try:
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), storage.metadata)
    finally:
        db.dispose()
    assert differences == []
