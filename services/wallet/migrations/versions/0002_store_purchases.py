"""Real stores: the store's other ids of a purchase once each, Play consumption, store notifications once.

App Store purchases credit once by transactionId (purchases.store_transaction_id, unique already) and
by originalTransactionId; Google Play purchases by purchase token and by orderId. A Play purchase is
consumed at the store after it commits (consumed_at). A store notification of a refund, chargeback or
refund reversal applies once, by its id; a reversed refund is recorded once per purchase.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added columns and unique indexes: on SQLite neither rebuilds the table (purchase_refunds refers to it).
    op.add_column("purchases", sa.Column("original_transaction_id", sa.String(length=256), nullable=True))
    op.add_column("purchases", sa.Column("order_id", sa.String(length=256), nullable=True))
    op.add_column("purchases", sa.Column("consumed_at", UtcDateTime(), nullable=True))
    op.create_index("uq_purchases_original_transaction", "purchases", ["store", "original_transaction_id"], unique=True)
    op.create_index("uq_purchases_order", "purchases", ["store", "order_id"], unique=True)
    op.create_table(
        "purchase_reinstatements",
        sa.Column("purchase_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["purchase_id"], ["purchase_refunds.purchase_id"]),
        sa.PrimaryKeyConstraint("purchase_id"),
    )
    op.create_table(
        "store_notifications",
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("notification_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("store_transaction_id", sa.String(length=256), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('refund', 'chargeback', 'reversal')", name="ck_store_notifications_kind"),
        sa.CheckConstraint("outcome IN ('applied', 'unchanged', 'no_purchase')", name="ck_store_notifications_outcome"),
        sa.PrimaryKeyConstraint("store", "notification_id"),
    )
    op.create_index("ix_store_notifications_transaction", "store_notifications", ["store", "store_transaction_id"])


def downgrade() -> None:
    op.drop_index("ix_store_notifications_transaction", table_name="store_notifications")
    op.drop_table("store_notifications")
    op.drop_table("purchase_reinstatements")
    op.drop_index("uq_purchases_order", table_name="purchases")
    op.drop_index("uq_purchases_original_transaction", table_name="purchases")
    with op.batch_alter_table("purchases") as table:
        table.drop_column("consumed_at")
        table.drop_column("order_id")
        table.drop_column("original_transaction_id")
