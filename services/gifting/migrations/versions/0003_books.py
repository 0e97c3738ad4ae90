"""The audit trail of operator actions, and the indexes of operators' and the reconciler's listings of
gift transfers (all of them, and the failed ones alone).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FAILED_ONLY = sa.text("state = 'failed'")


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=400), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
    )
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
