"""The gifting service's database: tables (SQLAlchemy Core), repositories and the unit of work.

Uniqueness that money depends on is a constraint here, not a read before a write:
- one transfer per send request: UNIQUE(gift_transfers.sender_id, request_id);
- one live-feed event per completed gift, numbered without gaps per target: UNIQUE(feed_events.transfer_id)
  and PRIMARY KEY(target_key, sequence), the sequence taken from a per-target counter row;
- the daily spending limit: one row per sender and UTC day, raised only by a conditional UPDATE that
  keeps it within the limit.

Only one replica drives a gift at a time: a lease (owner, until) on the transfer row, taken and renewed
by conditional UPDATEs, and every saga write is guarded by the owner and the step it leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from services.gifting.model import (
    ACTIVE,
    COMPLETED,
    PENDING,
    FeedEventRecord,
    GiftRecord,
    LeaderRow,
    Numbering,
    Previous,
    TransferRecord,
)
from services.runtime.audit import audit_table
from services.runtime.db import (
    Selection,
    insert_rows,
    insert_unless_conflict,
    keys_in,
    rows_bindparams,
    rows_params,
    rows_source,
    selected,
    update_rows,
    upsert_rows,
)
from services.runtime.pipeline import Later, pipeline
from services.runtime.tables import UtcDateTime, request_ids_table

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")

metadata = MetaData()
request_ids = request_ids_table(metadata)
audit_records = audit_table(metadata)

gifts = Table(
    "gifts",
    metadata,
    Column("gift_id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("state", String(16), nullable=False),
    Column("current_version", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint("state IN ('active', 'retired')", name="ck_gifts_state"),
)

# A price list entry never changes: a new price or diamond amount is a new version.
gift_versions = Table(
    "gift_versions",
    metadata,
    Column("gift_id", String(128), ForeignKey("gifts.gift_id"), nullable=False),
    Column("version", BigInteger(), nullable=False),
    Column("coin_price", BigInteger(), nullable=False),
    # Diamonds per gift; NULL = the default share (share_bps) of each send's coins.
    Column("diamonds", BigInteger(), nullable=True),
    Column("share_bps", Integer(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("gift_id", "version", name="pk_gift_versions"),
    CheckConstraint("coin_price > 0", name="ck_gift_versions_price_positive"),
    CheckConstraint("diamonds IS NULL OR (diamonds >= 0 AND diamonds <= coin_price)", name="ck_gift_versions_diamonds"),
    CheckConstraint("share_bps >= 0 AND share_bps <= 10000", name="ck_gift_versions_share"),
)

gift_transfers = Table(
    "gift_transfers",
    metadata,
    Column("transfer_id", String(64), primary_key=True),
    Column("sender_id", String(128), nullable=False),
    Column("request_id", String(64), nullable=False),
    # What the send request was (runtime.idempotency.fingerprint): the same id with another request is refused.
    Column("fingerprint", String(64), nullable=False),
    Column("recipient_id", String(128), nullable=False),
    Column("target_kind", String(16), nullable=False),
    Column("target_id", String(128), nullable=False),
    Column("gift_id", String(128), nullable=False),
    Column("gift_version", BigInteger(), nullable=False),
    Column("gift_name", String(256), nullable=False),
    Column("quantity", BigInteger(), nullable=False),
    Column("unit_coin_price", BigInteger(), nullable=False),
    Column("total_coins", BigInteger(), nullable=False),
    Column("total_diamonds", BigInteger(), nullable=False),
    # The promotional part of total_coins, as wallet's hold reports it (payout's ledger needs it).
    Column("promotional_coins", BigInteger(), nullable=True),
    # Payout credits nothing for the gift asked after this (NULL: recorded by an earlier version).
    Column("credit_deadline", UtcDateTime(), nullable=True),
    Column("state", String(16), nullable=False),
    Column("step", String(16), nullable=False),
    Column("failure_reason", String(64), nullable=False),
    Column("failure_error", Text(), nullable=True),  # the DomainError a failed send replays
    Column("hold_expire_at", UtcDateTime(), nullable=True),
    Column("spend_day", Date(), nullable=False),  # the UTC day whose spending limit the send counts against
    Column("trace_context", Text(), nullable=False),  # W3C trace context (JSON), so recovery continues the trace
    Column("lease_owner", String(32), nullable=False),  # '' when no replica drives it
    Column("lease_until", UtcDateTime(), nullable=True),  # no one may take it over before this
    Column("attempts", Integer(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=True),
    UniqueConstraint("sender_id", "request_id", name="ux_gift_transfers_sender_request"),
    CheckConstraint("state IN ('pending', 'completed', 'failed')", name="ck_gift_transfers_state"),
    CheckConstraint(
        "step IN ('recorded', 'held', 'crediting', 'credited', 'failing', 'completed', 'failed')",
        name="ck_gift_transfers_step",
    ),
    CheckConstraint(
        "quantity > 0 AND unit_coin_price > 0 AND total_coins = quantity * unit_coin_price",
        name="ck_gift_transfers_coins",
    ),
    CheckConstraint("total_diamonds >= 0 AND total_diamonds <= total_coins", name="ck_gift_transfers_diamonds"),
    CheckConstraint("sender_id <> recipient_id", name="ck_gift_transfers_not_self"),
    Index("ix_gift_transfers_sender", "sender_id", "created_at", "transfer_id"),
    Index("ix_gift_transfers_recipient", "recipient_id", "state", "created_at", "transfer_id"),
    Index("ix_gift_transfers_target", "target_kind", "target_id", "state"),
    # Recovery's: the pending transfers only (a completed one gets no entry when it is written).
    Index(
        "ix_gift_transfers_unfinished",
        "lease_until",
        "created_at",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ),
    # Operators' and the reconciler's listings, in (create time, id) order: all gifts, and the failed
    # ones alone (few; a completion does not enter this one).
    Index("ix_gift_transfers_created", "created_at", "transfer_id"),
    Index(
        "ix_gift_transfers_failed",
        "created_at",
        "transfer_id",
        postgresql_where=text("state = 'failed'"),
        sqlite_where=text("state = 'failed'"),
    ),
)

daily_spending = Table(
    "daily_spending",
    metadata,
    Column("sender_id", String(128), nullable=False),
    Column("day", Date(), nullable=False),
    Column("coins", BigInteger(), nullable=False),
    PrimaryKeyConstraint("sender_id", "day", name="pk_daily_spending"),
    CheckConstraint("coins >= 0", name="ck_daily_spending_non_negative"),
)

feed_counters = Table(
    "feed_counters",
    metadata,
    Column("target_key", String(160), primary_key=True),
    Column("last_sequence", BigInteger(), nullable=False),
)

feed_events = Table(
    "feed_events",
    metadata,
    Column("target_key", String(160), nullable=False),
    Column("sequence", BigInteger(), nullable=False),
    Column("transfer_id", String(64), ForeignKey("gift_transfers.transfer_id"), nullable=False),
    Column("sender_id", String(128), nullable=False),
    Column("gift_id", String(128), nullable=False),
    Column("combo_count", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("target_key", "sequence", name="pk_feed_events"),
    UniqueConstraint("transfer_id", name="ux_feed_events_transfer"),
    CheckConstraint("sequence > 0 AND combo_count > 0", name="ck_feed_events_positive"),
)


# --- records ------------------------------------------------------------------------------------


def _record(cls: Any, row: Any) -> Any:
    return cls(**row._asdict())


# The statements every gift runs, built once with bound parameters: building a SQLAlchemy statement
# and its cache key costs more than executing it. Parameter names avoid column names, which
# UPDATE ... SET reserves; an UPDATE without .values() sets the columns named in its parameters.
_t = gift_transfers
_TRANSFER = select(_t).where(_t.c.transfer_id == bindparam("key_transfer_id"))
_TRANSFER_BY_REQUEST = select(_t).where(
    and_(_t.c.sender_id == bindparam("key_sender_id"), _t.c.request_id == bindparam("key_request_id"))
)
_TRANSFERS_BY_REQUEST = select(_t).where(keys_in([_t.c.sender_id, _t.c.request_id], "key_pairs"))
_LEASE_FREE = or_(
    _t.c.lease_owner == bindparam("key_owner"), _t.c.lease_until.is_(None), _t.c.lease_until < bindparam("key_now")
)
_CLAIM = {
    take_idle: update(_t).where(
        and_(
            _t.c.transfer_id == bindparam("key_transfer_id"),
            _t.c.state == PENDING,
            or_(_LEASE_FREE, _t.c.lease_owner == "") if take_idle else _LEASE_FREE,
        )
    )
    for take_idle in (False, True)
}
_RENEW = (
    update(_t)
    .where(
        and_(
            keys_in(_t.c.transfer_id, "key_transfer_ids"),
            _t.c.lease_owner == bindparam("key_owner"),
            _t.c.state == PENDING,
        )
    )
    .returning(_t.c.transfer_id)
)
_d = daily_spending
# The day rows of a batch's senders, locked in one order so that concurrent batches never deadlock.
_SPENDING_LOCKED = (
    select(_d.c.sender_id, _d.c.day, _d.c.coins)
    .where(keys_in([_d.c.sender_id, _d.c.day], "key_pairs"))
    .order_by(_d.c.sender_id, _d.c.day)
    .with_for_update()
)
_c, _e = feed_counters, feed_events
_EVENTS_BEFORE: dict[str, Any] = {}


def _events_before(conn: Connection) -> Any:
    """For (target_key, n) rows: each target's event n before its counter's last number (the event
    before n new ones, once the counter has moved on by n)."""
    statement = _EVENTS_BEFORE.get(conn.dialect.name)
    if statement is None:
        names = ("target_key", "last_sequence")
        source = rows_source(conn, feed_counters, names)
        found = "e.target_key = c.target_key AND e.sequence = c.last_sequence - k.n"
        events = (
            # PostgreSQL: one lookup in the events' primary key per target, whatever the statistics. As
            # a join, a plan cached while the table was small kept scanning it whole as it grew; a
            # subquery with a LIMIT cannot be planned as a join.
            f"CROSS JOIN LATERAL (SELECT * FROM feed_events e WHERE {found} LIMIT 1) e"
            if conn.dialect.name == "postgresql"
            else f"JOIN feed_events e ON {found}"
        )
        sql = (
            f"WITH k (target_key, n) AS ({source}) "
            "SELECT e.target_key, e.sender_id, e.gift_id, e.combo_count FROM k "
            f"JOIN feed_counters c ON c.target_key = k.target_key {events}"
        )
        statement = text(sql).bindparams(*rows_bindparams())
        _EVENTS_BEFORE[conn.dialect.name] = statement
    return statement


def _counter_params(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return rows_params(conn, feed_counters, ("target_key", "last_sequence"), rows)


# --- repositories ----------------------------------------------------------------------------------


_GIFT_COLUMNS = (
    gifts.c.gift_id,
    gifts.c.name,
    gifts.c.state,
    gift_versions.c.version,
    gift_versions.c.coin_price,
    gift_versions.c.diamonds,
    gift_versions.c.share_bps,
    gifts.c.created_at,
    gifts.c.updated_at,
)
_GIFT_JOIN = gifts.join(
    gift_versions,
    and_(gift_versions.c.gift_id == gifts.c.gift_id, gift_versions.c.version == gifts.c.current_version),
)


_GIFT = select(*_GIFT_COLUMNS).select_from(_GIFT_JOIN).where(gifts.c.gift_id == bindparam("key_gift_id"))
_GIFTS = select(*_GIFT_COLUMNS).select_from(_GIFT_JOIN).where(keys_in(gifts.c.gift_id, "key_gift_ids"))


class CatalogueRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, gift_id: str) -> GiftRecord | None:
        found = self.conn.execute(_GIFT, {"key_gift_id": gift_id}).one_or_none()
        return None if found is None else _record(GiftRecord, found)

    def get_many(self, gift_ids: Iterable[str]) -> Callable[[], dict[str, GiftRecord]]:
        """These gifts (those that exist) as they are now, by id; sent in the transaction's pipeline."""
        return (
            pipeline(self.conn)
            .send_as(
                _GIFTS,
                {"key_gift_ids": sorted(set(gift_ids))},
                lambda rows: {r.gift_id: _record(GiftRecord, r) for r in rows},
            )
            .get
        )

    def active(self) -> list[GiftRecord]:
        rows = self.conn.execute(
            select(*_GIFT_COLUMNS)
            .select_from(_GIFT_JOIN)
            .where(gifts.c.state == ACTIVE)
            .order_by(gift_versions.c.coin_price, gifts.c.gift_id)
        )
        return [_record(GiftRecord, r) for r in rows]

    def add_if_missing(
        self, gift_id: str, name: str, coin_price: int, diamonds: int | None, share_bps: int, now: datetime
    ) -> bool:
        """Create a gift at version 1 unless it exists (replicas seeding at once agree); True if created."""
        created = insert_unless_conflict(
            self.conn,
            gifts,
            {
                "gift_id": gift_id,
                "name": name,
                "state": ACTIVE,
                "current_version": 1,
                "created_at": now,
                "updated_at": now,
            },
        )
        if not created:
            return False
        self.add_version(gift_id, 1, coin_price, diamonds, share_bps, now)
        return True

    def add_version(
        self, gift_id: str, version: int, coin_price: int, diamonds: int | None, share_bps: int, now: datetime
    ) -> None:
        self.conn.execute(
            insert(gift_versions).values(
                gift_id=gift_id,
                version=version,
                coin_price=coin_price,
                diamonds=diamonds,
                share_bps=share_bps,
                created_at=now,
            )
        )

    def update(self, gift_id: str, expected_version: int, **values: object) -> bool:
        """Change a gift if it is still at `expected_version`; False if a concurrent change won."""
        result = self.conn.execute(
            update(gifts)
            .where(and_(gifts.c.gift_id == gift_id, gifts.c.current_version == expected_version))
            .values(**values)
        )
        return result.rowcount == 1


class TransferRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add_many(self, records: Sequence[TransferRecord]) -> None:
        """Insert new transfers in one statement, sent in the transaction's pipeline; a sender's request
        id recorded already (concurrently) fails the transaction (UNIQUE(sender_id, request_id))."""
        insert_rows(self.conn, gift_transfers, [dict(r.__dict__) for r in records])

    def by_requests(self, pairs: Iterable[tuple[str, str]]) -> Callable[[], dict[tuple[str, str], TransferRecord]]:
        """The transfers already recorded under these (sender, request id) pairs; sent in the pipeline."""
        keys = sorted(set(pairs))
        if not keys:
            return Later.of({}).get
        return (
            pipeline(self.conn)
            .send_as(
                _TRANSFERS_BY_REQUEST,
                {"key_pairs": keys},
                lambda rows: {(r.sender_id, r.request_id): _record(TransferRecord, r) for r in rows},
            )
            .get
        )

    def get(self, transfer_id: str) -> TransferRecord | None:
        found = self.conn.execute(_TRANSFER, {"key_transfer_id": transfer_id}).one_or_none()
        return None if found is None else _record(TransferRecord, found)

    def by_request(self, sender_id: str, request_id: str) -> TransferRecord | None:
        keys = {"key_sender_id": sender_id, "key_request_id": request_id}
        found = self.conn.execute(_TRANSFER_BY_REQUEST, keys).one_or_none()
        return None if found is None else _record(TransferRecord, found)

    def claim(self, transfer_id: str, owner: str, now: datetime, until: datetime, take_idle: bool) -> bool:
        """Take (or keep) the lease of an unfinished transfer.

        Free to take: a lease that has passed, or (take_idle, for a client's retry) one left idle by a
        driver that gave up for now. Recovery leaves idle ones alone until their retry time.
        """
        keys = {"key_transfer_id": transfer_id, "key_owner": owner, "key_now": now}
        result = self.conn.execute(
            _CLAIM[take_idle], {**keys, "lease_owner": owner, "lease_until": until, "updated_at": now}
        )
        return result.rowcount == 1

    def renew(self, transfer_ids: Sequence[str], owner: str, now: datetime, until: datetime) -> set[str]:
        """Extend the leases `owner` holds on these transfers; the ids it still holds."""
        keys = {"key_transfer_ids": list(transfer_ids), "key_owner": owner}
        return {r.transfer_id for r in self.conn.execute(_RENEW, {**keys, "lease_until": until, "updated_at": now})}

    def advance(self, transfer_id: str, owner: str, from_step: str, **values: object) -> bool:
        """Move a transfer on from `from_step`, only while `owner` holds its lease (saga writes)."""
        return transfer_id in self.advance_many(owner, from_step, [{"transfer_id": transfer_id}], **values)()

    def advance_many(
        self, owner: str, from_step: str, rows: Sequence[dict[str, Any]], **common: object
    ) -> Callable[[], set[str]]:
        """`advance` for many transfers in one statement (sent in the pipeline): each row is a
        transfer_id and its own new values, `common` are set on all; the ids advanced (the others'
        lease was lost), when read."""
        guard = {"lease_owner": owner, "state": PENDING, "step": from_step}
        return update_rows(self.conn, gift_transfers, "transfer_id", rows, where=guard, common=common).get

    def postpone(self, transfer_id: str, owner: str, now: datetime, not_before: datetime) -> bool:
        """Give up the lease, idle until `not_before` (recovery's retry time), counting the attempt."""
        t = gift_transfers
        result = self.conn.execute(
            update(t)
            .where(and_(t.c.transfer_id == transfer_id, t.c.lease_owner == owner, t.c.state == PENDING))
            .values(lease_owner="", lease_until=not_before, attempts=t.c.attempts + 1, updated_at=now)
        )
        return result.rowcount == 1

    def unfinished(self, now: datetime, limit: int) -> list[str]:
        """Pending transfers that no replica drives: never leased, or their lease (or retry time) passed."""
        t = gift_transfers
        rows = self.conn.execute(
            select(t.c.transfer_id)
            .where(and_(t.c.state == PENDING, or_(t.c.lease_until.is_(None), t.c.lease_until < now)))
            .order_by(t.c.lease_until, t.c.created_at)
            .limit(limit)
        )
        return [r.transfer_id for r in rows]

    def unfinished_summary(self) -> tuple[int, datetime | None]:
        """(pending transfers, when the oldest was recorded): what gifting's metrics report."""
        t = gift_transfers
        row = self.conn.execute(select(func.count(), func.min(t.c.created_at)).where(t.c.state == PENDING)).one()
        return int(row[0]), row[1]

    def page(
        self, user_column: str, user_id: str, size: int, before: tuple[datetime, str] | None, state: str | None = None
    ) -> list[TransferRecord]:
        """Newest first; `before` is the (created_at, transfer_id) of the last transfer already listed."""
        t = gift_transfers
        query = select(t).where(t.c[user_column] == user_id)
        if state is not None:
            query = query.where(t.c.state == state)
        if before is not None:
            at, transfer_id = before
            query = query.where(or_(t.c.created_at < at, and_(t.c.created_at == at, t.c.transfer_id < transfer_id)))
        rows = self.conn.execute(query.order_by(t.c.created_at.desc(), t.c.transfer_id.desc()).limit(size))
        return [_record(TransferRecord, r) for r in rows]

    def matching(
        self, states: Sequence[str], steps: Sequence[str], selection: Selection, limit: int
    ) -> list[TransferRecord]:
        """Transfers by (created_at, transfer_id), in `selection`: in these states and at these steps
        (any, when empty)."""
        t = gift_transfers
        statement = select(t)
        if len(states) == 1:  # as `=`, which the failed transfers' partial index serves
            statement = statement.where(t.c.state == states[0])
        elif states:
            statement = statement.where(t.c.state.in_(states))
        if steps:
            statement = statement.where(t.c.step.in_(steps))
        statement = selected(statement, t.c.created_at, t.c.transfer_id, t.c.transfer_id, selection, limit)
        rows = self.conn.execute(statement)
        return [_record(TransferRecord, r) for r in rows]

    def leaders(
        self,
        limit: int,
        target: tuple[str, str] | None = None,
        recipient_id: str | None = None,
        since: datetime | None = None,
    ) -> list[LeaderRow]:
        """Top senders of completed transfers by coins, then gifts, then user id (a stable order)."""
        t = gift_transfers
        coins = func.sum(t.c.total_coins).label("coins")
        count = func.sum(t.c.quantity).label("gifts")
        query = select(t.c.sender_id.label("user_id"), coins, count).where(t.c.state == COMPLETED)
        if target is not None:
            query = query.where(and_(t.c.target_kind == target[0], t.c.target_id == target[1]))
        if recipient_id is not None:
            query = query.where(t.c.recipient_id == recipient_id)
        if since is not None:
            query = query.where(t.c.completed_at >= since)
        rows = self.conn.execute(
            query.group_by(t.c.sender_id).order_by(coins.desc(), count.desc(), t.c.sender_id).limit(limit)
        )
        return [LeaderRow(r.user_id, int(r.coins), int(r.gifts)) for r in rows]


