"""The runtime's tables in the services' Alembic migrations, built from the runtime's own definitions.

Every service's database has the request-id store (runtime.tables), wallet's and payout's the ledger
(runtime.ledger), and each the audit trail (runtime.audit). Their migrations create those tables from
the definitions their code uses, not from copies column by column.

A migration must mean the same schema forever, so this reuse holds only while a definition stays as
the migrations that create it found it. tests/runtime/test_migration_tables.py pins each definition's
DDL: changing one fails there. To change a runtime table, pin here the definition the older migrations
created (as `_ledger_accounts_before_the_books` is), have them create that one, and change the table
in a new migration of every service that has it.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, MetaData, String, Table

from services.runtime.audit import audit_table
from services.runtime.ledger import ledger_tables
from services.runtime.tables import UtcDateTime, request_ids_table


def create_table(table: Table) -> None:
    """`table` as defined (its columns, constraints in the order declared, and indexes), in this migration."""
    # In the order declared, as SQLAlchemy's CREATE TABLE lists them: the same text every run.
    constraints = sorted(table.constraints, key=lambda constraint: constraint._creation_order)
    op.create_table(table.name, *table.columns, *constraints)
    for index in sorted(table.indexes, key=lambda index: str(index.name)):
        op.create_index(
            str(index.name), table.name, [c.name for c in index.columns], unique=index.unique, **index.kwargs
        )


def create_request_ids_table() -> None:
    create_table(request_ids_table(MetaData()))


def create_audit_table() -> None:
    create_table(audit_table(MetaData()))


def create_ledger_tables() -> None:
    """The ledger as the services' first migrations created it: its accounts as they were before the
    books (wallet 0003 and payout 0002 bring them to runtime.ledger's definition); its transfers and
    entries as runtime.ledger defines them."""
    ledger = ledger_tables(MetaData())
    create_table(_ledger_accounts_before_the_books(MetaData()))
    create_table(ledger.transfers)
    create_table(ledger.entries)


def _ledger_accounts_before_the_books(metadata: MetaData) -> Table:
    """Pinned: ledger_accounts as the first migrations created it (every account storing its balance)."""
    return Table(
        "ledger_accounts",
        metadata,
        Column("code", String(160), primary_key=True),
        Column("unit", String(16), nullable=False),
        Column("platform", Boolean(), nullable=False),
        Column("balance", BigInteger(), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        CheckConstraint("platform OR balance >= 0", name="ck_ledger_accounts_non_negative"),
    )
