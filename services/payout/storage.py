"""The payout service's database: tables (SQLAlchemy Core), repositories and the unit of work.

Uniqueness that money depends on is a constraint here, not a read before a write:
- one credit per gift: UNIQUE(diamond_credits.gift_id);
- at most one payout in flight per creator: a partial unique index on payouts(creator_id) over the
  states requested and processing (SQLite and PostgreSQL both support partial indexes);
- each payout's ledger transfers have ids derived from the payout id (primary key of ledger_transfers),
  so a payout's diamonds are taken, paid or returned at most once.

The domain calls the `UnitOfWork` (one transaction) and gets model records or plain values back: a read
queued in the transaction's pipeline comes back as a function that returns its answer, and a record
added twice where the database holds it once raises model.Duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.payout.model import (
    DIAMONDS_ISSUED,
    GIFT_BOOKINGS,
    IN_FLIGHT,
    PLATFORM_SHARE,
    BookedCreditRecord,
    CreatorRecord,
    CreditRecord,
    CreditTotals,
    DiamondEntry,
    Duplicate,
    PayoutRecord,
    PayoutTotalsRow,
    creator_diamonds,
    creator_diamonds_in_payout,
)
from services.runtime.audit import audit_table
from services.runtime.db import Selection, after_keys, insert_rows, keys_in, selected
from services.runtime.ledger import Ledger, ledger_tables
from services.runtime.pipeline import pipeline
from services.runtime.tables import UtcDateTime, request_ids_table

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The in-flight states (model.IN_FLIGHT) hold the creator's single in-flight slot.
_IN_FLIGHT_SQL = "state IN ('requested', 'processing')"

metadata = MetaData()
request_ids = request_ids_table(metadata)
ledger = ledger_tables(metadata)
audit_records = audit_table(metadata)

creators = Table(
    "creators",
    metadata,
    Column("creator_id", String(128), primary_key=True),
    Column("date_of_birth", Date(), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("gifting_enabled", Boolean(), nullable=False),
    Column("kyc_status", String(16), nullable=False),
    Column("destination_kind", String(16), nullable=True),
    Column("destination_reference", String(256), nullable=True),
    Column("destination_currency", String(3), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint("kyc_status IN ('unverified', 'verified', 'rejected')", name="ck_creators_kyc_status"),
    Index("ix_creators_kyc_status", "kyc_status", "creator_id"),  # operators' creators by KYC status
)

diamond_credits = Table(
    "diamond_credits",
    metadata,
    Column("credit_id", String(64), primary_key=True),
    Column("gift_id", String(128), nullable=False),
    Column("creator_id", String(128), ForeignKey("creators.creator_id"), nullable=False),
    Column("diamonds", BigInteger(), nullable=False),
    Column("coins", BigInteger(), nullable=False),
    Column("promotional_coins", BigInteger(), nullable=False),
    Column("transfer_id", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint("diamonds >= 0", name="ck_diamond_credits_diamonds_not_negative"),
    CheckConstraint("promotional_coins >= 0 AND promotional_coins <= coins", name="ck_diamond_credits_coins"),
    Index("ux_diamond_credits_gift_id", "gift_id", unique=True),
    # The reconciler's listing of a window's credits, in (create time, id) order.
    Index("ix_diamond_credits_created", "created_at", "credit_id"),
)

payouts = Table(
    "payouts",
    metadata,
    Column("payout_id", String(64), primary_key=True),
    Column("creator_id", String(128), ForeignKey("creators.creator_id"), nullable=False),
    Column("diamonds", BigInteger(), nullable=False),
    Column("gross", BigInteger(), nullable=False),
    Column("fee", BigInteger(), nullable=False),
    Column("net", BigInteger(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("state", String(16), nullable=False),
    Column("destination_kind", String(16), nullable=False),
    Column("destination_reference", String(256), nullable=False),
    Column("destination_currency", String(3), nullable=False),
    Column("provider_reference", String(128), nullable=False),
    Column("failure_reason", String(256), nullable=False),
    Column("submissions", Integer(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint("state IN ('requested', 'processing', 'paid', 'failed')", name="ck_payouts_state"),
    CheckConstraint("diamonds > 0 AND net > 0 AND fee >= 0 AND gross = fee + net", name="ck_payouts_amounts"),
    Index(
        "ux_payouts_one_in_flight_per_creator",
        "creator_id",
        unique=True,
        sqlite_where=text(_IN_FLIGHT_SQL),
        postgresql_where=text(_IN_FLIGHT_SQL),
    ),
    Index("ix_payouts_creator_created", "creator_id", "created_at", "payout_id"),
    Index("ix_payouts_state_created", "state", "created_at"),
)

# The sandbox provider's own records: the provider's side of each payment, keyed by the idempotency
# key the payout service sends (the payout id). Written only by provider.SandboxProvider.
sandbox_payments = Table(
    "sandbox_payments",
    metadata,
    Column("idempotency_key", String(64), primary_key=True),
    Column("provider_reference", String(64), nullable=False, unique=True),
    Column("beneficiary", String(128), nullable=False),
    Column("destination_reference", String(256), nullable=False),
    Column("amount_minor", BigInteger(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("state", String(16), nullable=False),  # pending | paid | failed
    Column("failure_reason", String(256), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("settle_at", UtcDateTime(), nullable=False),
    CheckConstraint("amount_minor > 0", name="ck_sandbox_payments_amount_positive"),
)


def _record(cls: Any, row: Any) -> Any:
    return cls(**row._asdict())


# --- repositories ----------------------------------------------------------------------------------


# The statements every gift's credit runs, built once with bound parameters (building a statement
# costs more than executing it).
_CREATOR = select(creators).where(creators.c.creator_id == bindparam("creator_key"))
_CREATOR_LOCKED = _CREATOR.with_for_update()
_CREATORS = select(creators).where(keys_in(creators.c.creator_id, "creator_keys"))
_CREDITS_BY_GIFT = select(diamond_credits).where(keys_in(diamond_credits.c.gift_id, "credit_gift_ids"))


class CreatorRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, record: CreatorRecord) -> None:
        """Raises Duplicate if the creator exists (the primary key); the transaction is then to be
        abandoned: no savepoint is taken."""
        try:
            self.conn.execute(insert(creators).values(**record.__dict__))
        except IntegrityError as exc:
            raise Duplicate(record.creator_id) from exc

    def get(self, creator_id: str, for_update: bool = False) -> CreatorRecord | None:
        """`for_update` locks the row to the end of the transaction (SQLite's transactions are serial anyway)."""
        row = self.conn.execute(_CREATOR_LOCKED if for_update else _CREATOR, {"creator_key": creator_id}).one_or_none()
        return None if row is None else _record(CreatorRecord, row)

    def get_many(self, creator_ids: Collection[str]) -> Callable[[], dict[str, CreatorRecord]]:
        """The creators among `creator_ids`, by id (unknown ids are left out): one query, sent now in the
        transaction's pipeline, its answer read when the returned function is called."""
        return (
            pipeline(self.conn)
            .send_as(
                _CREATORS,
                {"creator_keys": sorted(creator_ids)},
                lambda rows: {row.creator_id: _record(CreatorRecord, row) for row in rows},
            )
            .get
        )

    def update(self, creator_id: str, **values: object) -> None:
        self.conn.execute(update(creators).where(creators.c.creator_id == creator_id).values(**values))

    def page(self, kyc_status: str | None, after: str | None, limit: int) -> list[CreatorRecord]:
        """Creators by id (with `kyc_status`, when given), after the id `after`."""
        query = select(creators)
        if kyc_status is not None:
            query = query.where(creators.c.kyc_status == kyc_status)
        if after is not None:
            query = query.where(creators.c.creator_id > after)
        rows = self.conn.execute(query.order_by(creators.c.creator_id).limit(limit))
        return [_record(CreatorRecord, r) for r in rows]


class CreditRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add_new(self, records: Sequence[CreditRecord]) -> None:
        """Insert credits in one statement, sent in the transaction's pipeline; a gift credited already
        fails the transaction (UNIQUE gift_id).

        In gift id order, so that concurrent batches crediting the same gifts wait on each other in
        one order rather than deadlock.
        """
        rows = [dict(r.__dict__) for r in sorted(records, key=lambda r: r.gift_id)]
        insert_rows(self.conn, diamond_credits, rows)

    def by_gifts(self, gift_ids: Collection[str]) -> Callable[[], dict[str, CreditRecord]]:
        """The credits of the gifts among `gift_ids` that were credited, by gift id: one query, sent now in
        the transaction's pipeline, its answer read when the returned function is called."""
        return (
            pipeline(self.conn)
            .send_as(
                _CREDITS_BY_GIFT,
                {"credit_gift_ids": sorted(gift_ids)},
                lambda rows: {row.gift_id: _record(CreditRecord, row) for row in rows},
            )
            .get
        )

    def booked(
        self,
        limit: int,
        start: datetime | None = None,
        end: datetime | None = None,
        gift_ids: tuple[str, ...] = (),
        after: tuple[datetime, str] | None = None,
    ) -> list[BookedCreditRecord]:
        """Credits by (created_at, credit_id), made in [start, end) or of the gifts `gift_ids`, after the
        (created_at, credit_id) `after`, each with what the ledger booked for its gift."""
        c = diamond_credits
        selection = Selection(start, end, gift_ids, after)
        statement = selected(select(c), c.c.created_at, c.c.credit_id, c.c.gift_id, selection, limit)
        rows = self.conn.execute(statement).all()
        booked = self._booked([r.gift_id for r in rows])
        return [BookedCreditRecord(_record(CreditRecord, r), *booked.get(r.gift_id, (0, 0, 0))) for r in rows]

    def _booked(self, gift_ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """Per gift, over the ledger transfers that name it: the diamonds issued to its creator, the
        platform's share of its coins, and how many of the transfers moved diamonds."""
        if not gift_ids:
            return {}
        t, e = ledger.transfers, ledger.entries
        issued = e.c.account == DIAMONDS_ISSUED
        rows = self.conn.execute(
            select(
                t.c.reference,
                func.coalesce(func.sum(case((issued, -e.c.amount), else_=0)), 0).label("diamonds"),
                func.coalesce(func.sum(case((e.c.account == PLATFORM_SHARE, e.c.amount), else_=0)), 0).label("share"),
                func.count(func.distinct(case((issued, e.c.transfer_id)))).label("transfers"),
            )
            .select_from(t.join(e, e.c.transfer_id == t.c.id))
            .where(and_(t.c.reference.in_(gift_ids), t.c.kind.in_(GIFT_BOOKINGS)))
            .group_by(t.c.reference)
        )
        return {r.reference: (int(r.diamonds), int(r.share), int(r.transfers)) for r in rows}

    def window_totals(self, start: datetime, end: datetime) -> CreditTotals:
        """Credits made in [start, end)."""
        c = diamond_credits
        row = self.conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(c.c.diamonds), 0),
                func.coalesce(func.sum(c.c.coins), 0),
                func.coalesce(func.sum(c.c.promotional_coins), 0),
                func.coalesce(func.sum(c.c.coins - c.c.diamonds), 0),
            ).where(and_(c.c.created_at >= start, c.c.created_at < end))
        ).one()
        return CreditTotals(*(int(x) for x in row))


class PayoutRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, record: PayoutRecord) -> None:
        """Raises Duplicate if the creator has a payout in flight (the partial unique index), in a
        savepoint: the transaction goes on."""
        try:
            with self.conn.begin_nested():
                self.conn.execute(insert(payouts).values(**record.__dict__))
        except IntegrityError as exc:
            raise Duplicate(record.creator_id) from exc

    def get(self, payout_id: str) -> PayoutRecord | None:
        row = self.conn.execute(select(payouts).where(payouts.c.payout_id == payout_id)).one_or_none()
        return None if row is None else _record(PayoutRecord, row)

    def count_in_flight(self) -> int:
        """Payouts requested or processing: what payout's metrics report."""
        return int(self.conn.execute(select(func.count()).where(payouts.c.state.in_(IN_FLIGHT))).scalar_one())

    def in_flight(self, creator_id: str) -> str | None:
        """The id of the creator's payout that is requested or processing, if any."""
        return self.conn.execute(
            select(payouts.c.payout_id).where(payouts.c.creator_id == creator_id, payouts.c.state.in_(IN_FLIGHT))
        ).scalar_one_or_none()

    def transition(self, payout_id: str, from_state: str, **values: object) -> bool:
        """Move a payout out of `from_state`; False if it was not in it (another worker moved it)."""
        result = self.conn.execute(
            update(payouts)
            .where(and_(payouts.c.payout_id == payout_id, payouts.c.state == from_state))
            .values(**values)
        )
        return result.rowcount == 1

    def set_provider_reference(self, payout_id: str, reference: str, now: datetime) -> None:
        self.conn.execute(
            update(payouts)
            .where(and_(payouts.c.payout_id == payout_id, payouts.c.provider_reference == ""))
            .values(provider_reference=reference, updated_at=now)
        )

    def ids_in_state(self, state: str, limit: int) -> list[str]:
        rows = self.conn.execute(
            select(payouts.c.payout_id)
            .where(payouts.c.state == state)
            .order_by(payouts.c.created_at, payouts.c.payout_id)
            .limit(limit)
        )
        return [r.payout_id for r in rows]

    def net_total(self, creator_id: str, states: Sequence[str], currency: str, since: datetime | None = None) -> int:
        query = select(func.coalesce(func.sum(payouts.c.net), 0)).where(
            payouts.c.creator_id == creator_id, payouts.c.state.in_(states), payouts.c.currency == currency
        )
        if since is not None:
            query = query.where(payouts.c.created_at >= since)
        return int(self.conn.execute(query).scalar_one())

    def by_states(self, states: Sequence[str], after: tuple[datetime, str] | None, limit: int) -> list[PayoutRecord]:
        """Every creator's payouts in `states` (all, if none), oldest first, after the (created_at,
        payout_id) `after`."""
        query = select(payouts)
        if states:
            query = query.where(payouts.c.state.in_(states))
        if after is not None:
            query = query.where(after_keys([payouts.c.created_at, payouts.c.payout_id], after))
        rows = self.conn.execute(query.order_by(payouts.c.created_at, payouts.c.payout_id).limit(limit))
        return [_record(PayoutRecord, r) for r in rows]

    def window_totals(self, start: datetime, end: datetime) -> list[PayoutTotalsRow]:
        """Payouts requested in [start, end), by state and currency."""
        p = payouts
        rows = self.conn.execute(
            select(
                p.c.state,
                p.c.currency,
                func.count().label("payouts"),
                func.sum(p.c.diamonds).label("diamonds"),
                func.sum(p.c.gross).label("gross"),
                func.sum(p.c.fee).label("fee"),
                func.sum(p.c.net).label("net"),
            )
            .where(and_(p.c.created_at >= start, p.c.created_at < end))
            .group_by(p.c.state, p.c.currency)
            .order_by(p.c.state, p.c.currency)
        )
        return [
            PayoutTotalsRow(r.state, r.currency, *(int(x) for x in (r.payouts, r.diamonds, r.gross, r.fee, r.net)))
            for r in rows
        ]

    def page(self, creator_id: str, size: int, before: tuple[datetime, str] | None) -> list[PayoutRecord]:
        """Newest first; `before` is the (created_at, payout_id) of the last payout already listed."""
        query = select(payouts).where(payouts.c.creator_id == creator_id)
        if before is not None:
            at, payout_id = before
            query = query.where(
                or_(payouts.c.created_at < at, and_(payouts.c.created_at == at, payouts.c.payout_id < payout_id))
            )
        rows = self.conn.execute(query.order_by(payouts.c.created_at.desc(), payouts.c.payout_id.desc()).limit(size))
        return [_record(PayoutRecord, r) for r in rows]


