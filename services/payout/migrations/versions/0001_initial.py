"""The payout database: request ids, the ledger, creators, diamond credits, payouts, sandbox payments.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
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

_IN_FLIGHT = "state IN ('requested', 'processing')"


def upgrade() -> None:
    create_request_ids_table()
    create_ledger_tables()

    op.create_table(
        "creators",
        sa.Column("creator_id", sa.String(128), primary_key=True),
        sa.Column("date_of_birth", sa.Date(), nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("gifting_enabled", sa.Boolean(), nullable=False),
        sa.Column("kyc_status", sa.String(16), nullable=False),
        sa.Column("destination_kind", sa.String(16), nullable=True),
        sa.Column("destination_reference", sa.String(256), nullable=True),
        sa.Column("destination_currency", sa.String(3), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("kyc_status IN ('unverified', 'verified', 'rejected')", name="ck_creators_kyc_status"),
    )

    op.create_table(
        "diamond_credits",
        sa.Column("credit_id", sa.String(64), primary_key=True),
        sa.Column("gift_id", sa.String(128), nullable=False),
        sa.Column("creator_id", sa.String(128), sa.ForeignKey("creators.creator_id"), nullable=False),
        sa.Column("diamonds", sa.BigInteger(), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("promotional_coins", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("diamonds >= 0", name="ck_diamond_credits_diamonds_not_negative"),
        sa.CheckConstraint("promotional_coins >= 0 AND promotional_coins <= coins", name="ck_diamond_credits_coins"),
    )
    # One credit per gift, ever.
    op.create_index("ux_diamond_credits_gift_id", "diamond_credits", ["gift_id"], unique=True)

    op.create_table(
        "payouts",
        sa.Column("payout_id", sa.String(64), primary_key=True),
        sa.Column("creator_id", sa.String(128), sa.ForeignKey("creators.creator_id"), nullable=False),
        sa.Column("diamonds", sa.BigInteger(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("destination_kind", sa.String(16), nullable=False),
        sa.Column("destination_reference", sa.String(256), nullable=False),
        sa.Column("destination_currency", sa.String(3), nullable=False),
        sa.Column("provider_reference", sa.String(128), nullable=False),
        sa.Column("failure_reason", sa.String(256), nullable=False),
        sa.Column("submissions", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('requested', 'processing', 'paid', 'failed')", name="ck_payouts_state"),
        sa.CheckConstraint("diamonds > 0 AND net > 0 AND fee >= 0 AND gross = fee + net", name="ck_payouts_amounts"),
    )
    # At most one payout in flight per creator.
    op.create_index(
        "ux_payouts_one_in_flight_per_creator",
        "payouts",
        ["creator_id"],
        unique=True,
        sqlite_where=sa.text(_IN_FLIGHT),
        postgresql_where=sa.text(_IN_FLIGHT),
    )
    op.create_index("ix_payouts_creator_created", "payouts", ["creator_id", "created_at", "payout_id"])
    op.create_index("ix_payouts_state_created", "payouts", ["state", "created_at"])

    op.create_table(
        "sandbox_payments",
        sa.Column("idempotency_key", sa.String(64), primary_key=True),
        sa.Column("provider_reference", sa.String(64), nullable=False, unique=True),
        sa.Column("beneficiary", sa.String(128), nullable=False),
        sa.Column("destination_reference", sa.String(256), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.String(256), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("settle_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="ck_sandbox_payments_amount_positive"),
    )


def downgrade() -> None:
    for table in (
        "sandbox_payments",
        "payouts",
        "diamond_credits",
        "creators",
        "ledger_entries",
        "ledger_transfers",
        "ledger_accounts",
        "request_ids",
    ):
        op.drop_table(table)
