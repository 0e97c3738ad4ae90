"""Column types and the tables every service's database has (the request-id store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: giftcoin stores aware UTC timestamps only")
        return value.astimezone(UTC) if dialect.name == "postgresql" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def request_ids_table(metadata: MetaData) -> Table:
    """The AIP-155 request-id store: one row per (caller, request id), kept for the retention window."""
    return Table(
        "request_ids",
        metadata,
        Column("caller", String(160), nullable=False),
        Column("request_id", String(64), nullable=False),
        Column("method", String(160), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("state", String(16), nullable=False),  # running | succeeded | failed
        Column("owner", String(32), nullable=False),
        Column("lease_until", UtcDateTime(), nullable=False),
        Column("response", LargeBinary(), nullable=True),
        Column("error", Text(), nullable=True),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("attempts", BigInteger(), nullable=False, default=1),
        PrimaryKeyConstraint("caller", "request_id", name="pk_request_ids"),
        Index("ix_request_ids_created_at", "created_at"),
    )
