"""A transaction's statements sent to PostgreSQL together: one round trip for many (pipeline mode).

Every round trip wakes the database's backend, then the calling thread; under load each wake-up waits
for a CPU, so a batch transaction of ten statements spent most of its time waiting to be scheduled,
not working. Through `send`, a statement is queued and its answer is a `Later`; the statements queued
go to the database together (psycopg's pipeline mode: one write, one wait) when an answer is first
read (`Later.get`), before any statement executed the ordinary way on the connection, and when the
transaction ends: `Database.transaction` sends the statements still queued and the COMMIT together.
So a batch transaction reads what it needs to decide in one round trip (its locks included, taken in
the order sent), and writes what it decided and commits in another.

Writes still queued at the commit cannot be looked at before it: what must hold of them (no second
hold for a gift, no balance below zero, no request id claimed twice) is a constraint, whose failure
fails the transaction, which its caller then decides again.

The queued statements go to PostgreSQL through libpq itself (`psycopg.pq`): each prepared once per
connection and then sent by name, its parameters and rows converted by psycopg's adapters (a
`Transformer`). A psycopg cursor per statement would add a cursor, a query conversion and a result
description to each, client CPU that would outweigh the statement's own libpq calls.

On SQLite (in the process: no round trips) each statement simply runs when it is sent.
"""

from __future__ import annotations

import re
import select
import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import psycopg
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from psycopg import abc, pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable

from services.runtime.telemetry import instrumented

T = TypeVar("T")
U = TypeVar("U")

tracer = trace.get_tracer(__name__)


