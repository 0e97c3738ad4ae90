"""The runtime's batch paths, on SQLite and PostgreSQL: the request-id store's batches, the ledger's
batched movements, the multi-row statements and the Batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from giftcoin.wallet.v1 import wallet_pb2
from sqlalchemy import Connection, event, func, select, text

from services.runtime.batching import Batcher, BatcherClosed
from services.runtime.clock import FakeClock
from services.runtime.db import insert_rows, update_rows
from services.runtime.errors import DomainError, failed_precondition, unavailable
from services.runtime.idempotency import BatchItem, RequestIdStore, fingerprint
from services.runtime.ledger import Ledger, Movement, Overdraft, Posting, ledger_problems
from tests.runtime.conftest import RuntimeSchema

METHOD = "/giftcoin.wallet.v1.WalletService/HoldCoins"
GIFTING = "service:gifting"


@pytest.fixture
def store(schema: RuntimeSchema, clock: FakeClock) -> RequestIdStore:
    return RequestIdStore(schema.db, schema.request_ids, clock, lease_seconds=30)


def hold(request_id: str, amount: int = 5) -> wallet_pb2.HoldCoinsRequest:
    return wallet_pb2.HoldCoinsRequest(request_id=request_id, gift_id=f"g-{request_id}", user_id="alice", amount=amount)


def item(request_id: str, amount: int = 5, caller: str = GIFTING) -> BatchItem:
    return BatchItem(caller, METHOD, hold(request_id, amount), request_id)


class Work:
    """Batch work answering each new item by its amount: 13 is refused for good, 99 fails transiently."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, conn: Connection, new: list[int], items: list[BatchItem]) -> list:
        outcomes: list[wallet_pb2.HoldCoinsResponse | DomainError] = []
        for i in new:
            request = items[i].request
            assert isinstance(request, wallet_pb2.HoldCoinsRequest)
            self.seen.append(request.request_id)
            if request.amount == 13:
                outcomes.append(failed_precondition("INSUFFICIENT_FUNDS", "no", amount=13))
            elif request.amount == 99:
                outcomes.append(unavailable("DEPENDENCY_UNAVAILABLE", "later"))
            else:
                outcomes.append(
                    wallet_pb2.HoldCoinsResponse(
                        hold=wallet_pb2.Hold(hold_id=f"h-{request.request_id}", amount=request.amount)
                    )
                )
        return outcomes


def run_batch(store: RequestIdStore, work: Work, items: list[BatchItem]) -> list:
    return store.execute_batch(
        items, wallet_pb2.HoldCoinsResponse, lambda conn, new, _reads: work(conn, new, items), lambda conn: None
    )


def reason(outcome: object) -> object:
    return (outcome.code, outcome.reason) if isinstance(outcome, DomainError) else outcome.hold.hold_id  # type: ignore[attr-defined]


def test_each_item_of_a_batch_is_decided_as_execute_would_decide_it(store: RequestIdStore) -> None:
    work = Work()
    first = run_batch(store, work, [item("a"), item("b", 13), item("c", 99), item("a")])
    assert [reason(o) for o in first] == [
        "h-a",
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        (grpc.StatusCode.ABORTED, "REQUEST_IN_FLIGHT"),  # the same id twice in one batch
    ]
    assert work.seen == ["a", "b", "c"]
    # Again: a success and a business failure are replayed, the transient failure runs again,
    # the same id with another request is refused, another caller's id is its own.
    again = run_batch(
        store, work, [item("a"), item("b", 13), item("c", 7), item("a", 6), item("a", caller="service:x")]
    )
    assert [reason(o) for o in again] == [
        "h-a",
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        "h-c",
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
        "h-a",
    ]
    assert again[0] == first[0]
    assert work.seen == ["a", "b", "c", "c", "a"]


def test_a_batch_item_and_the_unary_call_share_one_request_id(store: RequestIdStore) -> None:
    work = Work()
    (batched,) = run_batch(store, work, [item("a")])
    unary_runs: list[str] = []

    def unary(conn: Connection) -> wallet_pb2.HoldCoinsResponse:
        unary_runs.append("ran")
        return wallet_pb2.HoldCoinsResponse()

    assert store.execute(GIFTING, METHOD, hold("a"), "a", wallet_pb2.HoldCoinsResponse, unary) == batched
    reply = store.execute(
        GIFTING,
        METHOD,
        hold("u"),
        "u",
        wallet_pb2.HoldCoinsResponse,
        lambda conn: wallet_pb2.HoldCoinsResponse(hold=wallet_pb2.Hold(hold_id="unary")),
    )
    assert run_batch(store, work, [item("u")]) == [reply]
    assert unary_runs == [] and work.seen == ["a"]


