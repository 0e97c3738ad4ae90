"""GuardedCalls: the one way the servicers run mutating work under a request id (SPEC §6)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from giftcoin.wallet.v1 import wallet_pb2
from sqlalchemy import Connection, MetaData, func, select

from services.runtime.audit import AuditLog, audit_table
from services.runtime.auth import Caller, CallerKind, reset_current_caller, set_current_caller
from services.runtime.clock import FakeClock
from services.runtime.errors import DomainError, failed_precondition
from services.runtime.guarded import GuardedCalls
from services.runtime.idempotency import RequestIdStore
from services.runtime.ledger import Ledger, Posting
from services.runtime.validation import Validator
from tests.runtime.conftest import RuntimeSchema

SERVICE = "giftcoin.wallet.v1.WalletService"


class Unit:
    """A stand-in for a service's unit of work: repository calls over the transaction it is given."""

    def __init__(self, schema: RuntimeSchema, clock: FakeClock, conn: Connection) -> None:
        self.ledger = Ledger(schema.ledger, conn)
        self.clock = clock

    def grant(self, amount: int) -> None:
        self.ledger.post(
            "grant", "test", [Posting("platform:issued", -amount), Posting("user:alice", amount)], self.clock.now()
        )


@pytest.fixture
def caller() -> Iterator[Caller]:
    who = Caller(CallerKind.SERVICE, "gifting")
    token = set_current_caller(who)
    yield who
    reset_current_caller(token)


@pytest.fixture
def calls(schema: RuntimeSchema, clock: FakeClock) -> GuardedCalls[Unit]:
    with schema.db.transaction() as conn:
        ledger = Ledger(schema.ledger, conn)
        ledger.open_account("platform:issued", "coin", clock.now(), platform=True)
        ledger.open_account("user:alice", "coin", clock.now())
    audit = audit_table(MetaData())
    audit.create(schema.db.engine)
    return GuardedCalls(
        SERVICE,
        RequestIdStore(schema.db, schema.request_ids, clock),
        lambda conn: Unit(schema, clock, conn),
        AuditLog(schema.db, audit, clock),
    )


def transfers(schema: RuntimeSchema) -> int:
    with schema.db.transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.ledger.transfers)).scalar_one())


def hold(request_id: str, amount: int = 5) -> wallet_pb2.HoldCoinsRequest:
    return wallet_pb2.HoldCoinsRequest(request_id=request_id, gift_id="g1", user_id="alice", amount=amount)


def granted(uow: Unit, amount: int) -> wallet_pb2.HoldCoinsResponse:
    uow.grant(amount)
    return wallet_pb2.HoldCoinsResponse(hold=wallet_pb2.Hold(hold_id=str(uuid.uuid4()), amount=amount))


def test_once_runs_the_work_once_and_replays_its_answer(calls, schema, caller) -> None:
    request = hold(str(uuid.uuid4()))
    first = calls.once("HoldCoins", request, wallet_pb2.HoldCoinsResponse, lambda uow: granted(uow, 5))
    again = calls.once("HoldCoins", request, wallet_pb2.HoldCoinsResponse, lambda uow: granted(uow, 5))
    assert again == first
    assert transfers(schema) == 1


def test_a_batch_rpc_replays_what_its_unary_method_answered(calls, schema, caller) -> None:
    request = hold(str(uuid.uuid4()))
    first = calls.once("HoldCoins", request, wallet_pb2.HoldCoinsResponse, lambda uow: granted(uow, 5))
    fresh = hold(str(uuid.uuid4()), amount=7)

    def work(uow: Unit, new: list[wallet_pb2.HoldCoinsRequest], _: None) -> list[wallet_pb2.HoldCoinsResponse]:
        return [granted(uow, r.amount) for r in new]

    answers = calls.each(
        "HoldCoins", [request, fresh], lambda r: Validator(), wallet_pb2.HoldCoinsResponse, work, lambda uow, rs: None
    )
    assert answers[0] == first
    assert isinstance(answers[1], wallet_pb2.HoldCoinsResponse) and answers[1].hold.amount == 7
    assert transfers(schema) == 2


def test_a_refusal_is_recorded_and_replayed_without_running_again(calls, schema, caller) -> None:
    runs = []

    def refuse(uow: Unit) -> wallet_pb2.HoldCoinsResponse:
        runs.append(1)
        raise failed_precondition("INSUFFICIENT_FUNDS", "not enough coins")

    request = hold(str(uuid.uuid4()))
    for _ in range(2):
        with pytest.raises(DomainError) as refused:
            calls.once("HoldCoins", request, wallet_pb2.HoldCoinsResponse, refuse)
        assert refused.value.reason == "INSUFFICIENT_FUNDS"
    assert runs == [1]


def test_an_operator_action_keeps_one_audit_record_however_often_it_is_replayed(calls, schema, caller) -> None:
    request = hold(str(uuid.uuid4()))
    for _ in range(3):
        calls.once(
            "HoldCoins", request, wallet_pb2.HoldCoinsResponse, lambda uow: granted(uow, 5), audit_target="alice"
        )
    records, _ = calls.audit.page(10, "") if calls.audit else ([], "")
    assert [(r.actor, r.action, r.target, r.request_id) for r in records] == [
        ("service:gifting", "HoldCoins", "alice", request.request_id)
    ]
    assert transfers(schema) == 1
