"""The audit trail of operator actions, kept the same way by every service.

Each service's database has an `audit_records` table (`audit_table`). An operator RPC wraps the
work that applies its action in `AuditLog.audited`, which writes the record (who, when, what, the
request id) in that work's own transaction, the request-id store's: the action and its record commit
together or not at all. So every action that happened has its record, a refused request leaves none,
and a replayed request id adds none (its work does not run again). Operators read the trail through
each service's ListAuditRecords RPC, newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from giftcoin.common.v1 import common_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import BigInteger, Column, Connection, Integer, MetaData, Row, String, Table, Text, insert, select

from services.runtime.auth import current_caller
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.pagination import CursorValue, decode_page_token, encode_page_token
from services.runtime.tables import UtcDateTime
from services.runtime.timestamps import to_timestamp
from services.runtime.validation import Validator, clamp_page_size

M = TypeVar("M", bound=Message)

_LISTING = "audit_records"


def audit_table(metadata: MetaData) -> Table:
    """One row per operator action; `sequence` orders a service's actions."""
    return Table(
        "audit_records",
        metadata,
        Column("sequence", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("actor", String(160), nullable=False),
        Column("action", String(64), nullable=False),
        Column("target", String(400), nullable=False),
        Column("request_id", String(64), nullable=False),
        Column("request_json", Text(), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
    )


class AuditLog:
    """A service's audit trail: written inside operator actions, read by operators."""

    def __init__(self, db: Database, table: Table, clock: Clock) -> None:
        self.db = db
        self.table = table
        self.clock = clock

    def audited(
        self, action: str, request: Message, target: str, work: Callable[[Connection], M]
    ) -> Callable[[Connection], M]:
        """`work`, recording the calling operator's `action` on `target` in its transaction once it succeeds."""
        values = {
            "actor": current_caller().subject,
            "action": action,
            "target": target,
            "request_id": getattr(request, "request_id"),  # noqa: B009 (operator actions mutate: they have one)
            "request_json": json_format.MessageToJson(
                request, preserving_proto_field_name=True, sort_keys=True, indent=None
            ),
        }

        def run(conn: Connection) -> M:
            response = work(conn)
            conn.execute(insert(self.table).values(**values, created_at=self.clock.now()))
            return response

        return run

    def page(self, page_size: int, page_token: str) -> tuple[list[common_pb2.AuditRecord], str]:
        """One page of the trail, newest first, and the next page's token ("" on the last)."""
        v = Validator()
        v.page_size(page_size)
        v.check()
        cursor = decode_page_token(page_token, _LISTING, {"before": CursorValue.POSITION})
        size = clamp_page_size(page_size)
        t = self.table
        query = select(t).order_by(t.c.sequence.desc()).limit(size + 1)
        if cursor is not None:
            query = query.where(t.c.sequence < cursor["before"])
        with self.db.transaction() as conn:
            rows = conn.execute(query).all()
        token = encode_page_token(_LISTING, {"before": rows[size - 1].sequence}) if len(rows) > size else ""
        return [_record(r) for r in rows[:size]], token


def _record(row: Row[Any]) -> common_pb2.AuditRecord:
    return common_pb2.AuditRecord(
        sequence=row.sequence,
        actor=row.actor,
        action=row.action,
        target=row.target,
        request_id=row.request_id,
        request_json=row.request_json,
        create_time=to_timestamp(row.created_at),
    )
