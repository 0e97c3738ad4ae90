"""Storage plumbing shared by the services: engines, transactions with retry, migrations.

Each service owns its database and its tables (SQLAlchemy Core); repositories receive the open
`Connection` of one transaction, so a unit of work is exactly one database transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Date,
    DateTime,
    Engine,
    Executable,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    exc,
    literal,
    text,
    tuple_,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.sqltypes import NullType
from sqlalchemy.sql.visitors import InternalTraversal

from services.runtime.pipeline import Later, finish, install, mark_traced, pipeline
from services.runtime.tables import UtcDateTime
from services.runtime.telemetry import DB_CONNECTIONS, DB_CONNECTIONS_MAX, watch_all

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_SECONDS = 30

SQLITE_UNHEX = "giftcoin_unhex"  # hex text -> bytes, a function of every SQLite connection (make_engine)

# A pooled connection unused for longer than this is checked (a round trip) before it is handed out.
IDLE_PING_SECONDS = 10.0

# PostgreSQL errors that mean "the same transaction may succeed if run again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine for SQLite (the embedded default) or PostgreSQL (psycopg 3)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "isolation_level": None},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.close()
            # bytes in json rows (`rows_source`): SQLite has no unhex() before 3.41
            dbapi_conn.create_function(SQLITE_UNHEX, 1, _sqlite_unhex, deterministic=True)

        # SQLite takes the write lock when a transaction begins, not at its first write: two
        # transactions that both read and then write cannot deadlock on the lock upgrade.
        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    # LIFO: the connection used last is used next, so a light load keeps a few connections (and
    # PostgreSQL backends) busy and warm instead of touching every pooled one in turn. psycopg
    # prepares nothing itself: after a rollback it deallocates every prepared statement of the
    # session (DEALLOCATE ALL), which would take runtime.pipeline's along with its own; the batch
    # paths' statements, the ones that run often, are prepared by runtime.pipeline.
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_use_lifo=True,
        connect_args={"prepare_threshold": None},
    )
    _ping_after_idle(engine)
    install(engine)
    return engine


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle (SQLAlchemy's pool_pre_ping checks every time).

    A connection in steady use has just proved itself; one that sat idle may have been dropped by the
    server, a proxy or a restart. Pinging on every checkout cost a round trip per transaction, and a
    gift takes many transactions. A failed ping makes the pool replace the connection.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as error:
            raise exc.DisconnectionError(f"pooled connection failed its ping: {error}") from error
        if not alive:
            raise exc.DisconnectionError("pooled connection failed its ping")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


_UNLESS_CONFLICT: dict[tuple[str, int, tuple[str, ...], tuple[str, ...]], Executable] = {}


def insert_unless_conflict(conn: Connection, table: Table, values: dict[str, Any], on: Sequence[str] = ()) -> bool:
    """INSERT `values` as a row of `table` unless it conflicts with a unique key (`on`, or any key if
    empty); True if it inserted. Cheaper than a savepoint around a plain INSERT that may conflict.

    On PostgreSQL a conflicting insert still in flight is waited for, so False means that the row
    that won is committed (and readable in a new statement under READ COMMITTED).

    SQLAlchemy 2.0 gives its dialects' `insert(...).on_conflict_do_nothing()` no cache key, so it
    would compile that statement on every execution. The same SQL (PostgreSQL and SQLite
    >= 3.24 share the syntax) as a text() construct typed from the table is compiled once.
    """
    keys, target = tuple(values), tuple(on)
    cache_key = (conn.dialect.name, id(table), keys, target)
    statement = _UNLESS_CONFLICT.get(cache_key)
    if statement is None:
        quote = conn.dialect.identifier_preparer.quote
        conflict = f" ({', '.join(quote(c) for c in target)})" if target else ""
        sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(k) for k in keys)}) "
            f"VALUES ({', '.join(':' + k for k in keys)}) ON CONFLICT{conflict} DO NOTHING"
        )
        typed = text(sql).bindparams(*(bindparam(k, type_=table.c[k].type) for k in keys))
        statement = _UNLESS_CONFLICT[cache_key] = typed.execution_options(preserve_rowcount=True)
    return conn.execute(statement, values).rowcount == 1


class _JsonKeys(TypeDecorator[list[Any]]):
    """A list of keys (values, or tuples of a composite key's values) bound as one json text."""

    impl = Text()
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return _json_text([_json_key(k) for k in value])


class _KeyList(TypeDecorator[list[Any]]):
    """A single column's keys: an array parameter on PostgreSQL (psycopg sends the list as one), one
    json text elsewhere."""

    impl = NullType()  # no cast rendered around the parameter: the SQL casts it to the column's array
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value if value is None else list(value)
        return _json_text([_json_key(k) for k in value])


def _json_key(key: Any) -> Any:
    if isinstance(key, tuple | list):
        return [_json_key(k) for k in key]
    return key.isoformat() if isinstance(key, date) else key  # a date as SQLite stores it too


class KeysIn(ColumnElement[bool]):
    """`columns IN <the keys bound as parameter name>` whose SQL is the same for any number of keys.

    An expanding IN list renders (and PostgreSQL plans) a new statement for every number of keys; a
    batch of a new size paid SQLAlchemy's rendering and PostgreSQL's planning again, and psycopg
    prepares a statement only once it has seen the same text five times. Here the keys travel as one
    parameter: on PostgreSQL a single column's as an array (`= ANY(:keys)`, which its index scans take
    and its planner counts as a few keys) and a composite key's as json read through unnest (also
    counted as a few; a json function counts as a hundred, which makes the planner read a table of
    thousands of rows whole rather than look each key up in its index); on SQLite as json read by
    `json_each`. The parameter's value is a list of keys (tuples for a composite key).
    """

    __visit_name__ = "giftcoin_keys_in"
    inherit_cache = True
    _traverse_internals = [
        ("columns", InternalTraversal.dp_clauseelement_tuple),
        ("param", InternalTraversal.dp_clauseelement),
    ]
    # A condition, but not Boolean-typed: SQLite would render "(...) = 1", which its planner cannot use.
    type = NullType()  # type: ignore[assignment]

    def __init__(self, columns: Sequence[ColumnElement[Any]], name: str) -> None:
        self.columns = tuple(columns)
        self.param = bindparam(name, type_=_KeyList() if len(self.columns) == 1 else _JsonKeys())


def keys_in(columns: ColumnElement[Any] | Sequence[ColumnElement[Any]], name: str) -> KeysIn:
    """The condition that `columns` (one column, or a composite key's) equal one of the keys bound as `name`."""
    return KeysIn([columns] if isinstance(columns, ColumnElement) else columns, name)


@compiles(KeysIn, "postgresql")
def _keys_in_postgresql(element: KeysIn, compiler: Any, **kw: Any) -> str:
    param = compiler.process(element.param, **kw)
    columns = [compiler.process(c, **kw) for c in element.columns]
    types = [c.type.compile(dialect=compiler.dialect) for c in element.columns]
    if len(columns) == 1:
        return f"{columns[0]} = ANY(CAST({param} AS {types[0]}[]))"
    values = ", ".join(f"CAST(k ->> {i} AS {t})" for i, t in enumerate(types))
    keys = f"unnest(ARRAY(SELECT json_array_elements(CAST({param} AS json)))) AS k"
    return f"({', '.join(columns)}) IN (SELECT {values} FROM {keys})"


@compiles(KeysIn)
def _keys_in_sqlite(element: KeysIn, compiler: Any, **kw: Any) -> str:
    param = compiler.process(element.param, **kw)
    columns = [compiler.process(c, **kw) for c in element.columns]
    if len(columns) == 1:
        return f"{columns[0]} IN (SELECT value FROM json_each({param}))"
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return f"({', '.join(columns)}) IN (SELECT {values} FROM json_each({param}))"


# Statements of the batch paths, compiled once per shape (see `rows_source`).
_BATCH_STATEMENTS: dict[tuple[Any, ...], Executable] = {}


def rows_source(conn: Connection, table: Table, names: Sequence[str]) -> str:
    """SQL for rows of values of `names` (columns of `table`), as a row source named by `names`.

    The rows travel as ONE json parameter (`:rows`, made by `rows_params`), so that the statement's
    text is the same whatever the batch size: it is compiled, cached and prepared once. PostgreSQL
    reads it with `json_to_recordset` typed by the columns (the client encodes one string, in C,
    instead of psycopg dumping one array per column element by element, in Python); SQLite with
    `json_each` (a VALUES list per batch size would fill SQLAlchemy's statement cache with a compiled
    statement of hundreds of parameters for every size).
    """
    quote = conn.dialect.identifier_preparer.quote
    if conn.dialect.name == "postgresql":
        columns = ", ".join(f"{quote(c)} {table.c[c].type.compile(dialect=conn.dialect)}" for c in names)
        return f"SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS v ({columns})"
    values = []
    for c in names:
        value = f"json_extract(j.value, '$.{c}')"
        values.append(f"{SQLITE_UNHEX}({value})" if isinstance(table.c[c].type, LargeBinary) else value)
    # WHERE true: SQLite would read an INSERT ... SELECT's ON CONFLICT as a join's ON without it.
    return f"SELECT {', '.join(values)} FROM json_each(:rows) AS j WHERE true"


def _json_timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # as UtcDateTime refuses it
        raise ValueError("naive datetime: giftcoin stores aware UTC timestamps only")
    return value.isoformat()


def _json_date(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _json_bytes(value: bytes | None) -> str | None:
    return None if value is None else "\\x" + bytes(value).hex()  # bytea's hex input


def _json_encoder(column_type: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """How a column's values go into json for the database to read (None: as they are, like strings,
    integers and booleans). PostgreSQL: timestamps and dates in ISO 8601, bytes as bytea's hex; SQLite:
    bytes as hex (for `SQLITE_UNHEX`); any other type through its bind processor (on SQLite: the
    text SQLAlchemy stores timestamps and dates as)."""
    postgresql = dialect.name == "postgresql"
    if isinstance(column_type, String | Integer | Boolean):
        return None
    if isinstance(column_type, LargeBinary):
        return _json_bytes if postgresql else _sqlite_hex
    if postgresql and isinstance(column_type, UtcDateTime | DateTime):
        return _json_timestamp
    if postgresql and isinstance(column_type, Date):
        return _json_date
    process: Callable[[Any], Any] | None = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process


def _sqlite_hex(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).hex()


def _sqlite_unhex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


# (column, its encoder, whether to encode each distinct value once) per table, database and columns.
_JSON_ENCODERS: dict[tuple[int, str, tuple[str, ...]], list[tuple[str, Callable[[Any], Any] | None, bool]]] = {}


def _json_text(value: Any) -> str:
    """Compact json text of rows or keys (strings, integers, booleans, None, lists, dicts), for the
    database to read. orjson, because every batch statement on a gift's path encodes its rows: the
    json is the standard library's compact json (non-ASCII text as UTF-8 rather than escaped, which
    the database reads the same) at a small part of its CPU."""
    return orjson.dumps(value).decode()


def rows_params(conn: Connection, table: Table, names: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The parameter of `rows_source`: all the rows as one json text, each value encoded for its
    column's type (`_json_encoder`, chosen once per table, database and columns)."""
    key = (id(table), conn.dialect.name, tuple(names))
    encoders = _JSON_ENCODERS.get(key)
    if encoders is None:
        types = [table.c[c].type for c in names]
        encoders = _JSON_ENCODERS[key] = [
            (c, _json_encoder(t, conn.dialect), isinstance(t, UtcDateTime | DateTime | Date))
            for c, t in zip(names, types, strict=True)
        ]
    # A batch's rows mostly share their timestamps (its `now`, a deadline from it), and formatting
    # one costs more than the rest of its row: each distinct value is formatted once.
    columns = [
        (c, {v: encode(v) for v in {row[c] for row in rows}}.__getitem__ if once and encode is not None else encode)
        for c, encode, once in encoders
    ]
    encoded = [{c: row[c] if encode is None else encode(row[c]) for c, encode in columns} for row in rows]
    return {"rows": _json_text(encoded)}


def rows_bindparams() -> list[Any]:
    """The bound parameter of `rows_source`."""
    return [bindparam("rows")]


def insert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    unless_conflict_on: Sequence[str] | None = None,
    returning: Sequence[str] = (),
) -> Later[list[Any]]:
    """INSERT `rows` (all with the same keys) in ONE statement, sent in the transaction's pipeline
    (runtime.pipeline); the `returning` columns of the rows inserted, later.

    With `unless_conflict_on` (a unique key's columns), rows that conflict with it are skipped
    (ON CONFLICT DO NOTHING): what RETURNING leaves out is what was skipped. Without it a conflict
    fails the transaction. The batch paths' way to write many rows in one statement: executemany
    costs a pipeline per call on psycopg, and SQLAlchemy gives a multi-row insert().values([...]) no
    cache key.
    """
    conflict = None if unless_conflict_on is None else (tuple(unless_conflict_on), "DO NOTHING")
    return _insert(conn, table, rows, conflict, tuple(returning), {})


def upsert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    on: Sequence[str],
    set_sql: str,
    where_sql: str = "",
    returning: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> Later[list[Any]]:
    """INSERT `rows` in ONE statement (sent in the transaction's pipeline), each row that conflicts
    with the unique key `on` updating the row already there instead: `SET <set_sql>`
    (`excluded.<column>` is the row that was not inserted), only where `where_sql` holds; the
    `returning` columns of the rows inserted or updated, later. `params` are bound to the `:names`
    the two texts use. In key order, concurrent upserts of the same keys
    lock their rows in one order (PostgreSQL) and so never deadlock.
    """
    action = f"DO UPDATE SET {set_sql}" + (f" WHERE {where_sql}" if where_sql else "")
    return _insert(conn, table, rows, (tuple(on), action), tuple(returning), params or {})


def _insert(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict: tuple[tuple[str, ...], str] | None,
    returning: tuple[str, ...],
    params: dict[str, Any],
) -> Later[list[Any]]:
    if not rows:
        return Later.of([])
    names = tuple(rows[0])
    cache_key = ("insert", conn.dialect.name, id(table), names, conflict, returning, tuple(params))
    statement = _BATCH_STATEMENTS.get(cache_key)
    if statement is None:
        quote = conn.dialect.identifier_preparer.quote
        source = rows_source(conn, table, names)
        sql = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in names)}) {source}"
        if conflict is not None:
            target, action = conflict
            sql += f" ON CONFLICT ({', '.join(quote(c) for c in target)}) {action}"
        if returning:
            sql += f" RETURNING {', '.join(quote(c) for c in returning)}"
        bound = rows_bindparams() + [bindparam(name) for name in params]
        typed = text(sql).bindparams(*bound)
        if returning:
            typed = typed.columns(*(table.c[c] for c in returning))  # type: ignore[assignment]
        statement = _BATCH_STATEMENTS[cache_key] = typed
    return pipeline(conn).send(statement, {**rows_params(conn, table, names, rows), **params})


