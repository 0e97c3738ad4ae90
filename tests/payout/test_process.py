"""The payout service as a real process: health, reflection, and a SIGKILL mid-payout that never pays twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from giftcoin.common.v1 import common_pb2
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.payout import storage
from services.payout.provider import SandboxProvider
from services.runtime.clock import SystemClock
from services.runtime.db import Database
from services.runtime.ledger import ledger_problems
from tests.support.identity import as_caller, operator, service, user
from tests.support.processes import ServiceProcess

FAST_PROCESSOR = {"GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": "100"}


def rid() -> str:
    return str(uuid.uuid4())


def wait_for_state(
    stub: payout_pb2_grpc.PayoutServiceStub,
    payout_id: str,
    state: payout_pb2.PayoutState.ValueType,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    request = payout_pb2.GetPayoutRequest(payout_id=payout_id)
    while time.monotonic() < deadline:
        if stub.GetPayout(request, metadata=as_caller(user("alice")), timeout=5).payout.state == state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"payout {payout_id} never reached {payout_pb2.PayoutState.Name(state)}")


def set_up_payout(stub: payout_pb2_grpc.PayoutServiceStub, destination: str) -> payout_pb2.Payout:
    alice = as_caller(user("alice"))
    stub.RegisterCreator(
        payout_pb2.RegisterCreatorRequest(
            request_id=rid(), date_of_birth=common_pb2.Date(year=1990, month=1, day=1), country_code="US"
        ),
        metadata=alice,
        timeout=10,
    )
    stub.SetPayoutDestination(
        payout_pb2.SetPayoutDestinationRequest(
            request_id=rid(),
            destination=payout_pb2.PayoutDestination(
                kind=payout_pb2.DESTINATION_KIND_SANDBOX, account_reference=destination, currency_code="USD"
            ),
        ),
        metadata=alice,
        timeout=10,
    )
    stub.VerifyCreator(
        payout_pb2.VerifyCreatorRequest(
            request_id=rid(), creator_id="alice", kyc_status=payout_pb2.KYC_STATUS_VERIFIED
        ),
        metadata=as_caller(operator("kyc")),
        timeout=10,
    )
    stub.CreditDiamonds(
        payout_pb2.CreditDiamondsRequest(
            request_id=rid(), gift_id="gift-1", creator_id="alice", diamonds=8001, coins=16002
        ),
        metadata=as_caller(service("gifting")),
        timeout=10,
    )
    return stub.RequestPayout(payout_pb2.RequestPayoutRequest(request_id=rid()), metadata=alice, timeout=10).payout


def test_health_and_reflection(make_database: Callable[[str], str], tmp_path: Path) -> None:
    process = ServiceProcess("payout", make_database("payout"), log_dir=tmp_path).start()
    try:
        with process.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "giftcoin.payout.v1.PayoutService"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            listed = {s.name for reply in replies for s in reply.list_services_response.service}
            assert "giftcoin.payout.v1.PayoutService" in listed
    finally:
        assert process.terminate() == 0  # SIGTERM: drained and exited cleanly


def test_sigkill_mid_payout_then_restart_never_pays_twice(make_database: Callable[[str], str], tmp_path: Path) -> None:
    url = make_database("payout")
    first = ServiceProcess("payout", url, env=FAST_PROCESSOR, log_dir=tmp_path).start()
    try:
        with first.channel() as channel:
            stub = payout_pb2_grpc.PayoutServiceStub(channel)
            payout = set_up_payout(stub, "delay:2")
            assert (payout.diamonds, payout.net.amount_minor) == (8000, 3880)
            # Submitted to the provider, which holds it for two seconds: kill the service now.
            wait_for_state(stub, payout.payout_id, payout_pb2.PAYOUT_STATE_PROCESSING)
    finally:
        first.kill()

    second = ServiceProcess("payout", url, env=FAST_PROCESSOR, log_dir=tmp_path).start()
    try:
        with second.channel() as channel:
            stub = payout_pb2_grpc.PayoutServiceStub(channel)
            wait_for_state(stub, payout.payout_id, payout_pb2.PAYOUT_STATE_PAID)
            earnings = stub.GetEarnings(payout_pb2.GetEarningsRequest(), metadata=as_caller(user("alice")), timeout=5)
            assert (earnings.diamond_balance, earnings.paid_net.amount_minor) == (1, 3880)
    finally:
        assert second.terminate() == 0

    db = Database.from_url(url)
    try:
        assert SandboxProvider(db, SystemClock()).payments("alice") == [(payout.payout_id, 3880, "paid")]
        with db.transaction() as conn:
            assert ledger_problems(storage.ledger, conn) == []
    finally:
        db.dispose()
