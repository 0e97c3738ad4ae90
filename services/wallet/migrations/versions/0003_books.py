"""The books: platform accounts keep no stored balance (NULL: theirs is the sum of their entries), the
audit trail of operator actions, and the indexes that operators' and the reconciler's reads use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.migration_tables import create_audit_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PLATFORM_BALANCE_NOT_STORED = (
    "(platform AND balance IS NULL) OR (NOT platform AND balance IS NOT NULL AND balance >= 0)"
)


def upgrade() -> None:
    with op.batch_alter_table("ledger_accounts") as table:
        table.alter_column("balance", existing_type=sa.BigInteger(), nullable=True)
    op.execute(sa.text("UPDATE ledger_accounts SET balance = NULL WHERE platform"))
    with op.batch_alter_table("ledger_accounts") as table:
        table.drop_constraint("ck_ledger_accounts_non_negative", type_="check")
        table.create_check_constraint("ck_ledger_accounts_balance", PLATFORM_BALANCE_NOT_STORED)
    create_audit_table()
    op.create_index("ix_holds_created", "holds", ["created_at", "hold_id"])
    op.create_index("ix_purchases_created_at", "purchases", ["created_at"])
    op.create_index("ix_purchase_refunds_created_at", "purchase_refunds", ["created_at"])
    op.create_index("ix_promotion_claims_created_at", "promotion_claims", ["created_at"])
    op.create_index("ix_purchase_reinstatements_created_at", "purchase_reinstatements", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_purchase_reinstatements_created_at", table_name="purchase_reinstatements")
    op.drop_index("ix_promotion_claims_created_at", table_name="promotion_claims")
    op.drop_index("ix_purchase_refunds_created_at", table_name="purchase_refunds")
    op.drop_index("ix_purchases_created_at", table_name="purchases")
    op.drop_index("ix_holds_created", table_name="holds")
    op.drop_table("audit_records")
    with op.batch_alter_table("ledger_accounts") as table:
        table.drop_constraint("ck_ledger_accounts_balance", type_="check")
    op.execute(sa.text("UPDATE ledger_accounts SET balance = 0 WHERE platform"))
    with op.batch_alter_table("ledger_accounts") as table:
        table.alter_column("balance", existing_type=sa.BigInteger(), nullable=False)
        table.create_check_constraint("ck_ledger_accounts_non_negative", "platform OR balance >= 0")