class SpendingRepository:
    """Coins each sender has committed to gifts per UTC day."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock(self, pairs: Iterable[tuple[str, date]]) -> Callable[[], dict[tuple[str, date], int]]:
        """The coins each (sender, day) has committed, its row created if missing and locked to the end
        of the transaction (PostgreSQL: FOR UPDATE, in one order, so concurrent batches never deadlock;
        a row two batches create at once is waited for; SQLite: the write lock), so totals decided from
        these are the ones `set` writes. Two statements, sent in the transaction's pipeline."""
        keys = sorted(set(pairs))
        if not keys:
            return Later.of({}).get
        rows = [{"sender_id": sender, "day": day, "coins": 0} for sender, day in keys]
        insert_rows(self.conn, daily_spending, rows, unless_conflict_on=["sender_id", "day"])
        return (
            pipeline(self.conn)
            .send_as(
                _SPENDING_LOCKED,
                {"key_pairs": keys},
                lambda found: {(r.sender_id, r.day): int(r.coins) for r in found},
            )
            .get
        )

    def set(self, totals: Mapping[tuple[str, date], int]) -> None:
        """Write the totals of rows this transaction locked (`lock`); sent in the pipeline."""
        rows = [{"sender_id": s, "day": d, "coins": c} for (s, d), c in sorted(totals.items())]
        update_rows(self.conn, daily_spending, ("sender_id", "day"), rows)

    def give_back(self, sender_id: str, day: date, coins: int) -> None:
        d = daily_spending
        self.conn.execute(
            update(d).where(and_(d.c.sender_id == sender_id, d.c.day == day)).values(coins=d.c.coins - coins)
        )

    def spent(self, sender_id: str, day: date) -> int:
        d = daily_spending
        row = self.conn.execute(select(d.c.coins).where(and_(d.c.sender_id == sender_id, d.c.day == day)))
        return int(row.scalar_one_or_none() or 0)


