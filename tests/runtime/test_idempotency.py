"""The request-id store's semantics (SPEC §6, AIP-155), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest
from giftcoin.wallet.v1 import wallet_pb2
from sqlalchemy import Connection, func, select

from services.runtime.clock import FakeClock
from services.runtime.errors import DomainError, failed_precondition, unavailable
from services.runtime.idempotency import RequestIdStore
from services.runtime.ledger import Ledger, Posting
from tests.runtime.conftest import RuntimeSchema

METHOD = "/giftcoin.wallet.v1.WalletService/HoldCoins"


def hold_request(request_id: str, amount: int = 5) -> wallet_pb2.HoldCoinsRequest:
    return wallet_pb2.HoldCoinsRequest(request_id=request_id, gift_id="g1", user_id="alice", amount=amount)


class Counter:
    """A unit of work that moves value (one ledger transfer) and counts its runs."""

    def __init__(self, schema: RuntimeSchema, clock: FakeClock) -> None:
        self.schema = schema
        self.clock = clock
        self.runs = 0
        with schema.db.transaction() as conn:
            ledger = Ledger(schema.ledger, conn)
            ledger.open_account("platform:issued", "coin", clock.now(), platform=True)
            ledger.open_account("user:alice", "coin", clock.now())

    def __call__(self, conn: Connection) -> wallet_pb2.HoldCoinsResponse:
        self.runs += 1
        Ledger(self.schema.ledger, conn).post(
            "grant", "test", [Posting("platform:issued", -5), Posting("user:alice", 5)], self.clock.now()
        )
        return wallet_pb2.HoldCoinsResponse(hold=wallet_pb2.Hold(hold_id=f"h{self.runs}", amount=5))

    def transfers(self) -> int:
        with self.schema.db.transaction() as conn:
            return int(conn.execute(select(func.count()).select_from(self.schema.ledger.transfers)).scalar_one())


@pytest.fixture
def store(schema: RuntimeSchema, clock: FakeClock) -> RequestIdStore:
    return RequestIdStore(schema.db, schema.request_ids, clock, lease_seconds=30)


def run(store: RequestIdStore, work, request_id: str, amount: int = 5, caller: str = "service:gifting"):
    request = hold_request(request_id, amount)
    return store.execute(caller, METHOD, request, request_id, wallet_pb2.HoldCoinsResponse, work)


def test_replay_returns_the_first_response_and_moves_value_once(store, schema, clock) -> None:
    work = Counter(schema, clock)
    rid = str(uuid.uuid4())
    first = run(store, work, rid)
    again = [run(store, work, rid) for _ in range(3)]
    assert all(r.SerializeToString() == first.SerializeToString() for r in again)
    assert work.runs == 1 and work.transfers() == 1


def test_same_id_different_request_is_refused(store, schema, clock) -> None:
    work = Counter(schema, clock)
    rid = str(uuid.uuid4())
    run(store, work, rid, amount=5)
    with pytest.raises(DomainError) as refused:
        run(store, work, rid, amount=6)
    assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.reason == "REQUEST_ID_REUSED"
    assert refused.value.metadata["request_id"] == rid
    assert work.transfers() == 1


def test_ids_are_scoped_to_their_caller(store, schema, clock) -> None:
    work = Counter(schema, clock)
    rid = str(uuid.uuid4())
    run(store, work, rid, caller="user:alice")
    run(store, work, rid, caller="user:bob")
    assert work.transfers() == 2


def test_business_failure_keeps_failing_under_its_id(store, schema, clock) -> None:
    rid = str(uuid.uuid4())

    def broke(conn: Connection) -> wallet_pb2.HoldCoinsResponse:
        raise failed_precondition("INSUFFICIENT_FUNDS", "needs 5 coins, has 0", needed=5, available=0)

    with pytest.raises(DomainError) as first:
        run(store, broke, rid)
    work = Counter(schema, clock)  # a top-up: the same request would succeed now
    with pytest.raises(DomainError) as replay:
        run(store, work, rid)
    assert replay.value == first.value
    assert replay.value.reason == "INSUFFICIENT_FUNDS" and replay.value.metadata == {"needed": "5", "available": "0"}
    assert work.runs == 0
    run(store, work, str(uuid.uuid4()))  # a retry after a top-up is a new request
    assert work.runs == 1


@pytest.mark.parametrize("transient", [unavailable("DEPENDENCY_UNAVAILABLE", "down"), RuntimeError("crash")])
def test_transient_failure_frees_the_id_for_a_retry(store, schema, clock, transient) -> None:
    rid = str(uuid.uuid4())

    def flaky(conn: Connection) -> wallet_pb2.HoldCoinsResponse:
        raise transient

    with pytest.raises(type(transient)):
        run(store, flaky, rid)
    work = Counter(schema, clock)
    run(store, work, rid)
    assert work.runs == 1


def test_duplicate_while_running_gets_aborted(store, schema, clock) -> None:
    rid = str(uuid.uuid4())
    counter = Counter(schema, clock)
    started, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> wallet_pb2.HoldCoinsResponse:
        started.set()
        assert release.wait(10)
        return counter(conn)

    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(run(store, slow, rid)))
    first.start()
    assert started.wait(10)
    # On SQLite the first attempt's transaction holds the write lock: the duplicate's claim waits for it,
    # then replays. On PostgreSQL it sees the running claim at once. Either way: never a second run.
    if schema.db.engine.dialect.name == "postgresql":
        with pytest.raises(DomainError) as busy:
            run(store, counter, rid)
        assert busy.value.code is grpc.StatusCode.ABORTED and busy.value.reason == "REQUEST_IN_FLIGHT"
    release.set()
    first.join(10)
    assert run(store, counter, rid) == results[0]
    assert counter.runs == 1


def test_a_crashed_claim_is_taken_over_after_its_lease(store, schema, clock) -> None:
    rid = str(uuid.uuid4())
    request = hold_request(rid)
    from services.runtime.idempotency import fingerprint

    store._claim("service:gifting", rid, METHOD, fingerprint(METHOD, request))  # a process that then died
    work = Counter(schema, clock)
    with pytest.raises(DomainError) as busy:
        run(store, work, rid)
    assert busy.value.reason == "REQUEST_IN_FLIGHT"
    clock.advance(seconds=31)
    run(store, work, rid)
    assert work.runs == 1


def test_ids_are_reaped_after_the_retention_window(store, schema, clock) -> None:
    work = Counter(schema, clock)
    rid = str(uuid.uuid4())
    run(store, work, rid)
    clock.advance(hours=23)
    assert store.reap(24 * 3600) == 0
    run(store, work, rid)
    assert work.runs == 1
    clock.advance(hours=2)
    assert store.reap(24 * 3600) == 1
    run(store, work, rid, amount=6)  # forgotten: a new request
    assert work.runs == 2
