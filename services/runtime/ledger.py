"""A double-entry, append-only ledger, shared by the services that hold value (wallet, payout).

Every movement is a transfer: a set of entries, one per account touched, that sums to zero per unit,
written in the same transaction as the balance changes it explains. Entries are never updated or
deleted; a correction is a new transfer.

Two kinds of account:
- holder accounts (a viewer's coins, a creator's diamonds) keep a stored balance that a database
  CHECK constraint keeps non-negative; the balance moves by a conditional UPDATE, so concurrent
  spends can never overdraw it, on SQLite or PostgreSQL;
- platform accounts (coins issued, revenue, rounding) may go negative, and keep no stored balance:
  their `balance` column is NULL (a CHECK constraint says so), and their balance is derived, the sum
  of their entries (`Ledger.balances` reads it so, as does this query):

      SELECT a.code, a.unit, COALESCE(SUM(e.amount), 0) AS balance
      FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account = a.code
      WHERE a.platform GROUP BY a.code, a.unit;

  Every gift touches them, so a stored balance would be a row that every transaction locks, one at
  a time: every gift of the suite would queue on it.
"""

from __future__ import annotations

import secrets
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Executable,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    case,
    func,
    select,
    text,
)

from services.runtime.db import insert_rows, insert_unless_conflict, keys_in, rows_bindparams, rows_params, rows_source
from services.runtime.errors import DomainError, failed_precondition
from services.runtime.pipeline import Later, pipeline
from services.runtime.tables import UtcDateTime

# Holder balances are stored and never negative; platform balances are not stored (NULL).
PLATFORM_BALANCE_NOT_STORED = (
    "(platform AND balance IS NULL) OR (NOT platform AND balance IS NOT NULL AND balance >= 0)"
)

# The bounds every service keeps its amounts within, far inside the columns' int64. One request moves at
# most MAX_AMOUNT of a unit (validated with the request); a holder's balance is at most MAX_BALANCE: a
# domain refuses a movement that would pass it (`balance_limit_exceeded`), deciding over the balances it
# read. A batch decided over balances read without a lock (payout's credits) may pass MAX_BALANCE by at
# most what its concurrent batches add (500 items of MAX_AMOUNT each): still thousands of times inside
# int64, so no balance reaches a column's range and no sum of balances a float on SQLite.
MAX_AMOUNT = 10**12
MAX_BALANCE = 10**15


def balance_limit_exceeded(holder: str, unit: str, balance: int, amount: int) -> DomainError:
    """The refusal of a movement that would take `holder`'s balance past MAX_BALANCE."""
    return failed_precondition(
        "BALANCE_LIMIT_EXCEEDED",
        f"{holder} holds {balance} {unit}s: {amount} more would pass the limit of {MAX_BALANCE}",
        holder=holder,
        unit=unit,
        balance=balance,
        amount=amount,
        limit=MAX_BALANCE,
    )


@dataclass(frozen=True)
class LedgerTables:
    accounts: Table
    transfers: Table
    entries: Table