def test_a_claim_in_flight_is_aborted_and_a_dead_one_taken_over_once_its_lease_passed(
    store: RequestIdStore, schema: RuntimeSchema, clock: FakeClock
) -> None:
    """A unary call's claim (`running`, leased), as a call still running or a process that died left it."""
    claimed = item("a")
    with schema.db.transaction() as conn:
        conn.execute(
            schema.request_ids.insert(),
            {
                "caller": GIFTING,
                "request_id": "a",
                "method": METHOD,
                "fingerprint": fingerprint(claimed.method, claimed.request),
                "state": "running",
                "owner": "another-call",
                "lease_until": clock.now() + timedelta(seconds=30),
                "created_at": clock.now(),
                "attempts": 1,
            },
        )
    work = Work()
    assert [reason(o) for o in run_batch(store, work, [claimed])] == [(grpc.StatusCode.ABORTED, "REQUEST_IN_FLIGHT")]
    assert work.seen == []
    clock.advance(seconds=31)  # nothing of the dead call committed: the batch takes its id over
    assert [reason(o) for o in run_batch(store, work, [claimed])] == ["h-a"]
    assert [reason(o) for o in run_batch(store, work, [claimed])] == ["h-a"]
    assert work.seen == ["a"]


def test_a_batch_finds_its_ids_by_the_primary_key(store: RequestIdStore, schema: RuntimeSchema) -> None:
    """By request id alone, PostgreSQL scans every id kept (a day's worth) for each batch."""
    if schema.db.engine.dialect.name != "postgresql":
        pytest.skip("a query plan of PostgreSQL")
    keys = [(GIFTING, "a"), (GIFTING, "b")]
    with schema.db.transaction() as conn:
        # A plan without a usable index still scans; the table is tiny here, so joins that read it
        # whole (hash, merge) would win on cost whatever the query's shape.
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            conn.execute(text(f"SET LOCAL {setting} = off"))
        query = store._select_batch.params(keys=keys).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        plan = conn.exec_driver_sql(f"EXPLAIN {query}").all()
    text_plan = "\n".join(row[0] for row in plan)
    # Looked up in the primary key's index by its leading column (an index condition on request_id
    # alone reads the whole index, as a scan reads the whole table).
    conditions = [line for line in text_plan.splitlines() if "Index Cond" in line]
    assert any("caller" in line for line in conditions) and "Seq Scan" not in text_plan, text_plan


# --- the ledger's batches ---------------------------------------------------------------------------


def test_movements_posted_together_are_each_a_transfer_and_balances_move_by_their_sum(
    schema: RuntimeSchema, clock: FakeClock
) -> None:
    now = clock.now()
    with schema.db.transaction() as conn:
        ledger = Ledger(schema.ledger, conn)
        ledger.open_account("platform:issued", "coin", now, platform=True)
        for user in ("alice", "bob"):
            ledger.open_account(f"user:{user}", "coin", now)
        ids = ledger.post_many(
            [
                Movement("grant", "g1", [Posting("platform:issued", -50), Posting("user:alice", 50)]),
                # alice spends coins granted in the same batch: only the batch's sum must stay >= 0
                Movement("gift", "g2", [Posting("user:alice", -30), Posting("user:bob", 30)]),
                Movement("grant", "g3", [Posting("platform:issued", -5), Posting("user:bob", 5)]),
            ],
            now,
        )
        assert len(set(ids)) == 3
    with schema.db.transaction() as conn:
        ledger = Ledger(schema.ledger, conn)
        assert ledger.balances(["user:alice", "user:bob", "platform:issued"]) == {
            "user:alice": 20,
            "user:bob": 35,
            "platform:issued": -55,
        }
        assert ledger_problems(schema.ledger, conn) == []
        count = conn.execute(select(func.count()).select_from(schema.ledger.entries)).scalar_one()
        assert count == 6
    # A batch that would leave a holder below zero is refused whole.
    with pytest.raises(Overdraft), schema.db.transaction() as conn:
        Ledger(schema.ledger, conn).post_many(
            [
                Movement("gift", "g4", [Posting("user:bob", -10), Posting("user:alice", 10)]),
                Movement("gift", "g5", [Posting("user:alice", -40), Posting("user:bob", 40)]),
            ],
            now,
        )
    with schema.db.transaction() as conn:
        assert Ledger(schema.ledger, conn).balances(["user:alice", "user:bob"]) == {"user:alice": 20, "user:bob": 35}
        assert ledger_problems(schema.ledger, conn) == []