class FeedRepository:
    """The live feed's outbox: one event per completed gift, numbered 1, 2, 3, ... per target."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def number(self, counts: Mapping[str, int]) -> Callable[[], dict[str, Numbering]]:
        """Move each target's counter on by its count of new events (creating the counter at need), and
        read the event before them, in two statements sent in the transaction's pipeline: for each
        target, the first number its new events take and the event before them (None: the first).

        Concurrent completions on one target queue on its counter row (row lock on PostgreSQL, taken
        in target order; SQLite's write lock) and take consecutive numbers. The event before is read
        after the counter moved on, under its lock: no other completion gets between the two.
        """
        if not counts:
            return Later.of({}).get
        rows = [{"target_key": target, "last_sequence": n} for target, n in sorted(counts.items())]
        bumped = upsert_rows(
            self.conn,
            feed_counters,
            rows,
            on=["target_key"],
            set_sql="last_sequence = feed_counters.last_sequence + excluded.last_sequence",
            returning=["target_key", "last_sequence"],
        )
        before = pipeline(self.conn).send(_events_before(self.conn), _counter_params(self.conn, rows))

        def numbering(before_rows: list[Any]) -> dict[str, Numbering]:
            previous = {r.target_key: Previous(r.sender_id, r.gift_id, int(r.combo_count)) for r in before_rows}
            return {
                r.target_key: Numbering(int(r.last_sequence) - counts[r.target_key] + 1, previous.get(r.target_key))
                for r in bumped.get()  # answered with `before`: sent first
            }

        return before.then(numbering).get

    def append(
        self, events: Sequence[tuple[str, TransferRecord]], numbering: Mapping[str, Numbering], now: datetime
    ) -> list[tuple[int, int]]:
        """Write the events of their targets, in order, numbered from `number`'s numbering (which
        counted at least these); (sequence, combo) of each, the insert sent in the pipeline. A combo
        continues while one sender sends the same gift to the target, event after event."""
        next_number = {target: n.first for target, n in numbering.items()}
        previous = {target: n.previous for target, n in numbering.items()}
        numbered, event_rows = [], []
        for target, transfer in events:
            sequence = next_number[target]
            next_number[target] += 1
            prior = previous.get(target)
            combo = prior.combo + 1 if prior is not None and prior[:2] == (transfer.sender_id, transfer.gift_id) else 1
            previous[target] = Previous(transfer.sender_id, transfer.gift_id, combo)
            numbered.append((sequence, combo))
            event_rows.append(
                {
                    "target_key": target,
                    "sequence": sequence,
                    "transfer_id": transfer.transfer_id,
                    "sender_id": transfer.sender_id,
                    "gift_id": transfer.gift_id,
                    "combo_count": combo,
                    "created_at": now,
                }
            )
        insert_rows(self.conn, feed_events, event_rows)
        return numbered

    def renumber(self, last: Mapping[str, int]) -> None:
        """Set targets' last numbers (counters this transaction moved on further than it used)."""
        rows = [{"target_key": target, "last_sequence": n} for target, n in sorted(last.items())]
        update_rows(self.conn, feed_counters, "target_key", rows)

    def head(self, target_key: str) -> int:
        c = feed_counters
        row = self.conn.execute(select(c.c.last_sequence).where(c.c.target_key == target_key))
        return int(row.scalar_one_or_none() or 0)

    def heads(self, target_keys: Iterable[str]) -> dict[str, int]:
        keys = list(target_keys)
        if not keys:
            return {}
        c = feed_counters
        rows = self.conn.execute(select(c.c.target_key, c.c.last_sequence).where(c.c.target_key.in_(keys)))
        found = {r.target_key: int(r.last_sequence) for r in rows}
        return {key: found.get(key, 0) for key in keys}

    def after(self, target_key: str, after_sequence: int, limit: int) -> list[FeedEventRecord]:
        e, t = feed_events, gift_transfers
        rows = self.conn.execute(
            select(e.c.target_key, e.c.sequence, e.c.combo_count, t)
            .join(t, t.c.transfer_id == e.c.transfer_id)
            .where(and_(e.c.target_key == target_key, e.c.sequence > after_sequence))
            .order_by(e.c.sequence)
            .limit(limit)
        )
        events = []
        for r in rows:
            values = r._asdict()
            head = {k: values.pop(k) for k in ("target_key", "sequence", "combo_count")}
            events.append(FeedEventRecord(transfer=TransferRecord(**values), **head))
        return events


class UnitOfWork:
    """Everything one database transaction of the gifting service touches."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.catalogue = CatalogueRepository(conn)
        self.transfers = TransferRepository(conn)
        self.spending = SpendingRepository(conn)
        self.feed = FeedRepository(conn)
