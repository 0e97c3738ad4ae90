"""The runtime's tables that the services' migrations create from the runtime's definitions
(runtime.migration_tables) keep the definitions those migrations were written against."""

from __future__ import annotations

import hashlib

from sqlalchemy import MetaData, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from services.runtime import migration_tables
from services.runtime.audit import audit_table
from services.runtime.ledger import ledger_tables
from services.runtime.tables import request_ids_table

# The DDL each table's definition compiles to (SQLite and PostgreSQL), as the migrations found it.
PINNED = {
    "request_ids": "b595907cf8876f8e",
    "audit_records": "3a8d4a863013ae89",
    "ledger_transfers": "675586d7f2da5ed0",
    "ledger_entries": "7f86336bc3e0bf8a",
    "ledger_accounts": "528fbf232d406130",
}


def _fingerprint(table: Table) -> str:
    statements: list[ExecutableDDLElement] = [CreateTable(table)]
    statements += [CreateIndex(index) for index in sorted(table.indexes, key=str)]
    ddl = [
        str(statement.compile(dialect=dialect))
        for dialect in (sqlite.dialect(), postgresql.dialect())
        for statement in statements
    ]
    return hashlib.sha256("\n".join(ddl).encode()).hexdigest()[:16]


def test_the_runtime_tables_the_migrations_create_are_unchanged() -> None:
    ledger = ledger_tables(MetaData())
    tables = [
        request_ids_table(MetaData()),
        audit_table(MetaData()),
        ledger.transfers,
        ledger.entries,
        migration_tables._ledger_accounts_before_the_books(MetaData()),
    ]
    changed = [table.name for table in tables if _fingerprint(table) != PINNED[table.name]]
    assert not changed, (
        f"{', '.join(changed)}: the services' migrations create these from their runtime definitions, "
        "so a change would rewrite those migrations. Pin the old definition in runtime/migration_tables.py "
        "for them, change the table in a new migration of each service that has it, then update PINNED."
    )