def ledger_tables(metadata: MetaData) -> LedgerTables:
    accounts = Table(
        "ledger_accounts",
        metadata,
        Column("code", String(160), primary_key=True),
        Column("unit", String(16), nullable=False),
        Column("platform", Boolean(), nullable=False),
        # A holder's balance; NULL for a platform account, whose balance is the sum of its entries.
        Column("balance", BigInteger(), nullable=True),
        Column("created_at", UtcDateTime(), nullable=False),
        CheckConstraint(PLATFORM_BALANCE_NOT_STORED, name="ck_ledger_accounts_balance"),
    )
    transfers = Table(
        "ledger_transfers",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("reference", String(160), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Index("ix_ledger_transfers_reference", "reference"),
    )
    entries = Table(
        "ledger_entries",
        metadata,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("transfer_id", String(64), ForeignKey("ledger_transfers.id"), nullable=False),
        Column("account", String(160), ForeignKey("ledger_accounts.code"), nullable=False),
        Column("unit", String(16), nullable=False),
        Column("amount", BigInteger(), nullable=False),  # signed: positive raises the account's balance
        Column("created_at", UtcDateTime(), nullable=False),
        CheckConstraint("amount <> 0", name="ck_ledger_entries_nonzero"),
        Index("ix_ledger_entries_account_id", "account", "id"),
        Index("ix_ledger_entries_transfer", "transfer_id"),
    )
    return LedgerTables(accounts, transfers, entries)


class _Statements:
    """A ledger's statements, built once with bound parameters.

    Building a SQLAlchemy statement and deriving its cache key costs several times what executing the
    compiled statement does; the ledger's statements run on every movement of value.
    """

    def __init__(self, t: LedgerTables) -> None:
        a, e = t.accounts, t.entries
        self.account_kinds = select(a.c.code, a.c.unit, a.c.platform).where(keys_in(a.c.code, "codes"))
        self._accounts_table = a
        self._move_balances: dict[tuple[str, bool], Executable] = {}
        # A holder's stored balance; a platform account's sum of its entries (it keeps no stored one).
        entry_sum = select(func.coalesce(func.sum(e.c.amount), 0)).where(e.c.account == a.c.code).scalar_subquery()
        self.balances = select(a.c.code, case((a.c.platform, entry_sum), else_=a.c.balance).label("balance")).where(
            keys_in(a.c.code, "codes")
        )

    def move_balances(self, conn: Connection, moves: Sequence[tuple[str, int]], checked: bool) -> Later[set[str]]:
        """Move holder balances by (code, amount) in one UPDATE (sent in the transaction's pipeline);
        the codes it moved, later. `checked`: each only if it stays at zero or above (the caller reads
        which moved); else each whatever the result, the accounts' CHECK constraint failing the
        transaction if one would go below zero. PostgreSQL and SQLite alike (runtime.db's row sources)."""
        a = self._accounts_table
        rows = [{"code": code, "balance": amount} for code, amount in moves]
        statement = self._move_balances.get((conn.dialect.name, checked))
        if statement is None:
            source = rows_source(conn, a, ("code", "balance"))
            guard = f" AND {a.name}.balance + moves.amount >= 0" if checked else ""
            sql = (
                f"WITH moves (code, amount) AS ({source}) "
                f"UPDATE {a.name} SET balance = {a.name}.balance + moves.amount FROM moves "
                f"WHERE {a.name}.code = moves.code{guard} RETURNING {a.name}.code"
            )
            statement = text(sql).bindparams(*rows_bindparams())
            self._move_balances[(conn.dialect.name, checked)] = statement
        params = rows_params(conn, a, ("code", "balance"), rows)
        return pipeline(conn).send_as(statement, params, lambda moved: {row[0] for row in moved})


_statements: dict[int, _Statements] = {}


def _statements_of(tables: LedgerTables) -> _Statements:
    built = _statements.get(id(tables))
    if built is None:  # once per set of tables (per service); a race only builds it twice
        built = _statements[id(tables)] = _Statements(tables)
    return built


@dataclass(frozen=True)
class Posting:
    account: str
    amount: int  # signed


@dataclass(frozen=True)
class Movement:
    """One transfer of a batch (`Ledger.post_many`)."""

    kind: str
    reference: str
    postings: Sequence[Posting]
    transfer_id: str = ""


class Overdraft(Exception):
    """A holder account would go below zero; nothing was written."""

    def __init__(self, account: str, amount: int) -> None:
        super().__init__(f"account {account} cannot take {amount}")
        self.account = account
        self.amount = amount


class UnbalancedTransfer(ValueError):
    """Entries that do not sum to zero per unit: a programming error, never written."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Ledger:
    """The ledger inside one unit of work (one open transaction)."""

    def __init__(self, tables: LedgerTables, conn: Connection) -> None:
        self.t = tables
        self.conn = conn
        self.sql = _statements_of(tables)

    def open_account(self, code: str, unit: str, now: datetime, platform: bool = False) -> None:
        """Create the account if it does not exist (idempotent)."""
        values = {
            "code": code,
            "unit": unit,
            "platform": platform,
            "balance": None if platform else 0,
            "created_at": now,
        }
        insert_unless_conflict(self.conn, self.t.accounts, values, on=["code"])

    def post(self, kind: str, reference: str, postings: Sequence[Posting], now: datetime, transfer_id: str = "") -> str:
        """Write one transfer (the batch of one); raises Overdraft if a holder would go negative, after
        which the caller's transaction must roll back."""
        return self.post_many([Movement(kind, reference, postings, transfer_id)], now)[0]

    def post_many(self, movements: Sequence[Movement], now: datetime, checked: bool = True) -> list[str]:
        """Write many transfers in a constant number of statements; their ids, in order.

        For the batch paths: one read of the accounts' kinds (remembered), one UPDATE of every holder
        balance the batch moves (by its net amount), one INSERT of the transfers and one of the
        entries, all sent in the transaction's pipeline. `checked`: raises Overdraft if a holder's
        balance would end below zero (the caller's transaction must then roll back; this reads the
        update's answer, so what is queued is sent now). Unchecked, for callers that decided every
        movement over balances they locked: the accounts' CHECK constraint fails the transaction
        instead, when the statements are sent (with the commit, usually).
        """
        written: list[tuple[str, str, str, list[Posting]]] = []
        for m in movements:
            postings = [p for p in m.postings if p.amount != 0]
            if not postings:
                raise UnbalancedTransfer(f"{m.kind} {m.reference}: a transfer needs at least one non-zero entry")
            written.append((m.transfer_id or new_id("tr"), m.kind, m.reference, postings))
        if not written:
            return []
        accounts = self._accounts({p.account for _, _, _, postings in written for p in postings})
        net: dict[str, int] = defaultdict(int)
        for _, kind, reference, postings in written:
            _check_balanced(kind, reference, postings, accounts)
            for p in postings:
                if not accounts[p.account][1]:  # platform accounts keep no stored balance
                    net[p.account] += p.amount
        self._write(written, accounts, now)
        # The balances last: a busy holder's row (a popular creator's diamonds) stays locked for less.
        moves = sorted((code, amount) for code, amount in net.items() if amount != 0)
        if moves:
            moved = self.sql.move_balances(self.conn, moves, checked)
            if checked:
                done = moved.get()
                for code, amount in moves:
                    if code not in done:
                        raise Overdraft(code, amount)
        return [transfer_id for transfer_id, _, _, _ in written]

    def _write(
        self,
        transfers: Sequence[tuple[str, str, str, Sequence[Posting]]],
        accounts: dict[str, tuple[str, bool]],
        now: datetime,
    ) -> None:
        """The transfer rows and their entries: two statements, whatever their number."""
        insert_rows(
            self.conn,
            self.t.transfers,
            [{"id": i, "kind": k, "reference": r, "created_at": now} for i, k, r, _ in transfers],
        )
        insert_rows(
            self.conn,
            self.t.entries,
            [
                {
                    "transfer_id": i,
                    "account": p.account,
                    "unit": accounts[p.account][0],
                    "amount": p.amount,
                    "created_at": now,
                }
                for i, _, _, postings in transfers
                for p in postings
            ],
        )

    def balance(self, code: str) -> int:
        """A holder's stored balance, or a platform account's sum of entries (0 for an unknown account)."""
        return self.balances([code])[code]

    def balances(self, codes: Iterable[str]) -> dict[str, int]:
        """`balance` of each account, in one query whatever their number (0 for an unknown account)."""
        return self.balances_later(codes).get()

    def balances_later(self, codes: Iterable[str]) -> Later[dict[str, int]]:
        """`balances`, sent in the transaction's pipeline: read later."""
        known = list(dict.fromkeys(codes))

        def read(rows: list[Any]) -> dict[str, int]:
            result = dict.fromkeys(known, 0)
            result.update({r.code: int(r.balance) for r in rows})
            return result

        return pipeline(self.conn).send_as(self.sql.balances, {"codes": known}, read)

    def _accounts(self, codes: set[str]) -> dict[str, tuple[str, bool]]:
        """unit and platform flag of each account.

        Remembered per database (engine) once read: an account's unit and kind never change, and
        every movement asks for them. A cached account was committed (read back in a transaction
        that then committed or not: if not, the entries' foreign key still refuses a phantom).
        """
        known = _kinds.setdefault(self.conn.engine, {})
        found = {code: known[code] for code in codes if code in known}
        missing = codes - found.keys()
        if missing:
            rows = pipeline(self.conn).send(self.sql.account_kinds, {"codes": sorted(missing)}).get()
            read = {r.code: (r.unit, bool(r.platform)) for r in rows}
            if len(known) > _KINDS_REMEMBERED:
                known.clear()
            known.update(read)
            found.update(read)
            missing -= read.keys()
        if missing:
            raise KeyError(f"ledger accounts not opened: {sorted(missing)}")
        return found


# Accounts' (unit, platform) per engine; bounded: a busy wallet has millions of accounts.
_kinds: weakref.WeakKeyDictionary[Engine, dict[str, tuple[str, bool]]] = weakref.WeakKeyDictionary()
_KINDS_REMEMBERED = 100_000


def _check_balanced(
    kind: str, reference: str, postings: Sequence[Posting], accounts: dict[str, tuple[str, bool]]
) -> None:
    totals: dict[str, int] = defaultdict(int)
    for p in postings:
        totals[accounts[p.account][0]] += p.amount
    if any(totals.values()):
        raise UnbalancedTransfer(f"{kind} {reference}: entries do not sum to zero per unit: {dict(totals)}")


def ledger_problems(tables: LedgerTables, conn: Connection) -> list[str]:
    """Every way the ledger breaks its invariants; empty when it is sound.

    - each transfer's entries sum to zero per unit;
    - each unit's entries sum to zero over the whole ledger;
    - each holder account's stored balance equals the sum of its entries, and is not negative.
    """
    e, a = tables.entries, tables.accounts
    problems = [
        f"transfer {r.transfer_id} sums to {r.total} {r.unit}"
        for r in conn.execute(
            select(e.c.transfer_id, e.c.unit, func.sum(e.c.amount).label("total"))
            .group_by(e.c.transfer_id, e.c.unit)
            .having(func.sum(e.c.amount) != 0)
        )
    ]
    problems += [
        f"unit {r.unit} sums to {r.total}"
        for r in conn.execute(
            select(e.c.unit, func.sum(e.c.amount).label("total")).group_by(e.c.unit).having(func.sum(e.c.amount) != 0)
        )
    ]
    sums = {
        r.account: r.total
        for r in conn.execute(select(e.c.account, func.sum(e.c.amount).label("total")).group_by(e.c.account))
    }
    for r in conn.execute(select(a.c.code, a.c.balance).where(a.c.platform.is_(False))):
        if r.balance != sums.get(r.code, 0) or r.balance < 0:
            problems.append(f"account {r.code} balance {r.balance} != entries {sums.get(r.code, 0)}")
    return problems