def test_many_rows_in_one_statement_skip_conflicts_and_guard_updates(schema: RuntimeSchema, clock: FakeClock) -> None:
    t, now = schema.ledger.accounts, clock.now()
    rows = [{"code": f"a{i}", "unit": "coin", "platform": False, "balance": i, "created_at": now} for i in range(3)]
    with schema.db.transaction() as conn:
        assert {r.code for r in insert_rows(conn, t, rows, unless_conflict_on=["code"], returning=["code"]).get()} == {
            "a0",
            "a1",
            "a2",
        }
    platform: dict[str, Any] = {"code": "a3", "unit": "coin", "platform": True, "balance": None, "created_at": now}
    again = [*rows[1:], platform]
    with schema.db.transaction() as conn:
        inserted = insert_rows(conn, t, again, unless_conflict_on=["code"], returning=["code"]).get()
        assert [r.code for r in inserted] == ["a3"]
        changed = update_rows(
            conn, t, "code", [{"code": "a1", "balance": 10}, {"code": "a3", "balance": 30}], where={"platform": False}
        ).get()
        assert changed == {"a1"}  # a3 is a platform account: the guard left it alone
        balances = {r.code: r.balance for r in conn.execute(select(t.c.code, t.c.balance))}
    assert balances == {"a0": 0, "a1": 10, "a2": 2, "a3": None}


def test_rows_of_any_number_travel_in_one_statement_text_and_read_back_as_written(schema: RuntimeSchema) -> None:
    # One text for every batch size: SQLAlchemy and the database compile it once (a text per size
    # filled SQLAlchemy's statement cache with statements of hundreds of parameters).
    t = schema.request_ids
    at = datetime(2026, 12, 1, 10, 11, 12, 345678, tzinfo=UTC)
    texts: set[str] = set()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO request_ids"):
            texts.add(statement)

    def row(i: int) -> dict[str, Any]:
        return {
            "caller": "c",
            "request_id": f"r{i}",
            "method": "/m",
            "fingerprint": "f" * 64,
            "state": "succeeded",
            "owner": "",
            "lease_until": at + timedelta(microseconds=i),
            "created_at": at,
            "attempts": 2**40 + i,
            "response": bytes([0, 255, i]),
            "error": None if i % 2 else "e\u00e9\"'",
        }

    event.listen(schema.db.engine, "before_cursor_execute", seen)
    try:
        start = 0
        for size in (1, 2, 5, 17):
            with schema.db.transaction() as conn:
                insert_rows(conn, t, [row(i) for i in range(start, start + size)]).get()
            start += size
    finally:
        event.remove(schema.db.engine, "before_cursor_execute", seen)
    if schema.db.engine.dialect.name == "sqlite":  # PostgreSQL's go out through the pipeline, past the event
        assert len(texts) == 1
    with schema.db.transaction() as conn:
        back = {r.request_id: r for r in conn.execute(select(t))}
    for i in range(start):
        r = back[f"r{i}"]
        assert (r.lease_until, r.created_at, r.attempts, r.response, r.error) == (
            at + timedelta(microseconds=i),
            at,
            2**40 + i,
            bytes([0, 255, i]),
            None if i % 2 else "e\u00e9\"'",
        )


# --- the Batcher ------------------------------------------------------------------------------------
# The Batcher lives on an event loop: each test runs its scenario on one of its own.


