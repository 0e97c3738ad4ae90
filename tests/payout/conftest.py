"""The payout service in-process: real gRPC on 127.0.0.1, a fresh database per test (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from sqlalchemy import func, select

from services.payout import storage
from services.payout.app import PayoutComponents, assemble
from services.payout.processor import ProcessingReport
from services.payout.provider import SandboxProvider
from services.payout.settings import PayoutSettings, load_settings
from services.runtime.auth import Caller
from services.runtime.clock import FakeClock
from services.runtime.config import Env
from services.runtime.errors import DomainError, from_rpc_error
from services.runtime.ledger import ledger_problems
from services.runtime.server import RunningServer, create_server
from tests.support.identity import as_caller, operator, service, user

GIFTING = service("gifting")
ADULT = date(1990, 5, 17)


def payout_settings(database_url: str, **env: str) -> PayoutSettings:
    values = {
        "GIFTCOIN_DEV_MODE": "true",
        "GIFTCOIN_PAYOUT_DATABASE_URL": database_url,
        # Tests drive the processor themselves (process()); the loop would tick only after an hour.
        "GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": "3600000",
        **env,
    }
    return load_settings(Env(values))


def rid() -> str:
    return str(uuid.uuid4())


class PayoutHarness:
    """One running payout server and helpers that speak to it as its callers would."""

    def __init__(self, components: PayoutComponents, server: RunningServer, clock: FakeClock) -> None:
        self.components = components
        self.server = server
        self.clock = clock
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = payout_pb2_grpc.PayoutServiceStub(self.channel)

    def call(self, method: str, request: Any, caller: Caller | None = None) -> Any:
        return getattr(self.stub, method)(request, metadata=as_caller(caller or user("alice")), timeout=30)

    def refused(self, method: str, request: Any, caller: Caller | None = None) -> DomainError:
        """The error a call fails with, read back as the DomainError the server sent."""
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, request, caller)
        error = from_rpc_error(info.value)
        assert error is not None, f"{info.value.code()} without ErrorInfo: {info.value.details()}"
        return error

    # --- set-up shortcuts, each through the public API ------------------------------------------

    def register(
        self,
        creator_id: str,
        born: date = ADULT,
        verified: bool = True,
        destination: str | None = "succeed",
    ) -> payout_pb2.Creator:
        creator = self.call(
            "RegisterCreator",
            payout_pb2.RegisterCreatorRequest(
                request_id=rid(),
                date_of_birth=common_pb2.Date(year=born.year, month=born.month, day=born.day),
                country_code="US",
            ),
            user(creator_id),
        ).creator
        if destination is not None:
            creator = self.set_destination(creator_id, destination)
        if verified:
            creator = self.call(
                "VerifyCreator",
                payout_pb2.VerifyCreatorRequest(
                    request_id=rid(), creator_id=creator_id, kyc_status=payout_pb2.KYC_STATUS_VERIFIED
                ),
                operator("kyc-desk"),
            ).creator
        return creator

    def set_destination(self, creator_id: str, reference: str) -> payout_pb2.Creator:
        return self.call(
            "SetPayoutDestination",
            payout_pb2.SetPayoutDestinationRequest(
                request_id=rid(),
                destination=payout_pb2.PayoutDestination(
                    kind=payout_pb2.DESTINATION_KIND_SANDBOX, account_reference=reference, currency_code="USD"
                ),
            ),
            user(creator_id),
        ).creator

    def credit(self, creator_id: str, diamonds: int, gift_id: str | None = None) -> payout_pb2.DiamondCredit:
        return self.call(
            "CreditDiamonds",
            credit_request(creator_id, diamonds, gift_id or f"gift-{uuid.uuid4().hex[:12]}"),
            GIFTING,
        ).credit

    def request_payout(self, creator_id: str, diamonds: int = 0, request_id: str | None = None) -> payout_pb2.Payout:
        return self.call(
            "RequestPayout",
            payout_pb2.RequestPayoutRequest(request_id=request_id or rid(), diamonds=diamonds),
            user(creator_id),
        ).payout

    def get_payout(self, creator_id: str, payout_id: str) -> payout_pb2.Payout:
        return self.call("GetPayout", payout_pb2.GetPayoutRequest(payout_id=payout_id), user(creator_id)).payout

    def earnings(self, creator_id: str) -> payout_pb2.GetEarningsResponse:
        return self.call("GetEarnings", payout_pb2.GetEarningsRequest(), user(creator_id))

    def quote(self, creator_id: str, diamonds: int = 0) -> payout_pb2.Quote:
        return self.call("QuotePayout", payout_pb2.QuotePayoutRequest(diamonds=diamonds), user(creator_id)).quote

    # --- looking behind the API ------------------------------------------------------------------

    def process(self) -> ProcessingReport:
        report = self.components.processor.process_due()
        assert report.errors == []
        return report

    def payments(self, creator_id: str) -> list[tuple[str, int, str]]:
        """The sandbox provider's own record of what it paid (or refused) to the creator."""
        provider = self.components.provider
        assert isinstance(provider, SandboxProvider)
        return provider.payments(creator_id)

    def ledger_problems(self) -> list[str]:
        with self.components.db.transaction() as conn:
            return ledger_problems(storage.ledger, conn)

    def count(self, table: Any) -> int:
        with self.components.db.transaction() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def credit_request(
    creator_id: str, diamonds: int, gift_id: str, coins: int | None = None, promotional_coins: int = 0
) -> payout_pb2.CreditDiamondsRequest:
    return payout_pb2.CreditDiamondsRequest(
        request_id=rid(),
        gift_id=gift_id,
        creator_id=creator_id,
        diamonds=diamonds,
        coins=2 * diamonds if coins is None else coins,
        promotional_coins=promotional_coins,
    )


@pytest.fixture
def start_payout(make_database: Callable[[str], str]) -> Iterator[Callable[..., PayoutHarness]]:
    """`start_payout(**env)` -> a running payout server on a fresh database; checks the ledger at the end."""
    started: list[PayoutHarness] = []

    def start(**env: str) -> PayoutHarness:
        settings = payout_settings(make_database("payout"), **env)
        clock = FakeClock()
        components = assemble(settings, clock)
        server = create_server(components.app, settings, "127.0.0.1:0")
        harness = PayoutHarness(components, server, clock)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        problems = harness.ledger_problems()
        harness.channel.close()
        harness.server.stop(0)
        assert problems == []


@pytest.fixture
def payout(start_payout: Callable[..., PayoutHarness]) -> PayoutHarness:
    return start_payout()
