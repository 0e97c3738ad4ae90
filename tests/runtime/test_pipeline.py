"""Statements sent together (runtime.pipeline), on SQLite and PostgreSQL: the same answers, in the same
order, as statements executed one after another; a failure fails the whole transaction."""

from __future__ import annotations

import contextlib
import gc
import weakref
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Connection, bindparam, exc, func, insert, select, text, update

from services.runtime.db import Database, insert_rows, keys_in
from services.runtime.pipeline import Later, pipeline
from tests.runtime.conftest import RuntimeSchema

AT = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)


def claim(caller: str, request_id: str) -> dict[str, object]:
    return {
        "caller": caller,
        "request_id": request_id,
        "method": "/m",
        "fingerprint": "f",
        "state": "succeeded",
        "owner": "",
        "lease_until": AT,
        "created_at": AT,
        "attempts": 1,
        "response": b"\x00\x01",
        "error": None,
    }


def test_statements_sent_together_run_in_order_and_answer_as_executed_alone(schema: RuntimeSchema) -> None:
    t = schema.request_ids
    count = select(func.count()).select_from(t)
    with schema.db.transaction() as conn:
        p = pipeline(conn)
        before = p.send(count)
        p.send(insert(t), claim("a", "1"))
        p.send(insert(t), claim("a", "2"))
        moved = p.send(
            update(t).where(t.c.request_id == bindparam("rid")).values(attempts=2).returning(t.c.request_id),
            {"rid": "2"},
        )
        after = p.send(count)
        read = p.send(
            select(t).where(keys_in([t.c.caller, t.c.request_id], "keys")), {"keys": [("a", "1"), ("a", "9")]}
        )
        assert [r[0] for r in before.get()] == [0]  # reading one answer sends everything queued
        assert [r.request_id for r in moved.get()] == ["2"]
        assert [r[0] for r in after.get()] == [2]
        (row,) = read.get()
        # Typed as the columns are: aware UTC timestamps, bytes.
        assert (row.request_id, row.lease_until, row.response) == ("1", AT, b"\x00\x01")
        assert row._mapping["caller"] == "a"
    with schema.db.transaction() as conn:
        assert conn.execute(count).scalar_one() == 2


def test_statements_still_queued_are_sent_before_one_executed_directly_and_at_the_commit(schema: RuntimeSchema) -> None:
    t = schema.request_ids
    with schema.db.transaction() as conn:
        pipeline(conn).send(insert(t), claim("a", "1"))
        # An ordinary execution sees what was sent before it.
        assert conn.execute(select(func.count()).select_from(t)).scalar_one() == 1
        pipeline(conn).send(insert(t), claim("a", "2"))  # sent with the commit
    with schema.db.engine.begin() as conn:  # a transaction Database did not open: the commit still sends it
        pipeline(conn).send(insert(t), claim("a", "3"))
    with schema.db.transaction() as conn:
        assert sorted(r[0] for r in conn.execute(select(t.c.request_id))) == ["1", "2", "3"]


def test_a_failed_statement_fails_the_transaction_and_nothing_of_it_stays(schema: RuntimeSchema) -> None:
    t = schema.request_ids
    with schema.db.transaction() as conn:
        pipeline(conn).send(insert(t), claim("a", "1"))
    with pytest.raises(exc.IntegrityError), schema.db.transaction() as conn:
        p = pipeline(conn)
        p.send(insert(t), claim("a", "2"))
        p.send(insert(t), claim("a", "1"))  # the primary key again
        p.send(insert(t), claim("a", "3"))
    with pytest.raises(ZeroDivisionError), schema.db.transaction() as conn:
        pipeline(conn).send(insert(t), claim("a", "4"))
        raise ZeroDivisionError  # the work fails: what it queued is never sent
    with schema.db.transaction() as conn:
        assert [r[0] for r in conn.execute(select(t.c.request_id))] == ["1"]


def test_the_runtime_batch_helpers_and_later_answers(schema: RuntimeSchema) -> None:
    t = schema.request_ids
    with schema.db.transaction() as conn:
        rows = [claim("b", str(i)) | {"created_at": AT + timedelta(seconds=i)} for i in range(3)]
        inserted = insert_rows(conn, t, rows, unless_conflict_on=["caller", "request_id"], returning=["request_id"])
        again = insert_rows(conn, t, rows[:1], unless_conflict_on=["caller", "request_id"], returning=["request_id"])
        assert [r.request_id for r in inserted.get()] == ["0", "1", "2"] and again.get() == []
    known = Later.of(41).then(lambda n: n + 1)
    assert known.get() == 42
    with schema.db.transaction() as conn:
        oldest = pipeline(conn).send(select(func.min(t.c.created_at)).select_from(t)).then(lambda r: r[0][0])
        assert oldest.get() in (AT, AT.replace(tzinfo=None))  # an aggregate's type is the database's own
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_a_transaction_leaves_nothing_behind_once_it_ended(schema: RuntimeSchema) -> None:
    # Every transaction of a service goes through here: what one keeps for its connection must go with it.
    t = schema.request_ids
    ended: list[weakref.ref[Connection]] = []

    def work(conn: Connection, i: int) -> None:
        ended.append(weakref.ref(conn))
        pipeline(conn).send(insert(t), claim("c", str(i)))
        pipeline(conn).send(select(func.count()).select_from(t)).get()
        pipeline(conn).send(insert(t), claim("c", f"{i}-after"))  # sent with the commit
        if i < 0:
            raise ZeroDivisionError  # the work fails: rolled back

    for i in (1, 2, 3, -1):
        # (not pytest.raises: the exception it keeps holds the frames of the transaction)
        with contextlib.suppress(ZeroDivisionError):
            schema.db.run(partial(work, i=i))
    gc.collect()
    assert len(ended) == 4 and [ref for ref in ended if ref() is not None] == []
    with schema.db.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(t)).scalar_one() == 6


def test_statements_prepared_on_a_connection_outlive_its_rollbacks(schema: RuntimeSchema) -> None:
    # The pipeline prepares a statement once per connection. psycopg, preparing statements itself,
    # deallocated every statement of the session after a rollback (its own and the pipeline's).
    t = schema.request_ids
    count = select(func.count()).select_from(t)
    db = Database.from_url(schema.db.engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        for i in range(3):
            with db.transaction() as conn:
                assert pipeline(conn).send(count).get() == [(i,)]
                pipeline(conn).send(insert(t), claim("p", str(i)))
            with pytest.raises(ZeroDivisionError), db.transaction() as conn:
                for _ in range(6):  # what a driver would prepare: run often, the ordinary way
                    conn.execute(count).scalar_one()
                raise ZeroDivisionError  # rolled back
    finally:
        db.dispose()


def test_a_connection_lost_under_the_pipeline_fails_its_transaction_and_the_next_gets_a_new_one(
    schema: RuntimeSchema,
) -> None:
    if schema.db.engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL connection's loss")
    backend = select(func.pg_backend_pid())
    db = Database.from_url(schema.db.engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        pid = db.run(lambda conn: pipeline(conn).send(backend).get()[0][0])
        with schema.db.transaction() as admin:
            admin.execute(select(func.pg_terminate_backend(pid, 5000)))  # returns once it is gone
        with pytest.raises(exc.OperationalError):
            db.run(lambda conn: pipeline(conn).send(backend).get())
        assert db.run(lambda conn: pipeline(conn).send(backend).get()[0][0]) != pid
    finally:
        db.dispose()