def update_rows(
    conn: Connection,
    table: Table,
    key: str | Sequence[str],
    rows: Sequence[dict[str, Any]],
    where: dict[str, Any] | None = None,
    common: dict[str, Any] | None = None,
) -> Later[set[Any]]:
    """UPDATE many rows of `table` in ONE statement (sent in the transaction's pipeline); the keys of
    the rows it updated (tuples for a composite key), later.

    Each of `rows` (all with the same keys) names its row by its `key` column(s) and gives that row's
    new values; `common` values are set on every row; only rows whose columns also equal `where`
    are touched (a guard, like a saga step's lease). PostgreSQL and SQLite (>= 3.35) alike:
    `WITH v AS (<rows>) UPDATE ... FROM v ... RETURNING`.
    """
    if not rows:
        return Later.of(set())
    where, common = where or {}, common or {}
    keys = (key,) if isinstance(key, str) else tuple(key)
    names = tuple(rows[0])
    cache_key = ("update", conn.dialect.name, id(table), keys, names, tuple(where), tuple(common))
    statement = _BATCH_STATEMENTS.get(cache_key)
    if statement is None:
        quote = conn.dialect.identifier_preparer.quote
        name = quote(table.name)
        sets = [f"{quote(c)} = v.{quote(c)}" for c in names if c not in keys]
        sets += [f"{quote(c)} = :c_{c}" for c in common]
        guards = [f"{name}.{quote(k)} = v.{quote(k)}" for k in keys]
        guards += [f"{name}.{quote(c)} = :w_{c}" for c in where]
        sql = (
            f"WITH v ({', '.join(quote(c) for c in names)}) AS ({rows_source(conn, table, names)}) "
            f"UPDATE {name} SET {', '.join(sets)} FROM v WHERE {' AND '.join(guards)} "
            f"RETURNING {', '.join(f'{name}.{quote(k)}' for k in keys)}"
        )
        typed = rows_bindparams()
        typed += [bindparam(f"c_{c}", type_=table.c[c].type) for c in common]
        typed += [bindparam(f"w_{c}", type_=table.c[c].type) for c in where]
        statement = _BATCH_STATEMENTS[cache_key] = text(sql).bindparams(*typed)
    params = rows_params(conn, table, names, rows)
    params.update({f"c_{c}": v for c, v in common.items()})
    params.update({f"w_{c}": v for c, v in where.items()})
    if len(keys) == 1:
        return pipeline(conn).send_as(statement, params, lambda rows: {r[0] for r in rows})
    return pipeline(conn).send_as(statement, params, lambda rows: {tuple(r) for r in rows})