def test_items_submitted_together_are_processed_together_each_with_its_own_outcome() -> None:
    async def scenario() -> None:
        batches: list[list[int]] = []
        gate = asyncio.Event()

        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            batches.append(items)
            await gate.wait()  # the first batch leads while the others queue up
            return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

        batcher: Batcher[int, int] = Batcher("test", process, max_batch=4, stall_seconds=60)
        calls = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.05)  # item 0 went alone
        calls += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert [o if isinstance(o, int) else str(o) for o in outcomes] == [0, "odd 1", 20, "odd 3", 40, "odd 5", 60]
        # A full batch waited behind the first: it went beside it; the rest waited for one to make way.
        assert batches == [[0], [1, 2, 3, 4], [5, 6]]
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(7)

    asyncio.run(scenario())


def test_a_second_batch_starts_beside_one_in_flight_only_once_a_full_batch_waits() -> None:
    async def scenario() -> None:
        started: list[list[int]] = []
        gate = asyncio.Event()

        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            started.append(items)
            await gate.wait()
            return list[int | BaseException](items)

        batcher: Batcher[int, int] = Batcher("test", process, max_batch=4, stall_seconds=60)
        answers = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.05)
        answers += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 4)]
        await asyncio.sleep(0.2)
        assert started == [[0]]  # three wait for the batch in flight
        answers += [asyncio.ensure_future(batcher.submit(i)) for i in range(4, 6)]
        await asyncio.sleep(0.05)
        assert started == [[0], [1, 2, 3, 4]]  # a full batch waited: it went beside the first
        gate.set()
        assert await asyncio.gather(*answers) == list(range(6))
        assert started == [[0], [1, 2, 3, 4], [5]]
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_that_made_way_lets_the_next_start_beside_it() -> None:
    async def scenario() -> None:
        started: list[list[int]] = []
        head_done = asyncio.Event()  # the first batch's head (gifting's: record, holds, credits)
        gate = asyncio.Event()

        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            started.append(items)
            if items[0] == 0:
                await head_done.wait()
                make_way()
                make_way()  # only the first call counts
            await gate.wait()
            return list[int | BaseException](items)

        batcher: Batcher[int, int] = Batcher("test", process, max_batch=4, stall_seconds=60)
        answers = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.05)
        answers += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 3)]
        await asyncio.sleep(0.2)
        assert started == [[0]]  # two wait: the batch in flight has not made way
        head_done.set()
        await asyncio.sleep(0.05)
        assert started == [[0], [1, 2]]  # beside the first, whose tail still runs
        answers += [asyncio.ensure_future(batcher.submit(3))]
        await asyncio.sleep(0.2)
        assert started == [[0], [1, 2]]  # the second leads now: the third waits for it
        gate.set()
        assert await asyncio.gather(*answers) == list(range(4))
        assert started == [[0], [1, 2], [3]]
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_stalled_on_a_peer_lets_the_next_start_once_it_has_led_too_long() -> None:
    async def scenario() -> None:
        started: list[list[int]] = []
        peer_answers = asyncio.Event()  # the first batch's peer is silent until the end

        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            started.append(items)
            if items[0] == 0:
                await peer_answers.wait()
            return list[int | BaseException](items)

        batcher: Batcher[int, int] = Batcher("test", process, max_batch=64, stall_seconds=0.2)
        stuck = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        # An item that needs no peer waits at most the stall limit, not for the silent peer.
        assert await asyncio.wait_for(batcher.submit(1), timeout=5) == 1
        assert started == [[0], [1]] and not stuck.done()
        peer_answers.set()
        assert await stuck == 0
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_that_fails_whole_fails_each_of_its_callers() -> None:
    async def scenario() -> None:
        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            raise RuntimeError("the database went away")

        batcher: Batcher[int, int] = Batcher("test", process)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert [str(o) for o in outcomes] == ["the database went away"] * 3
        await batcher.close()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_leaves_its_item_in_the_batch() -> None:
    async def scenario() -> None:
        done: list[int] = []
        gate = asyncio.Event()

        async def process(items: list[int], make_way: Callable[[], None]) -> list[int | BaseException]:
            await gate.wait()
            done.extend(items)
            return list[int | BaseException](items)

        batcher: Batcher[int, int] = Batcher("test", process)
        with pytest.raises(TimeoutError):
            await batcher.submit(0, timeout=0.05)
        gate.set()
        await batcher.close()
        assert done == [0]

    asyncio.run(scenario())
