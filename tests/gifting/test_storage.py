"""Gifting's storage on SQLite and PostgreSQL: the constraints and conditional updates money depends on."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError

from services.gifting import storage
from services.gifting.model import PENDING, RECORDED, TransferRecord
from services.gifting.storage import UnitOfWork
from services.runtime.clock import FakeClock
from services.runtime.db import Database

DAY = date(2026, 1, 1)


@pytest.fixture
def db(make_database: Callable[[str], str]) -> Iterator[Database]:
    database = Database.from_url(make_database("gifting"), pool_size=20)
    yield database
    database.dispose()


def transfer(clock: FakeClock, sender: str = "vince", request_id: str = "", **changes: object) -> TransferRecord:
    now = clock.now()
    record = TransferRecord(
        transfer_id=str(uuid.uuid4()),
        sender_id=sender,
        request_id=request_id or str(uuid.uuid4()),
        fingerprint="f" * 64,
        recipient_id="carol",
        target_kind="live_stream",
        target_id="stream-1",
        gift_id="rose",
        gift_version=1,
        gift_name="Rose",
        quantity=2,
        unit_coin_price=1,
        total_coins=2,
        total_diamonds=1,
        promotional_coins=None,
        credit_deadline=None,
        state=PENDING,
        step=RECORDED,
        failure_reason="",
        failure_error=None,
        hold_expire_at=None,
        spend_day=DAY,
        trace_context="{}",
        lease_owner="",
        lease_until=None,
        attempts=0,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def add(conn: Connection, record: TransferRecord) -> None:
    UnitOfWork(conn).transfers.add_many([record])


def run_at_once(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def reserve(db: Database, asks: list[tuple[str, date, int]], limit: int = 100) -> list[int | None]:
    """Count each (sender, day, coins) in turn against the limit over the locked day totals, as a batch of
    sends does; None if counted, else what the sender had spent."""

    def work(conn: Connection) -> list[int | None]:
        spending = UnitOfWork(conn).spending
        spent = spending.lock((sender, day) for sender, day, _ in asks)()
        totals, refused = dict(spent), []
        for sender, day, coins in asks:
            fits = totals[(sender, day)] + coins <= limit
            refused.append(None if fits else totals[(sender, day)])
            totals[(sender, day)] += coins if fits else 0
        spending.set({key: coins for key, coins in totals.items() if coins != spent[key]})
        return refused

    return db.run(work)


def append(conn: Connection, events: list[tuple[str, TransferRecord]], now: datetime) -> list[tuple[int, int]]:
    """The live-feed events of gifts completed together, numbered as a completing batch numbers them."""
    feed = UnitOfWork(conn).feed
    numbering = feed.number(Counter(target for target, _ in events))()
    return feed.append(events, numbering, now)


def test_the_daily_limit_holds_under_concurrent_batches_of_sends(db: Database) -> None:
    granted: list[str] = []

    def send_batch(i: int) -> None:
        # Each batch: two sends of 10 coins by vince, one by wendy, in an order that varies.
        senders = ["vince", "wendy", "vince"] if i % 2 else ["wendy", "vince", "vince"]
        outcomes = reserve(db, [(s, DAY, 10) for s in senders])
        granted.extend(s for s, refused in zip(senders, outcomes, strict=True) if refused is None)

    run_at_once(8, send_batch)
    assert granted.count("vince") == 10 and granted.count("wendy") == 8
    assert db.run(lambda conn: UnitOfWork(conn).spending.spent("vince", DAY)) == 100
    # Refused: what the sender had spent; in order within a batch: the first fits, the second not.
    db.run(lambda conn: UnitOfWork(conn).spending.give_back("vince", DAY, 10))
    assert reserve(db, [("vince", DAY, 10), ("vince", DAY, 10)]) == [None, 100]
    assert reserve(db, [("vince", DAY + timedelta(days=-1), 101), ("vince", DAY + timedelta(days=-1), 100)]) == [
        0,
        None,
    ]


def test_one_transfer_per_sender_and_request_id(db: Database) -> None:
    clock = FakeClock()
    first = transfer(clock, request_id="r-1")
    db.run(partial(add, record=first))
    with pytest.raises(IntegrityError):  # the same sender's request id again, even in a batch
        db.run(partial(add, record=transfer(clock, request_id="r-1")))
    wendys, other = transfer(clock, sender="wendy", request_id="r-1"), transfer(clock, request_id="r-2")
    with pytest.raises(IntegrityError):
        db.run(lambda conn: UnitOfWork(conn).transfers.add_many([wendys, transfer(clock, request_id="r-1"), other]))
    db.run(lambda conn: UnitOfWork(conn).transfers.add_many([wendys, other]))
    assert db.run(lambda conn: UnitOfWork(conn).transfers.by_request("vince", "r-1")) == first
    found = db.run(
        lambda conn: UnitOfWork(conn).transfers.by_requests([("vince", "r-1"), ("wendy", "r-1"), ("x", "r")])()
    )
    assert found == {("vince", "r-1"): first, ("wendy", "r-1"): wendys}
    # A gift to oneself is refused by the database too.
    with pytest.raises(IntegrityError):
        db.run(partial(add, record=transfer(clock, recipient_id="vince")))


def test_one_replica_at_a_time_holds_a_gifts_lease(db: Database) -> None:
    clock = FakeClock()
    record = transfer(clock)
    db.run(partial(add, record=record))
    now, until = clock.now(), clock.now() + timedelta(seconds=10)
    winners: list[str] = []

    def claim(i: int) -> None:
        if db.run(lambda conn: UnitOfWork(conn).transfers.claim(record.transfer_id, f"r{i}", now, until, False)):
            winners.append(f"r{i}")

    run_at_once(8, claim)
    assert len(winners) == 1
    owner, loser = winners[0], "someone-else"
    # The loser may not write the saga forward; the owner may, once, from the step it is at.
    assert not db.run(lambda conn: UnitOfWork(conn).transfers.advance(record.transfer_id, loser, RECORDED, step="held"))
    assert db.run(lambda conn: UnitOfWork(conn).transfers.advance(record.transfer_id, owner, RECORDED, step="held"))
    assert not db.run(lambda conn: UnitOfWork(conn).transfers.advance(record.transfer_id, owner, RECORDED, step="held"))
    # Once the lease has passed, another replica takes the gift over and the first one is locked out.
    later = now + timedelta(seconds=11)
    assert db.run(lambda conn: UnitOfWork(conn).transfers.claim(record.transfer_id, loser, later, later, False))
    assert db.run(lambda conn: UnitOfWork(conn).transfers.renew([record.transfer_id], owner, later, later)) == set()
    # A gift put back for later is left alone by recovery until then, but a client's retry may take it.
    assert db.run(
        lambda conn: UnitOfWork(conn).transfers.postpone(record.transfer_id, loser, later, later + timedelta(seconds=5))
    )
    assert db.run(lambda conn: UnitOfWork(conn).transfers.unfinished(later, 10)) == []
    assert not db.run(lambda conn: UnitOfWork(conn).transfers.claim(record.transfer_id, "r", later, later, False))
    assert db.run(lambda conn: UnitOfWork(conn).transfers.claim(record.transfer_id, "client", later, later, True))


def test_feed_events_are_numbered_without_gaps_under_concurrent_completions(db: Database) -> None:
    clock = FakeClock()
    records = [transfer(clock, sender=f"viewer{i % 2}") for i in range(12)]
    for record in records:
        db.run(partial(add, record=record))

    def complete(i: int) -> None:
        # Batches of two gifts, each also completing one gift on a second target, in varying order.
        other = transfer(clock, sender=f"viewer{i}")
        db.run(partial(add, record=other))
        batch = [
            ("live_stream:stream-1", records[2 * i]),
            ("video:v", other),
            ("live_stream:stream-1", records[2 * i + 1]),
        ]
        if i % 2:
            batch.reverse()
        db.run(lambda conn: append(conn, batch, clock.now()))

    run_at_once(len(records) // 2, complete)
    events = db.run(lambda conn: UnitOfWork(conn).feed.after("live_stream:stream-1", 0, 100))
    assert [e.sequence for e in events] == list(range(1, 13))
    assert sorted(e.transfer.transfer_id for e in events) == sorted(r.transfer_id for r in records)
    # A combo counts consecutive sends of one gift by one sender.
    for previous, event in itertools.pairwise(events):
        same = previous.transfer.sender_id == event.transfer.sender_id
        assert event.combo_count == (previous.combo_count + 1 if same else 1)
    assert db.run(lambda conn: UnitOfWork(conn).feed.heads(["live_stream:stream-1", "video:v", "video:x"])) == {
        "live_stream:stream-1": 12,
        "video:v": 6,
        "video:x": 0,
    }
    # One event per gift, ever.
    with pytest.raises(IntegrityError):
        db.run(lambda conn: append(conn, [("live_stream:stream-1", records[0])], clock.now()))
    assert len(db.run(lambda conn: conn.execute(select(storage.feed_events)).all())) == 18


def test_a_completion_finds_the_event_before_by_the_feeds_primary_key(db: Database) -> None:
    """A plan made while the events were few (a benchmark's first seconds, a new deployment) must not
    read them all: as a join, PostgreSQL chose to scan and hash the whole table for a batch of
    targets, and a prepared statement kept that plan as the table grew."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a query plan of PostgreSQL")
    clock = FakeClock()
    targets = [f"live_stream:stream-{i}" for i in range(20)]
    records = [transfer(clock, sender=f"viewer{i % 50}") for i in range(1600)]
    db.run(lambda conn: UnitOfWork(conn).transfers.add_many(records))
    db.run(lambda conn: append(conn, [(targets[i % 20], r) for i, r in enumerate(records)], clock.now()))
    with db.engine.connect() as conn:  # outside a transaction: ANALYZE, then the plan on its statistics
        conn.execute(text("ANALYZE feed_events"))
        conn.execute(text("ANALYZE feed_counters"))
        statement = storage._events_before(conn)
        params = storage._counter_params(conn, [{"target_key": t, "last_sequence": 1} for t in targets[:3]])
        plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {statement.text}"), params))
    assert "Seq Scan on feed_events" not in plan and "Index Scan using pk_feed_events" in plan, plan
    # And it reads what the completion needs: each target's event before the last one.
    before = db.run(lambda conn: UnitOfWork(conn).feed.number({targets[0]: 1, targets[1]: 1})())
    assert {t: (n.first, n.previous is not None) for t, n in before.items()} == {
        targets[0]: (81, True),
        targets[1]: (81, True),
    }
