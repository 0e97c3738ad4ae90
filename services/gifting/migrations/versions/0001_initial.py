"""The gifting database: request ids, the gift catalogue, gift transfers, daily spending, the live feed.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.migration_tables import create_request_ids_table
from services.runtime.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_request_ids_table()

    op.create_table(
        "gifts",
        sa.Column("gift_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('active', 'retired')", name="ck_gifts_state"),
    )
    op.create_table(
        "gift_versions",
        sa.Column("gift_id", sa.String(128), sa.ForeignKey("gifts.gift_id"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("coin_price", sa.BigInteger(), nullable=False),
        sa.Column("diamonds", sa.BigInteger(), nullable=True),
        sa.Column("share_bps", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("gift_id", "version", name="pk_gift_versions"),
        sa.CheckConstraint("coin_price > 0", name="ck_gift_versions_price_positive"),
        sa.CheckConstraint(
            "diamonds IS NULL OR (diamonds >= 0 AND diamonds <= coin_price)", name="ck_gift_versions_diamonds"
        ),
        sa.CheckConstraint("share_bps >= 0 AND share_bps <= 10000", name="ck_gift_versions_share"),
    )

    op.create_table(
        "gift_transfers",
        sa.Column("transfer_id", sa.String(64), primary_key=True),
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("recipient_id", sa.String(128), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(128), nullable=False),
        sa.Column("gift_id", sa.String(128), nullable=False),
        sa.Column("gift_version", sa.BigInteger(), nullable=False),
        sa.Column("gift_name", sa.String(256), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_coin_price", sa.BigInteger(), nullable=False),
        sa.Column("total_coins", sa.BigInteger(), nullable=False),
        sa.Column("total_diamonds", sa.BigInteger(), nullable=False),
        sa.Column("promotional_coins", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.String(64), nullable=False),
        sa.Column("failure_error", sa.Text(), nullable=True),
        sa.Column("hold_expire_at", UtcDateTime(), nullable=True),
        sa.Column("spend_day", sa.Date(), nullable=False),
        sa.Column("trace_context", sa.Text(), nullable=False),
        sa.Column("lease_owner", sa.String(32), nullable=False),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("completed_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("sender_id", "request_id", name="ux_gift_transfers_sender_request"),
        sa.CheckConstraint("state IN ('pending', 'completed', 'failed')", name="ck_gift_transfers_state"),
        sa.CheckConstraint(
            "step IN ('recorded', 'held', 'crediting', 'credited', 'failing', 'completed', 'failed')",
            name="ck_gift_transfers_step",
        ),
        sa.CheckConstraint(
            "quantity > 0 AND unit_coin_price > 0 AND total_coins = quantity * unit_coin_price",
            name="ck_gift_transfers_coins",
        ),
        sa.CheckConstraint("total_diamonds >= 0 AND total_diamonds <= total_coins", name="ck_gift_transfers_diamonds"),
        sa.CheckConstraint("sender_id <> recipient_id", name="ck_gift_transfers_not_self"),
    )
    op.create_index("ix_gift_transfers_sender", "gift_transfers", ["sender_id", "created_at", "transfer_id"])
    op.create_index(
        "ix_gift_transfers_recipient", "gift_transfers", ["recipient_id", "state", "created_at", "transfer_id"]
    )
    op.create_index("ix_gift_transfers_target", "gift_transfers", ["target_kind", "target_id", "state"])
    op.create_index("ix_gift_transfers_completed", "gift_transfers", ["state", "completed_at"])
    op.create_index("ix_gift_transfers_unfinished", "gift_transfers", ["state", "lease_until"])

    op.create_table(
        "daily_spending",
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender_id", "day", name="pk_daily_spending"),
        sa.CheckConstraint("coins >= 0", name="ck_daily_spending_non_negative"),
    )

    op.create_table(
        "feed_counters",
        sa.Column("target_key", sa.String(160), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "feed_events",
        sa.Column("target_key", sa.String(160), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.String(64), sa.ForeignKey("gift_transfers.transfer_id"), nullable=False),
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("gift_id", sa.String(128), nullable=False),
        sa.Column("combo_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("target_key", "sequence", name="pk_feed_events"),
        sa.UniqueConstraint("transfer_id", name="ux_feed_events_transfer"),
        sa.CheckConstraint("sequence > 0 AND combo_count > 0", name="ck_feed_events_positive"),
    )


def downgrade() -> None:
    for table in ("feed_events", "feed_counters", "daily_spending", "gift_transfers", "gift_versions", "gifts"):
        op.drop_table(table)
    op.drop_index("ix_request_ids_created_at", table_name="request_ids")
    op.drop_table("request_ids")
