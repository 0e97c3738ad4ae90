"""Initial schema: wallets, purchases and refunds, promotions and claims, holds, history, ledger, request ids.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.runtime.migration_tables import create_ledger_tables, create_request_ids_table
from services.runtime.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_ledger_tables()
    op.create_table(
        "promotions",
        sa.Column("promotion_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("coins_per_claim", sa.BigInteger(), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=False),
        sa.Column("end_time", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("coins_per_claim > 0 AND budget >= coins_per_claim", name="ck_promotions_amounts"),
        sa.CheckConstraint("start_time < end_time", name="ck_promotions_window"),
        sa.PrimaryKeyConstraint("promotion_id"),
    )
    create_request_ids_table()
    op.create_table(
        "wallets",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("date_of_birth", sa.Date(), nullable=False),
        sa.Column("country_code", sa.String(length=2), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(length=64), nullable=False),
        sa.Column("gift_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("promotional_amount", sa.BigInteger(), nullable=False),
        sa.Column("debt_added", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('held', 'captured', 'released', 'expired')", name="ck_holds_state"),
        sa.CheckConstraint("amount > 0", name="ck_holds_amount_positive"),
        sa.CheckConstraint("debt_added >= 0 AND debt_added <= amount", name="ck_holds_debt_added"),
        sa.CheckConstraint(
            "promotional_amount >= 0 AND promotional_amount <= amount", name="ck_holds_promotional_part"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["wallets.user_id"]),
        sa.PrimaryKeyConstraint("hold_id"),
        sa.UniqueConstraint("gift_id", name="uq_holds_gift_id"),
    )
    op.create_index("ix_holds_state_expire_time", "holds", ["state", "expire_time"])
    op.create_table(
        "promotion_claims",
        sa.Column("promotion_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["promotion_id"], ["promotions.promotion_id"]),
        sa.ForeignKeyConstraint(["user_id"], ["wallets.user_id"]),
        sa.PrimaryKeyConstraint("promotion_id", "user_id"),
    )
    op.create_table(
        "purchases",
        sa.Column("purchase_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("package_id", sa.String(length=128), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency_code", sa.String(length=3), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("store_transaction_id", sa.String(length=256), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("coins > 0", name="ck_purchases_coins_positive"),
        sa.CheckConstraint("price_minor >= 0", name="ck_purchases_price_non_negative"),
        sa.ForeignKeyConstraint(["user_id"], ["wallets.user_id"]),
        sa.PrimaryKeyConstraint("purchase_id"),
        sa.UniqueConstraint("store", "store_transaction_id", name="uq_purchases_store_transaction"),
    )
    op.create_index("ix_purchases_user_id", "purchases", ["user_id"])
    op.create_table(
        "wallet_transfers",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("transfer_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["transfer_id"], ["ledger_transfers.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["wallets.user_id"]),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_wallet_transfers_user_seq", "wallet_transfers", ["user_id", "seq"])
    op.create_table(
        "purchase_refunds",
        sa.Column("purchase_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("coins_reclaimed", sa.BigInteger(), nullable=False),
        sa.Column("debt_added", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('refund', 'chargeback')", name="ck_purchase_refunds_kind"),
        sa.CheckConstraint("coins_reclaimed >= 0 AND debt_added >= 0", name="ck_purchase_refunds_non_negative"),
        sa.ForeignKeyConstraint(["purchase_id"], ["purchases.purchase_id"]),
        sa.PrimaryKeyConstraint("purchase_id"),
    )


def downgrade() -> None:
    op.drop_table("purchase_refunds")
    op.drop_table("wallet_transfers")
    op.drop_table("purchases")
    op.drop_table("promotion_claims")
    op.drop_table("ledger_entries")
    op.drop_table("holds")
    op.drop_table("wallets")
    op.drop_table("request_ids")
    op.drop_table("promotions")
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_accounts")
