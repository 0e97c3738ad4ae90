"""The wallet's database: tables (SQLAlchemy Core), the unit of work and its repositories.

Uniqueness that money depends on is a constraint here, not a read before a write:
- one wallet per user: wallets' primary key;
- a receipt credits once, ever: UNIQUE(purchases.store, purchases.store_transaction_id), and the
  store's other ids of a purchase once each too: UNIQUE(store, original_transaction_id) (App Store),
  UNIQUE(store, order_id) (Google Play);
- a purchase is refunded once: purchase_refunds' primary key is the purchase id, and a refund is
  reversed once: purchase_reinstatements' primary key;
- a store notification applies once: store_notifications' primary key (store, notification id);
- a promotion is claimed once per user: promotion_claims' primary key (promotion_id, user_id);
- one hold per gift, ever: UNIQUE(holds.gift_id).

Concurrency: every unit of work that changes a wallet's coins or holds first locks the wallet's row
(`lock_wallet`: SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
writers); a batch locks all its wallets in one statement, in user-id order (`lock_wallets`). So a
wallet's balances, holds and history change one transaction at a time, and a read of its balances
inside such a unit is exact. The ledger's conditional updates and CHECK constraints stay the last
line: no code path can overdraw an account even if it forgot the lock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

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
    Row,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.runtime.audit import audit_table
from services.runtime.db import (
    Selection,
    insert_rows,
    is_unique_violation,
    keys_in,
    selected,
    update_rows,
)
from services.runtime.ledger import Ledger, Movement, ledger_tables
from services.runtime.pipeline import pipeline
from services.runtime.tables import UtcDateTime, request_ids_table
from services.wallet.model import (
    HELD,
    BookedHoldRecord,
    Duplicate,
    HoldRecord,
    PromotionRecord,
    PurchaseRecord,
    RefundsRow,
    ReversalsRow,
    StoreNotificationRecord,
    TakingsRow,
    TransferRecord,
    WalletRecord,
    WindowTotals,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()
request_ids = request_ids_table(metadata)
ledger = ledger_tables(metadata)
audit_records = audit_table(metadata)

wallets = Table(
    "wallets",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("date_of_birth", Date(), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

purchases = Table(
    "purchases",
    metadata,
    Column("purchase_id", String(64), primary_key=True),
    Column("user_id", String(128), ForeignKey("wallets.user_id"), nullable=False),
    Column("package_id", String(128), nullable=False),
    Column("coins", BigInteger(), nullable=False),
    Column("price_minor", BigInteger(), nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("store", String(64), nullable=False),
    Column("store_transaction_id", String(256), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # The store's other ids of the purchase, each credited once too: App Store originalTransactionId,
    # Google Play orderId (NULL where the store has none).
    Column("original_transaction_id", String(256), nullable=True),
    Column("order_id", String(256), nullable=True),
    # Google Play: when the wallet consumed the purchase at the store, or found it cancelled there (NULL
    # until then: the store refunds a purchase left unacknowledged for three days). Other stores: the
    # purchase's time (nothing to consume).
    Column("consumed_at", UtcDateTime(), nullable=True),
    CheckConstraint("coins > 0", name="ck_purchases_coins_positive"),
    CheckConstraint("price_minor >= 0", name="ck_purchases_price_non_negative"),
    UniqueConstraint("store", "store_transaction_id", name="uq_purchases_store_transaction"),
    Index("ix_purchases_user_id", "user_id"),
    Index("uq_purchases_original_transaction", "store", "original_transaction_id", unique=True),
    Index("uq_purchases_order", "store", "order_id", unique=True),
    Index("ix_purchases_created_at", "created_at"),  # the books' summary of a window
)

purchase_refunds = Table(
    "purchase_refunds",
    metadata,
    Column("purchase_id", String(64), ForeignKey("purchases.purchase_id"), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("coins_reclaimed", BigInteger(), nullable=False),
    Column("debt_added", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint("kind IN ('refund', 'chargeback')", name="ck_purchase_refunds_kind"),
    CheckConstraint("coins_reclaimed >= 0 AND debt_added >= 0", name="ck_purchase_refunds_non_negative"),
    Index("ix_purchase_refunds_created_at", "created_at"),
)

# A refunded purchase whose refund the store reversed (App Store REFUND_REVERSED): its coins came back.
purchase_reinstatements = Table(
    "purchase_reinstatements",
    metadata,
    Column("purchase_id", String(64), ForeignKey("purchase_refunds.purchase_id"), primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_purchase_reinstatements_created_at", "created_at"),  # the books' summary of a window
)

# Every store notification of a refund, chargeback or refund reversal, once (the store's own id of it:
# App Store notificationUUID, Google Play the voided purchase token), with the store's time of the event
# and what it changed: applied, unchanged (the purchase was so already, or a later event of it arrived
# first), or no_purchase (none credited here; a later purchase of that transaction is refused).
store_notifications = Table(
    "store_notifications",
    metadata,
    Column("store", String(64), primary_key=True),
    Column("notification_id", String(256), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("store_transaction_id", String(256), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    CheckConstraint("kind IN ('refund', 'chargeback', 'reversal')", name="ck_store_notifications_kind"),
    CheckConstraint("outcome IN ('applied', 'unchanged', 'no_purchase')", name="ck_store_notifications_outcome"),
    Index("ix_store_notifications_transaction", "store", "store_transaction_id"),
)

promotions = Table(
    "promotions",
    metadata,
    Column("promotion_id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("coins_per_claim", BigInteger(), nullable=False),
    Column("budget", BigInteger(), nullable=False),
    Column("start_time", UtcDateTime(), nullable=False),
    Column("end_time", UtcDateTime(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint("coins_per_claim > 0 AND budget >= coins_per_claim", name="ck_promotions_amounts"),
    CheckConstraint("start_time < end_time", name="ck_promotions_window"),
)

promotion_claims = Table(
    "promotion_claims",
    metadata,
    Column("promotion_id", String(128), ForeignKey("promotions.promotion_id"), primary_key=True),
    Column("user_id", String(128), ForeignKey("wallets.user_id"), primary_key=True),
    Column("coins", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_promotion_claims_created_at", "created_at"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(64), primary_key=True),
    Column("gift_id", String(128), nullable=False),
    Column("user_id", String(128), ForeignKey("wallets.user_id"), nullable=False),
    Column("amount", BigInteger(), nullable=False),
    # The promotional part of the coins held (or, once captured, spent).
    Column("promotional_amount", BigInteger(), nullable=False),
    # Coins a capture after expiry could not find in the wallet, recorded as debt.
    Column("debt_added", BigInteger(), nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("expire_time", UtcDateTime(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint("amount > 0", name="ck_holds_amount_positive"),
    CheckConstraint("promotional_amount >= 0 AND promotional_amount <= amount", name="ck_holds_promotional_part"),
    CheckConstraint("debt_added >= 0 AND debt_added <= amount", name="ck_holds_debt_added"),
    CheckConstraint("state IN ('held', 'captured', 'released', 'expired')", name="ck_holds_state"),
    UniqueConstraint("gift_id", name="uq_holds_gift_id"),
    Index("ix_holds_state_expire_time", "state", "expire_time"),
    # The reconciler's listing of a window's holds, in (create time, id) order.
    Index("ix_holds_created", "created_at", "hold_id"),
)

# The wallet's history: which ledger transfers moved which user's coins, in the order they committed
# (the wallet lock makes a user's transfers commit one at a time, so `seq` is their order).
wallet_transfers = Table(
    "wallet_transfers",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(128), ForeignKey("wallets.user_id"), nullable=False),
    Column("transfer_id", String(64), ForeignKey("ledger_transfers.id"), nullable=False),
    Index("ix_wallet_transfers_user_seq", "user_id", "seq"),
)


# The statements every gift runs (a hold, its capture), built once with bound parameters: building a
# statement costs more than executing it. Parameter names avoid column names (UPDATE ... SET's).
_WALLET = select(wallets).where(wallets.c.user_id == bindparam("wallet_user_id"))
_WALLET_LOCKED = _WALLET.with_for_update()
_HOLD_BY_GIFT = select(holds).where(holds.c.gift_id == bindparam("hold_gift_id"))
_MOVE_HOLD = (
    update(holds)
    .where(and_(holds.c.hold_id == bindparam("hold_key"), holds.c.state == bindparam("hold_from_state")))
    .returning(*holds.c)
)  # SET: the columns named in the parameters
# The batch paths' (BatchHoldCoins, BatchCaptureHolds) statements: one for all the batch's rows.
# Wallets are locked in user-id order, so that batches locking overlapping sets cannot deadlock.
_WALLETS_LOCKED = (
    select(wallets).where(keys_in(wallets.c.user_id, "wallet_user_ids")).order_by(wallets.c.user_id).with_for_update()
)
_WALLETS_HOLDING_LOCKED = (
    select(wallets.c.user_id)
    .where(wallets.c.user_id.in_(select(holds.c.user_id).where(keys_in(holds.c.gift_id, "hold_gift_ids"))))
    .order_by(wallets.c.user_id)
    .with_for_update(of=wallets)
)
_HOLDS_BY_GIFTS = select(holds).where(keys_in(holds.c.gift_id, "hold_gift_ids"))
_LOCK_KEY = text("SELECT pg_advisory_xact_lock(hashtextextended(:lock_key, 0))")


class UnitOfWork:
    """Repositories over one open transaction: everything in it commits or rolls back together."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ledger = Ledger(ledger, conn)

    # --- wallets ------------------------------------------------------------------------------

    def insert_wallet(self, record: WalletRecord) -> None:
        self._insert(wallets, vars(record))

    def wallet(self, user_id: str) -> WalletRecord | None:
        row = self.conn.execute(_WALLET, {"wallet_user_id": user_id}).one_or_none()
        return None if row is None else WalletRecord(**row._mapping)

    def lock_wallet(self, user_id: str) -> WalletRecord | None:
        """The wallet, locked until the transaction ends: see the module's note on concurrency."""
        row = self.conn.execute(_WALLET_LOCKED, {"wallet_user_id": user_id}).one_or_none()
        return None if row is None else WalletRecord(**row._mapping)

    def lock_wallets(self, user_ids: Collection[str]) -> Callable[[], dict[str, WalletRecord]]:
        """`lock_wallet` for many users in one statement, queued in the transaction's pipeline: called,
        the answer reads the wallets that exist, by user id (sending what is queued)."""
        return (
            pipeline(self.conn)
            .send_as(
                _WALLETS_LOCKED,
                {"wallet_user_ids": sorted(user_ids)},
                lambda rows: {row.user_id: WalletRecord(**row._mapping) for row in rows},
            )
            .get
        )

    def lock_wallets_holding(self, gift_ids: Collection[str]) -> Callable[[], set[str]]:
        """Lock the wallets of these gifts' holds in one statement (queued in the pipeline); their user ids."""
        return (
            pipeline(self.conn)
            .send_as(
                _WALLETS_HOLDING_LOCKED, {"hold_gift_ids": sorted(gift_ids)}, lambda rows: {row.user_id for row in rows}
            )
            .get
        )

    def queue_balances(self, codes: Iterable[str]) -> Callable[[], dict[str, int]]:
        """The ledger's `balances` of these accounts, queued in the pipeline (read when called)."""
        return self.ledger.balances_later(codes).get

    # --- ledger, with the wallet's history ----------------------------------------------------

    def post_many(self, movements: Sequence[tuple[str, Movement]], now: datetime, checked: bool = True) -> list[str]:
        """Ledger transfers, each entered in its user's history (none for ""), in the order given; their
        ids. A constant number of statements, whatever their number. `checked` as Ledger.post_many's:
        raises Overdraft, after which the transaction must roll back.
        """
        transfer_ids = self.ledger.post_many([movement for _, movement in movements], now, checked)
        history = [
            {"user_id": user_id, "transfer_id": transfer_id}
            for (user_id, _), transfer_id in zip(movements, transfer_ids, strict=True)
            if user_id
        ]
        insert_rows(self.conn, wallet_transfers, history)
        return transfer_ids

    def history(self, user_id: str, before_seq: int | None, limit: int) -> list[TransferRecord]:
        """The user's transfers, newest first, strictly before `before_seq` when given."""
        t, w = ledger.transfers, wallet_transfers
        query = (
            select(w.c.seq, w.c.transfer_id, t.c.kind, t.c.reference, t.c.created_at)
            .join(t, t.c.id == w.c.transfer_id)
            .where(w.c.user_id == user_id)
            .order_by(w.c.seq.desc())
            .limit(limit)
        )
        if before_seq is not None:
            query = query.where(w.c.seq < before_seq)
        return [TransferRecord(**row._mapping) for row in self.conn.execute(query)]

    def entries(self, transfer_ids: Sequence[str], accounts: Sequence[str]) -> list[tuple[str, str, int]]:
        """(transfer id, account, signed amount) of the given transfers on the given accounts."""
        e = ledger.entries
        rows = self.conn.execute(
            select(e.c.transfer_id, e.c.account, e.c.amount).where(
                and_(e.c.transfer_id.in_(transfer_ids), e.c.account.in_(accounts))
            )
        )
        return [(r.transfer_id, r.account, int(r.amount)) for r in rows]

    # --- purchases and refunds ----------------------------------------------------------------

    def insert_purchase(self, record: PurchaseRecord) -> None:
        values = vars(record).copy()
        del values["refund_kind"], values["reinstated"]
        self._insert(purchases, values)

    def purchase_by_store_transaction(self, store: str, store_transaction_id: str) -> PurchaseRecord | None:
        p, r, s = purchases, purchase_refunds, purchase_reinstatements
        row = self.conn.execute(
            select(p, r.c.kind.label("refund_kind"), s.c.purchase_id.label("reinstated"))
            .outerjoin(r, r.c.purchase_id == p.c.purchase_id)
            .outerjoin(s, s.c.purchase_id == p.c.purchase_id)
            .where(and_(p.c.store == store, p.c.store_transaction_id == store_transaction_id))
        ).one_or_none()
        if row is None:
            return None
        values = dict(row._mapping)
        values["reinstated"] = values["reinstated"] is not None
        values["refund_kind"] = "" if values["reinstated"] else values["refund_kind"] or ""
        return PurchaseRecord(**values)

    def purchases_to_consume(self, store: str, limit: int) -> list[PurchaseRecord]:
        """The store's purchases not yet consumed at the store, oldest first."""
        rows = self.conn.execute(
            select(purchases)
            .where(and_(purchases.c.store == store, purchases.c.consumed_at.is_(None)))
            .order_by(purchases.c.created_at)
            .limit(limit)
        )
        return [PurchaseRecord(**row._mapping) for row in rows]

    def mark_consumed(self, purchase_id: str, now: datetime) -> None:
        self.conn.execute(
            update(purchases)
            .where(and_(purchases.c.purchase_id == purchase_id, purchases.c.consumed_at.is_(None)))
            .values(consumed_at=now)
        )

    def lock_store_transaction(self, store: str, store_transaction_id: str) -> None:
        """Serialise, until the transaction ends, the units that decide over one store transaction (its
        purchase, its notifications), which may have no row to lock yet: on PostgreSQL a transaction-level
        advisory lock on its key; SQLite's BEGIN IMMEDIATE already serialises writers."""
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(_LOCK_KEY, {"lock_key": f"{store} {store_transaction_id}"})

    def insert_reinstatement(self, purchase_id: str, now: datetime) -> None:
        self._insert(purchase_reinstatements, {"purchase_id": purchase_id, "created_at": now})

    def insert_store_notification(self, record: StoreNotificationRecord) -> None:
        """Raises Duplicate when the store's notification was recorded before."""
        self._insert(store_notifications, vars(record))

    def store_notifications_of(self, store: str, store_transaction_id: str) -> list[StoreNotificationRecord]:
        """The notifications recorded for a store transaction, in the order they arrived."""
        n = store_notifications
        rows = self.conn.execute(
            select(n)
            .where(and_(n.c.store == store, n.c.store_transaction_id == store_transaction_id))
            .order_by(n.c.received_at)
        )
        return [StoreNotificationRecord(**row._mapping) for row in rows]

    def insert_refund(self, purchase_id: str, kind: str, coins_reclaimed: int, debt_added: int, now: datetime) -> None:
        self._insert(
            purchase_refunds,
            {
                "purchase_id": purchase_id,
                "kind": kind,
                "coins_reclaimed": coins_reclaimed,
                "debt_added": debt_added,
                "created_at": now,
            },
        )

    # --- promotions ---------------------------------------------------------------------------

    def insert_promotion(self, record: PromotionRecord, now: datetime) -> None:
        self._insert(promotions, {**vars(record), "created_at": now})

    def promotion(self, promotion_id: str) -> PromotionRecord | None:
        p = promotions
        row = self.conn.execute(
            select(p.c.promotion_id, p.c.name, p.c.coins_per_claim, p.c.budget, p.c.start_time, p.c.end_time).where(
                p.c.promotion_id == promotion_id
            )
        ).one_or_none()
        return None if row is None else PromotionRecord(**row._mapping)

    def insert_claim(self, promotion_id: str, user_id: str, coins: int, now: datetime) -> None:
        self._insert(
            promotion_claims, {"promotion_id": promotion_id, "user_id": user_id, "coins": coins, "created_at": now}
        )

    # --- holds --------------------------------------------------------------------------------

    def hold_by_gift(self, gift_id: str) -> HoldRecord | None:
        row = self.conn.execute(_HOLD_BY_GIFT, {"hold_gift_id": gift_id}).one_or_none()
        return None if row is None else _hold(row)

    def holds_by_gifts(self, gift_ids: Collection[str]) -> Callable[[], dict[str, HoldRecord]]:
        """The holds of these gifts (those that have one), by gift id, in one statement (queued in the
        transaction's pipeline: read when called)."""
        return (
            pipeline(self.conn)
            .send_as(
                _HOLDS_BY_GIFTS,
                {"hold_gift_ids": sorted(gift_ids)},
                lambda rows: {row.gift_id: _hold(row) for row in rows},
            )
            .get
        )

    def insert_holds(self, records: Sequence[HoldRecord]) -> None:
        """Insert holds in one statement (sent in the pipeline); a gift that has a hold already fails
        the transaction (UNIQUE(gift_id)): the batch is then decided again, knowing that hold.

        In gift-id order, so that two batches inserting overlapping gifts wait on each other, not in a cycle.
        """
        rows = [{**vars(r), "updated_at": r.created_at} for r in sorted(records, key=lambda r: r.gift_id)]
        insert_rows(self.conn, holds, rows)

    def move_hold(
        self, hold_id: str, from_state: str, to_state: str, now: datetime, **changes: int
    ) -> HoldRecord | None:
        """Change a hold's state if it is still `from_state`; the changed hold, or None."""
        values = {"hold_key": hold_id, "hold_from_state": from_state, "state": to_state, "updated_at": now, **changes}
        row = self.conn.execute(_MOVE_HOLD, values).one_or_none()
        return None if row is None else _hold(row)

    def move_holds(self, moves: Sequence[tuple[HoldRecord, HoldRecord]], now: datetime) -> None:
        """Write each (before, after) pair's state and amounts, sent in the pipeline: one statement per
        kind of move (from, to). The holds were read once their wallets were locked, and every change
        of a hold takes its wallet's lock, so each is still in its `before` state (and the held
        accounts' CHECK constraint would refuse a hold's coins moved twice).
        """
        by_kind: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
        for before, after in moves:
            by_kind[(before.state, after.state)].append(
                {
                    "hold_id": before.hold_id,
                    "promotional_amount": after.promotional_amount,
                    "debt_added": after.debt_added,
                }
            )
        for (from_state, to_state), rows in sorted(by_kind.items()):
            changes = {"state": to_state, "updated_at": now}
            update_rows(self.conn, holds, "hold_id", rows, where={"state": from_state}, common=changes)

    def due_holds(self, now: datetime, limit: int) -> list[str]:
        """Gift ids of holds still held after their expiry time, oldest first."""
        rows = self.conn.execute(
            select(holds.c.gift_id)
            .where(and_(holds.c.state == HELD, holds.c.expire_time <= now))
            .order_by(holds.c.expire_time)
            .limit(limit)
        )
        return [r.gift_id for r in rows]

    # --- operators' and the reconciler's reads -------------------------------------------------

    def promotions_page(self, after: str | None, limit: int) -> list[PromotionRecord]:
        """Promotions by id, after the id `after` when given."""
        p = promotions
        query = select(p.c.promotion_id, p.c.name, p.c.coins_per_claim, p.c.budget, p.c.start_time, p.c.end_time)
        if after is not None:
            query = query.where(p.c.promotion_id > after)
        rows = self.conn.execute(query.order_by(p.c.promotion_id).limit(limit))
        return [PromotionRecord(**row._mapping) for row in rows]

    def booked_holds(
        self,
        window: tuple[datetime | None, datetime | None],
        gift_ids: tuple[str, ...],
        after: tuple[datetime, str] | None,
        limit: int,
        capture_kind: str,
        spent_accounts: tuple[str, str],
    ) -> list[BookedHoldRecord]:
        """Holds by (created_at, hold_id): made in the window [start, end) or of these gifts (not both;
        neither: all), after the (created_at, hold_id) `after`; each with what the ledger's `capture_kind`
        transfers of its gift moved into the spent accounts (purchased, promotional)."""
        h = holds
        selection = Selection(window[0], window[1], gift_ids, after)
        statement = selected(select(h), h.c.created_at, h.c.hold_id, h.c.gift_id, selection, limit)
        rows = self.conn.execute(statement).all()
        booked = self._booked([r.gift_id for r in rows], capture_kind, spent_accounts)
        return [BookedHoldRecord(_hold(r), r.updated_at, *booked.get(r.gift_id, (0, 0, 0))) for r in rows]

    def _booked(self, gift_ids: Sequence[str], kind: str, accounts: tuple[str, str]) -> dict[str, tuple[int, int, int]]:
        """Per gift: what its `kind` transfers moved into `accounts` (purchased, promotional), the
        promotional part, and how many such transfers it has."""
        if not gift_ids:
            return {}
        t, e = ledger.transfers, ledger.entries
        promotional = case((e.c.account == accounts[1], e.c.amount), else_=0)
        rows = self.conn.execute(
            select(
                t.c.reference,
                func.coalesce(func.sum(e.c.amount), 0).label("spent"),
                func.coalesce(func.sum(promotional), 0).label("promotional"),
                func.count(func.distinct(t.c.id)).label("transfers"),
            )
            .select_from(t.outerjoin(e, and_(e.c.transfer_id == t.c.id, e.c.account.in_(accounts))))
            .where(and_(t.c.reference.in_(gift_ids), t.c.kind == kind))
            .group_by(t.c.reference)
        )
        return {r.reference: (int(r.spent), int(r.promotional), int(r.transfers)) for r in rows}

    def window_totals(self, start: datetime, end: datetime) -> WindowTotals:
        """What the books' summary reads of a window: purchases by store and currency, refunds by kind
        and currency and their reversals by currency (with what the purchases had cost), and the coins
        promotion claims granted."""
        p, r, c = purchases, purchase_refunds, promotion_claims
        takings = self.conn.execute(
            select(
                p.c.store,
                p.c.currency_code,
                func.count().label("purchases"),
                func.sum(p.c.price_minor).label("amount_minor"),
                func.sum(p.c.coins).label("coins"),
            )
            .where(and_(p.c.created_at >= start, p.c.created_at < end))
            .group_by(p.c.store, p.c.currency_code)
            .order_by(p.c.store, p.c.currency_code)
        )
        refunds = self.conn.execute(
            select(
                r.c.kind,
                p.c.currency_code,
                func.count().label("refunds"),
                func.sum(p.c.price_minor).label("amount_minor"),
                func.sum(r.c.coins_reclaimed).label("coins_reclaimed"),
                func.sum(r.c.debt_added).label("debt_added"),
            )
            .select_from(r.join(p, p.c.purchase_id == r.c.purchase_id))
            .where(and_(r.c.created_at >= start, r.c.created_at < end))
            .group_by(r.c.kind, p.c.currency_code)
            .order_by(r.c.kind, p.c.currency_code)
        )
        i = purchase_reinstatements
        reversals = self.conn.execute(
            select(
                p.c.currency_code,
                func.count().label("reversals"),
                func.sum(p.c.price_minor).label("amount_minor"),
                func.sum(p.c.coins).label("coins"),
            )
            .select_from(i.join(p, p.c.purchase_id == i.c.purchase_id))
            .where(and_(i.c.created_at >= start, i.c.created_at < end))
            .group_by(p.c.currency_code)
            .order_by(p.c.currency_code)
        )
        granted = self.conn.execute(
            select(func.coalesce(func.sum(c.c.coins), 0)).where(and_(c.c.created_at >= start, c.c.created_at < end))
        ).scalar_one()
        return WindowTotals(
            [TakingsRow(**_integers(row._mapping)) for row in takings],
            [RefundsRow(**_integers(row._mapping)) for row in refunds],
            [ReversalsRow(**_integers(row._mapping)) for row in reversals],
            int(granted),
        )

    def outstanding(self, prefixes: Sequence[str]) -> dict[str, int]:
        """Now: the sum of the stored balances of the holder accounts whose codes start with each prefix
        (one pass over the accounts; no entry is read)."""
        a = ledger.accounts
        prefix = case(*[(a.c.code.startswith(p, autoescape=True), literal(p)) for p in prefixes], else_=literal(""))
        rows = self.conn.execute(
            select(prefix.label("prefix"), func.coalesce(func.sum(a.c.balance), 0).label("balance"))
            .where(a.c.platform.is_(False))
            .group_by(prefix)
        )
        totals = dict.fromkeys(prefixes, 0)
        totals.update({r.prefix: int(r.balance) for r in rows if r.prefix})
        return totals

    def outstanding_holds(self) -> tuple[int, int]:
        """(holds still held, the coins they hold): what the wallet's metrics report."""
        row = self.conn.execute(
            select(func.count(), func.coalesce(func.sum(holds.c.amount), 0)).where(holds.c.state == HELD)
        ).one()
        return int(row[0]), int(row[1])

    # ------------------------------------------------------------------------------------------

    def _insert(self, table: Table, values: dict[str, object]) -> None:
        try:
            self.conn.execute(insert(table).values(**values))
        except IntegrityError as exc:
            if is_unique_violation(exc):
                raise Duplicate(table.name) from exc
            raise


def _integers(values: Mapping[Any, Any]) -> dict[str, Any]:
    """A row's values with its sums as ints (PostgreSQL sums bigints as numeric)."""
    return {k: v if isinstance(v, str) else int(v) for k, v in values.items()}


def _hold(row: Row[tuple[object, ...]]) -> HoldRecord:
    values = dict(row._mapping)
    del values["updated_at"]
    return HoldRecord(**values)
