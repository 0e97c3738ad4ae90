"""The audit trail of operator actions, and the indexes of operators' and the reconciler's listings of
gift transfers (all of them, and the failed ones alone).

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

FAILED_ONLY = sa.text("state = 'failed'")


def upgrade() -> None:
    create_audit_table()
    op.create_index("ix_gift_transfers_created", "gift_transfers", ["created_at", "transfer_id"])
    op.create_index(
        "ix_gift_transfers_failed",
        "gift_transfers",
        ["created_at", "transfer_id"],
        postgresql_where=FAILED_ONLY,
        sqlite_where=FAILED_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_gift_transfers_failed", table_name="gift_transfers")
    op.drop_index("ix_gift_transfers_created", table_name="gift_transfers")
    op.drop_table("audit_records")