def after_keys(columns: Sequence[ColumnElement[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows after `values` in the order of `columns`, ascending (where a keyset page starts): one
    row-value comparison, which an index on the columns serves on PostgreSQL and SQLite alike."""
    return tuple_(*columns) > tuple_(*(literal(v, type_=c.type) for c, v in zip(columns, values, strict=True)))


@dataclass(frozen=True)
class Selection:
    """What a listing in (create time, id) order reads (operators' and the reconciler's): the records
    made in [start, end), or those of the given ids (not both; neither: all), after a position."""

    start: datetime | None = None
    end: datetime | None = None
    ids: tuple[str, ...] = ()
    after: tuple[datetime, str] | None = None  # the (create time, id) of the last record already listed


def selected(
    statement: Select[Any],
    created: ColumnElement[Any],
    key: ColumnElement[Any],
    ids: ColumnElement[Any],
    selection: Selection,
    limit: int,
) -> Select[Any]:
    """`statement` narrowed to `selection` (`ids` is the column its ids name), in (created, key) order,
    at most `limit` rows: over an index of (created, key), each page reads only its own rows."""
    if selection.ids:
        statement = statement.where(ids.in_(selection.ids))
    if selection.start is not None:
        statement = statement.where(created >= selection.start)
    if selection.end is not None:
        statement = statement.where(created < selection.end)
    if selection.after is not None:
        statement = statement.where(after_keys([created, key], selection.after))
    return statement.order_by(created, key).limit(limit)


def is_unique_violation(error: exc.IntegrityError) -> bool:
    """A duplicate key, as opposed to a broken CHECK or foreign key (which are bugs, not duplicates)."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == "23505")  # PostgreSQL unique_violation
    return "UNIQUE constraint failed" in str(error.orig)  # SQLite, primary keys included


def _retryable(error: exc.DBAPIError) -> bool:
    if isinstance(error, exc.IntegrityError):
        return is_unique_violation(error)
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    return "database is locked" in str(error.orig)


class Database:
    """One service's database: transactions, retried when the database says they may be.

    Its transactions block, so the event loop hands them to the database's own threads
    (`run_async`), as many as the pool has connections: a thread never waits for a connection,
    and what waits for a thread is the work queued beyond what the database can take at once.
    """

    def __init__(self, engine: Engine, attempts: int = 5, threads: int = 10) -> None:
        self.engine = engine
        self.attempts = attempts
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
        # SQLite runs one transaction at a time (BEGIN IMMEDIATE takes its write lock), and a thread
        # that finds it taken polls with growing sleeps (busy_timeout). Queueing this process's
        # transactions on a lock hands the database over as soon as it is free instead.
        self._sqlite_turn = threading.RLock() if engine.dialect.name == "sqlite" else None
        self._unwatch = _watch_pool(engine)

    @classmethod
    def from_url(cls, url: str, pool_size: int = 10, traced: bool = True) -> Database:
        """A database whose statements are traced as spans under the current RPC's span.

        `traced=False` (no trace exporter configured) leaves the engine uninstrumented: the
        instrumentation costs CPU on every statement and every connection checkout even when its
        spans are never recorded.
        """
        engine = make_engine(url, pool_size=pool_size)
        if traced:
            # Its metric (db.client.connections.usage, an older name) is left out: the pool is
            # measured whatever the trace exporter (db.client.connection.count, _watch_pool).
            SQLAlchemyInstrumentor().instrument(
                engine=engine, enable_commenter=False, meter_provider=NoOpMeterProvider()
            )
            mark_traced(engine)
        return cls(engine, threads=pool_size)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._sqlite_turn is None:
            with self.engine.begin() as conn:
                yield conn
                finish(conn)  # the statements still queued and the COMMIT: one round trip
            return
        # Past the timeout, go ahead anyway: SQLite's own busy handling then decides, as it would without this.
        queued = self._sqlite_turn.acquire(timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            if queued:
                self._sqlite_turn.release()

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; rerun it on a serialization failure, a deadlock, or a unique
        key that a concurrent transaction's commit took first.

        A work decides on what it read, then writes; what must stay unique (a hold per gift, a request
        id) is the database's to enforce. When another transaction committed the same key after this
        one read, the insert fails the transaction, and the work is run again: it then reads what the
        other committed and decides with it (a work that expects a duplicate catches it itself)."""
        for attempt in range(1, self.attempts + 1):
            try:
                with self.transaction() as conn:
                    return work(conn)
            except exc.DBAPIError as error:
                if attempt == self.attempts or not _retryable(error):
                    raise
                log.info("transaction retried after %s (attempt %d)", type(error.orig).__name__, attempt)
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """`run(work)` on one of the database's threads, awaited: the event loop goes on meanwhile."""
        return await self.call_async(functools.partial(self.run, work))

    async def call_async(self, call: Callable[[], T]) -> T:
        """A blocking call that uses this database (a servicer method, a loop's step) on its threads,
        awaited; the caller's context (its identity, its span) goes with it."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, context.run, call)

    def dispose(self) -> None:
        self._unwatch()
        self.executor.shutdown(wait=True)
        self.engine.dispose()


def pool_name(url: str) -> str:
    """The pool's name in metrics, as the semantic conventions ask: `host:port/database`, or the file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Path(parsed.database or ":memory:").name
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


def _watch_pool(engine: Engine) -> Callable[[], None]:
    """db.client.connection.count (used, idle) and .max of the engine's pool, read at each scrape."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return lambda: None
    name = {"db.client.connection.pool.name": pool_name(str(engine.url))}
    return watch_all(
        (
            DB_CONNECTIONS,
            lambda: [
                (pool.checkedout(), {**name, "db.client.connection.state": "used"}),
                (pool.checkedin(), {**name, "db.client.connection.state": "idle"}),
            ],
        ),
        (DB_CONNECTIONS_MAX, lambda: [(pool.size() + pool._max_overflow, name)]),
    )


def alembic_config(migrations_dir: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(migrations_dir: Path, url: str) -> None:
    """Bring a service's database to the newest migration."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        os.makedirs(Path(parsed.database).parent, exist_ok=True)
    command.upgrade(alembic_config(migrations_dir, url), "head")
