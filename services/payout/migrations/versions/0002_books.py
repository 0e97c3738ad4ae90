"""The books: each credit books the platform's share of its gift; platform accounts keep no stored
balance (NULL: theirs is the sum of their entries); the audit trail of operator actions; the indexes
that operators' and the reconciler's reads use.

Credits recorded before this revision booked only their diamonds. Each is given the coin side of its
booking now, as a transfer of its own (`share:<credit id>`, kind gift_share, at the credit's time):
its coins, split into the creators' share and the platform's share, as a credit books them from now on
(services/payout/domain.py). A correction is a new movement: nothing is rewritten.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from services.runtime.migration_tables import create_audit_table
from services.runtime.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PLATFORM_BALANCE_NOT_STORED = (
    "(platform AND balance IS NULL) OR (NOT platform AND balance IS NOT NULL AND balance >= 0)"
)
GIFT_COINS = "platform:gift_coins"
CREATORS_SHARE = "platform:gift_coins:creators_share"
PLATFORM_SHARE = "platform:gift_coins:platform_share"

# Each entry of a credit's coin side: account, amount, and when it is not zero.
SHARE_ENTRIES = (
    (GIFT_COINS, "-coins", "coins <> 0"),
    (CREATORS_SHARE, "diamonds", "diamonds <> 0"),
    (PLATFORM_SHARE, "coins - diamonds", "coins - diamonds <> 0"),
)


def upgrade() -> None:
    with op.batch_alter_table("ledger_accounts") as table:
        table.alter_column("balance", existing_type=sa.BigInteger(), nullable=True)
    op.execute(sa.text("UPDATE ledger_accounts SET balance = NULL WHERE platform"))
    with op.batch_alter_table("ledger_accounts") as table:
        table.drop_constraint("ck_ledger_accounts_non_negative", type_="check")
        table.create_check_constraint("ck_ledger_accounts_balance", PLATFORM_BALANCE_NOT_STORED)
    _book_platform_shares()
    create_audit_table()
    op.create_index("ix_diamond_credits_created", "diamond_credits", ["created_at", "credit_id"])
    op.create_index("ix_creators_kyc_status", "creators", ["kyc_status", "creator_id"])


def _book_platform_shares() -> None:
    """The coin side of every credit recorded so far, one transfer per credit with coins."""
    conn = op.get_bind()
    accounts = sa.table(
        "ledger_accounts",
        sa.column("code", sa.String()),
        sa.column("unit", sa.String()),
        sa.column("platform", sa.Boolean()),
        sa.column("balance", sa.BigInteger()),
        sa.column("created_at", UtcDateTime()),
    )
    codes = [code for code, _, _ in SHARE_ENTRIES]
    existing = {row[0] for row in conn.execute(sa.select(accounts.c.code).where(accounts.c.code.in_(codes)))}
    now = datetime.now(UTC)
    missing = [{"code": c, "unit": "coin", "platform": True, "balance": None, "created_at": now} for c in codes]
    missing = [row for row in missing if row["code"] not in existing]
    if missing:
        op.bulk_insert(accounts, missing)
    op.execute(
        sa.text(
            "INSERT INTO ledger_transfers (id, kind, reference, created_at) "
            "SELECT 'share:' || credit_id, 'gift_share', gift_id, created_at FROM diamond_credits WHERE coins > 0"
        )
    )
    for account, amount, nonzero in SHARE_ENTRIES:
        op.execute(
            sa.text(
                "INSERT INTO ledger_entries (transfer_id, account, unit, amount, created_at) "
                f"SELECT 'share:' || credit_id, '{account}', 'coin', {amount}, created_at "
                f"FROM diamond_credits WHERE coins > 0 AND {nonzero}"
            )
        )


def downgrade() -> None:
    op.drop_index("ix_creators_kyc_status", table_name="creators")
    op.drop_index("ix_diamond_credits_created", table_name="diamond_credits")
    op.drop_table("audit_records")
    with op.batch_alter_table("ledger_accounts") as table:
        table.drop_constraint("ck_ledger_accounts_balance", type_="check")
    op.execute(sa.text("UPDATE ledger_accounts SET balance = 0 WHERE platform"))
    with op.batch_alter_table("ledger_accounts") as table:
        table.alter_column("balance", existing_type=sa.BigInteger(), nullable=False)
        table.create_check_constraint("ck_ledger_accounts_non_negative", "platform OR balance >= 0")