class _Answer:
    """The rows of one statement, once the database has answered it."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Any] | None = None) -> None:
        self.rows = rows


_UNSET: Any = object()


class Later(Generic[T]):
    """The answer to a statement sent with others: read with `get` (which sends what is queued)."""

    __slots__ = ("_answer", "_convert", "_pipeline", "_value")

    def __init__(self, pipeline: Pipeline | None, answer: _Answer, convert: Callable[[list[Any]], T]) -> None:
        self._pipeline = pipeline
        self._answer = answer
        self._convert = convert
        self._value: T = _UNSET

    @classmethod
    def of(cls, value: T) -> Later[T]:
        """An answer known already."""
        return cls(None, _Answer([]), lambda _rows: value)

    def get(self) -> T:
        if self._value is _UNSET:
            if self._answer.rows is None:
                assert self._pipeline is not None
                self._pipeline.flush()
            assert self._answer.rows is not None
            self._value = self._convert(self._answer.rows)
        return self._value

    def then(self, convert: Callable[[T], U]) -> Later[U]:
        """This answer, converted when read."""
        return Later(self._pipeline, self._answer, lambda rows: convert(self._convert(rows)))


def rows(result: list[Any]) -> list[Any]:
    return result


class _Compiled:
    """A statement compiled once for psycopg: its SQL, how to bind its parameters and read its rows."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("an expanding parameter cannot be sent in a pipeline: use runtime.db.keys_in")
        self.statement = statement  # keeps it alive: the cache is keyed by its id
        self.compiled = compiled
        self.sql = compiled.string
        escaped = dict(getattr(compiled, "escaped_bind_names", None) or {})
        self.binds = [
            (name, escaped.get(name, name), bind.type.bind_processor(dialect))
            for bind, name in compiled.bind_names.items()
        ]
        # libpq's form: `$n` placeholders (psycopg's dialect renders `%(name)s`, and `%%` for `%`).
        self.order: list[str] = []
        self.libpq_sql = _PLACEHOLDER.sub(self._number, self.sql).encode()
        self.text_formats = [PyFormat.TEXT] * len(self.order)
        columns = getattr(statement, "selected_columns", None) or getattr(statement, "exported_columns", None) or ()
        self.processors = [c.type.result_processor(dialect, None) for c in columns]

    def _number(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in self.order:
            self.order.append(name)
        return f"${self.order.index(name) + 1}"

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        """The statement's parameter values, in `$n` order, as its columns' types bind them."""
        values = self.compiled.construct_params(dict(params))
        bound = {
            key: (process(values[name]) if process is not None else values[name]) for name, key, process in self.binds
        }
        return [bound[key] for key in self.order]

    def rows(self, names: Sequence[str], raw: list[tuple[Any, ...]]) -> list[Any]:
        row = _row_type(tuple(names))
        processors = self.processors if len(self.processors) == len(names) else []
        if not any(processors):
            return [row(*r) for r in raw]
        return [row(*(p(v) if p is not None else v for p, v in zip(processors, r, strict=True))) for r in raw]


_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")
_COMPILED: dict[tuple[int, str], _Compiled] = {}
_ROW_TYPES: dict[tuple[str, ...], Any] = {}


def _row_type(names: tuple[str, ...]) -> Any:
    """A row class for these column names: a named tuple with SQLAlchemy Row's `_mapping`."""
    cls = _ROW_TYPES.get(names)
    if cls is None:
        base = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        cls = _ROW_TYPES[names] = type("Row", (base,), {"__slots__": (), "_mapping": property(base._asdict)})
    return cls


class Pipeline:
    """The statements queued in one transaction (one connection), in order."""

    def __init__(self, conn: Connection) -> None:
        # Weakly: the registry below is keyed weakly by the connection, and a strong reference from
        # its value would keep every connection (and its pipeline) alive for good.
        self._conn = weakref.ref(conn)
        self._queue: list[tuple[_Compiled, list[Any], _Answer]] = []
        self._flushing = False

    @property
    def conn(self) -> Connection:
        conn = self._conn()
        if conn is None:
            raise RuntimeError("the pipeline's connection is gone: its transaction ended")
        return conn

    def send(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Later[list[Any]]:
        """Queue `statement` (on SQLite: run it); its rows, later."""
        return self.send_as(statement, params or {}, rows)

    def send_as(self, statement: Executable, params: Mapping[str, Any], convert: Callable[[list[Any]], T]) -> Later[T]:
        if self.conn.dialect.name != "postgresql":
            result = self.conn.execute(statement, dict(params))
            return Later(None, _Answer(list(result.all()) if result.returns_rows else []), convert)
        key = (id(statement), self.conn.dialect.name)
        compiled = _COMPILED.get(key)
        if compiled is None:
            compiled = _COMPILED[key] = _Compiled(statement, self.conn.dialect)
        answer = _Answer()
        self._queue.append((compiled, compiled.parameters(params), answer))
        return Later(self, answer, convert)

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def flush(self, commit: bool = False) -> None:
        """Send what is queued (and the COMMIT) in one round trip; every answer is known after."""
        if self._flushing or not (self._queue or commit):
            return
        queue, self._queue = self._queue, []
        raw = self.conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        self._flushing = True
        span = (
            tracer.start_span("pipeline", kind=SpanKind.CLIENT)
            if _traced(self.conn.engine) and instrumented()
            else None
        )
        try:
            if span is not None and span.is_recording():
                span.set_attribute("db.system", "postgresql")
                span.set_attribute("db.statement", "; ".join(c.sql.split("\n", 1)[0][:80] for c, _, _ in queue))
            answers = _session(raw).run(raw, [(c, values) for c, values, _ in queue], commit)
            for (compiled, _, answer), (names, raw_rows) in zip(queue, answers, strict=True):
                answer.rows = compiled.rows(names, raw_rows) if names else []
        except psycopg.Error as error:
            sent = "; ".join(c.sql for c, _, _ in queue)
            raise exc.DBAPIError.instance(sent, None, error, psycopg.Error) from error
        finally:
            self._flushing = False
            if span is not None:
                span.end()


class _Session:
    """The statements prepared on one PostgreSQL connection, and how a pipeline's round trip runs on it.

    A round trip through libpq in pipeline mode: BEGIN if no transaction is open, the statements
    (each prepared first, the first time this connection sees it), the COMMIT if asked, a sync; then
    every result, in order. After a failed statement PostgreSQL skips the rest up to the sync (the
    transaction is aborted; its owner rolls it back) and the first error is raised. A connection
    that fails mid-way (lost, or an exchange cut short) is closed, so that the pool replaces it.
    """

    def __init__(self, fd: int) -> None:
        self.prepared: dict[bytes, bytes] = {}  # SQL -> the name of the statement prepared for it
        self._names = 0
        self._readable = select.poll()
        self._readable.register(fd, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(fd, select.POLLIN | select.POLLOUT)

    def run(
        self, conn: psycopg.Connection[Any], statements: Sequence[tuple[_Compiled, list[Any]]], commit: bool
    ) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
        pgconn, adapt = conn.pgconn, Transformer(conn)
        # The parameters first: a value that cannot be adapted fails here, before anything is sent.
        params = [
            adapt.dump_sequence(values, compiled.text_formats) if values else None for compiled, values in statements
        ]
        # What each result answers, in order: (kind, SQL, statement name); "statement" results are returned.
        expected: list[tuple[str, bytes, bytes]] = []
        preparing: dict[bytes, bytes] = {}
        try:
            pgconn.enter_pipeline_mode()
            if pgconn.transaction_status == pq.TransactionStatus.IDLE:
                pgconn.send_query_params(b"BEGIN", None)
                expected.append(("command", b"", b""))
            for (compiled, _), values in zip(statements, params, strict=True):
                sql = compiled.libpq_sql
                name = self.prepared.get(sql) or preparing.get(sql)
                if name is None:
                    self._names += 1
                    name = preparing[sql] = f"giftcoin_{self._names}".encode()
                    pgconn.send_prepare(name, sql)  # the parameters' types: as the SQL uses them
                    expected.append(("prepare", sql, name))
                pgconn.send_query_prepared(name, values)
                expected.append(("statement", sql, name))
            if commit:
                pgconn.send_query_params(b"COMMIT", None)
                expected.append(("command", b"", b""))
            pgconn.pipeline_sync()
            self._send(pgconn)
            answers, error = self._read(pgconn, adapt, conn.info.encoding, expected)
            pgconn.exit_pipeline_mode()
        except BaseException:
            conn.close()  # mid-exchange: nothing more can be read from it in order
            raise
        if error is not None:
            raise error
        return answers

    def _send(self, pgconn: pq.abc.PGconn) -> None:
        """Everything buffered out to the server (a batch's parameters may not fit one write)."""
        while pgconn.flush():
            if any(events & select.POLLIN for _, events in self._writable.poll()):
                pgconn.consume_input()  # the server answers while we write: read, so that neither side blocks

    def _read(
        self, pgconn: pq.abc.PGconn, adapt: abc.Transformer, encoding: str, expected: list[tuple[str, bytes, bytes]]
    ) -> tuple[list[tuple[list[str], list[tuple[Any, ...]]]], psycopg.Error | None]:
        answers: list[tuple[list[str], list[tuple[Any, ...]]]] = []
        error: psycopg.Error | None = None
        for kind, sql, name in [*expected, ("sync", b"", b"")]:
            result = self._next_result(pgconn)
            status = result.status
            if status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = psycopg.errors.error_from_result(result, encoding=encoding)
            if kind == "prepare" and status == pq.ExecStatus.COMMAND_OK:
                self.prepared[sql] = name
            elif kind == "statement":
                if status == pq.ExecStatus.TUPLES_OK:
                    adapt.set_pgresult(result)
                    names = [(result.fname(i) or b"").decode(encoding) for i in range(result.nfields)]
                    answers.append((names, adapt.load_rows(0, result.ntuples, tuple)))
                else:
                    answers.append(([], []))
            if kind != "sync" and self._get_result(pgconn) is not None:
                raise psycopg.InterfaceError("a pipelined statement answered with more than one result")
        return answers, error

    def _next_result(self, pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
        result = self._get_result(pgconn)
        if result is None:
            raise psycopg.InterfaceError("a pipelined statement's result is missing")
        return result

    def _get_result(self, pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
        """What libpq has next, once it has it: a result, or the null that ends each statement's results."""
        while pgconn.is_busy():
            self._readable.poll()
            pgconn.consume_input()
        return pgconn.get_result()


_sessions: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Session] = weakref.WeakKeyDictionary()


def _session(conn: psycopg.Connection[Any]) -> _Session:
    found = _sessions.get(conn)
    if found is None:
        found = _sessions[conn] = _Session(conn.pgconn.socket)
    return found


_pipelines: weakref.WeakKeyDictionary[Connection, Pipeline] = weakref.WeakKeyDictionary()
_traced_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def pipeline(conn: Connection) -> Pipeline:
    """The pipeline of the transaction open on `conn`."""
    if conn.dialect.name != "postgresql":
        return Pipeline(conn)  # runs each statement as it is sent: nothing to keep for the commit
    found = _pipelines.get(conn)
    if found is None:
        found = _pipelines[conn] = Pipeline(conn)
    return found


def finish(conn: Connection) -> None:
    """At the end of a transaction's work: the statements still queued and the COMMIT, in one round trip."""
    found = _pipelines.pop(conn, None)
    if found is not None and found.pending:
        found.flush(commit=True)


def _traced(engine: Engine) -> bool:
    return engine in _traced_engines


def mark_traced(engine: Engine) -> None:
    """The engine's statements are traced (as spans): so are its pipelines."""
    _traced_engines.add(engine)


def install(engine: Engine) -> None:
    """On a PostgreSQL engine: a statement executed the ordinary way first sends what is queued (so
    that it runs after it, as written), and a commit not made by `finish` still sends it; a rollback
    forgets it."""

    @event.listens_for(engine, "before_cursor_execute")
    def _send_queued_first(conn: Connection, *_args: Any) -> None:
        found = _pipelines.get(conn)
        if found is not None and found.pending:
            found.flush()

    @event.listens_for(engine, "commit")
    def _send_before_commit(conn: Connection) -> None:
        found = _pipelines.pop(conn, None)
        if found is not None and found.pending:
            found.flush()

    @event.listens_for(engine, "rollback")
    def _forget(conn: Connection) -> None:
        _pipelines.pop(conn, None)
