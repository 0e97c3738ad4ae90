"""Gift transfers carry their credit deadline; recovery's index holds the pending transfers only.

The saga no longer writes a decision to credit between the hold and the credit: payout refuses a
credit asked after the gift's deadline, recorded here with the gift. The index of completed
transfers by completion time served no query (leaderboards read by target or by recipient).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING_ONLY = sa.text("state = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("gift_transfers") as table:
        table.add_column(sa.Column("credit_deadline", UtcDateTime(), nullable=True))
    op.drop_index("ix_gift_transfers_completed", table_name="gift_transfers")
    op.drop_index("ix_gift_transfers_unfinished", table_name="gift_transfers")
    op.create_index(
        "ix_gift_transfers_unfinished",
        "gift_transfers",
        ["lease_until", "created_at"],
        postgresql_where=PENDING_ONLY,
        sqlite_where=PENDING_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_gift_transfers_unfinished", table_name="gift_transfers")
    op.create_index("ix_gift_transfers_unfinished", "gift_transfers", ["state", "lease_until"])
    op.create_index("ix_gift_transfers_completed", "gift_transfers", ["state", "completed_at"])
    with op.batch_alter_table("gift_transfers") as table:
        table.drop_column("credit_deadline")