class DiamondHistory:
    """A creator's diamond movements, read from the ledger entries of their diamond account."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def page(self, creator_id: str, size: int, before_entry_id: int | None) -> list[DiamondEntry]:
        e, t = ledger.entries, ledger.transfers
        query = (
            select(
                e.c.id.label("entry_id"),
                e.c.transfer_id,
                t.c.kind,
                t.c.reference,
                e.c.amount,
                e.c.created_at,
            )
            .join(t, t.c.id == e.c.transfer_id)
            .where(e.c.account == creator_diamonds(creator_id))
        )
        if before_entry_id is not None:
            query = query.where(e.c.id < before_entry_id)
        rows = self.conn.execute(query.order_by(e.c.id.desc()).limit(size))
        return [_record(DiamondEntry, r) for r in rows]


class DiamondAccounts:
    """The creators' diamond accounts, summed."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def held(self, creator_ids: Collection[str]) -> Callable[[], dict[str, int]]:
        """Each creator's diamonds, on the balance and in payouts (not locked): the balances are read in
        the transaction's pipeline, their sums when the returned function is called."""
        accounts = {c: (creator_diamonds(c), creator_diamonds_in_payout(c)) for c in creator_ids}
        return (
            self.ledger.balances_later([code for pair in accounts.values() for code in pair])
            .then(lambda b: {c: b[held] + b[paying] for c, (held, paying) in accounts.items()})
            .get
        )

    def outstanding(self) -> tuple[int, int]:
        """Now: the diamonds on every creator's balance, and in their payouts in flight, summed from the
        holder accounts' stored balances (one pass over the accounts; no entry is read)."""
        a = ledger.accounts
        in_payout = a.c.code.endswith(":diamonds_in_payout", autoescape=True)
        row = self.ledger.conn.execute(
            select(
                func.coalesce(func.sum(case((in_payout, 0), else_=a.c.balance)), 0),
                func.coalesce(func.sum(case((in_payout, a.c.balance), else_=0)), 0),
            ).where(and_(a.c.platform.is_(False), a.c.code.startswith("creator:", autoescape=True)))
        ).one()
        return int(row[0]), int(row[1])


class UnitOfWork:
    """Everything one database transaction of the payout service touches."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.creators = CreatorRepository(conn)
        self.credits = CreditRepository(conn)
        self.payouts = PayoutRepository(conn)
        self.history = DiamondHistory(conn)
        self.ledger = Ledger(ledger, conn)
        self.diamonds = DiamondAccounts(self.ledger)
