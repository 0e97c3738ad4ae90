"""Assembling the payout service: database, domain, provider, servicer, access rules and loops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from giftcoin.payout.v1 import payout_pb2_grpc

from services.payout import storage
from services.payout.domain import Payouts
from services.payout.model import PayoutProvider, PayoutTerms, Rate
from services.payout.processor import PayoutProcessor
from services.payout.provider import SandboxProvider
from services.payout.servicer import FULL_NAME, PayoutServicer
from services.payout.settings import PayoutSettings
from services.payout.storage import UnitOfWork
from services.runtime import auth
from services.runtime.audit import AuditLog
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.guarded import GuardedCalls
from services.runtime.idempotency import RequestIdStore
from services.runtime.server import BackgroundLoop, ServiceApp
from services.runtime.telemetry import PAYOUTS_IN_FLIGHT

ACCESS: Mapping[str, auth.Access] = {
    "RegisterCreator": auth.USER,
    "SetPayoutDestination": auth.USER,
    "VerifyCreator": auth.OPERATOR,
    "CreditDiamonds": auth.internal("gifting"),
    "BatchCreditDiamonds": auth.internal("gifting"),
    "GetEarnings": auth.USER,
    "ListDiamondTransactions": auth.USER,
    "QuotePayout": auth.USER,
    "RequestPayout": auth.USER,
    "GetPayout": auth.USER,
    "ListPayouts": auth.USER,
    "ListCreators": auth.OPERATOR,
    "ListPayoutsByState": auth.OPERATOR,
    "ListAuditRecords": auth.OPERATOR,
    "ListDiamondCredits": auth.RECONCILER,
    "SummarizeBooks": auth.RECONCILER,
}

PROCESSOR_LOOP = "payout-processor"
REAPER_LOOP = "payout-request-id-reaper"


@dataclass
class PayoutComponents:
    """The assembled service; tests reach the domain, processor and provider through it."""

    settings: PayoutSettings
    db: Database
    payouts: Payouts
    processor: PayoutProcessor
    provider: PayoutProvider
    request_ids: RequestIdStore
    calls: GuardedCalls[UnitOfWork]
    app: ServiceApp


def terms(settings: PayoutSettings) -> PayoutTerms:
    return PayoutTerms(
        rate=Rate(cents=settings.rate_cents, diamonds=settings.rate_diamonds),
        currency=settings.currency,
        fee_bps=settings.fee_bps,
        minimum=settings.minimum_cents,
        daily_maximum=settings.daily_maximum_cents,
    )


def assemble(
    settings: PayoutSettings, clock: Clock | None = None, provider: PayoutProvider | None = None
) -> PayoutComponents:
    clock = clock or SystemClock()
    db = Database.from_url(
        settings.database_url, pool_size=settings.database_pool_size, traced=settings.traces_exported
    )
    provider = provider or SandboxProvider(db, clock)
    request_ids = RequestIdStore(db, storage.request_ids, clock)
    audit = AuditLog(db, storage.audit_records, clock)
    calls = GuardedCalls(FULL_NAME, request_ids, UnitOfWork, audit)
    payouts = Payouts(terms(settings), clock)
    calls.read(payouts.open_platform_accounts)
    processor = PayoutProcessor(calls.transactions, clock, provider)
    unwatch = PAYOUTS_IN_FLIGHT.watch(lambda: [(calls.read(lambda uow: uow.payouts.count_in_flight()), {})])

    def close() -> None:
        unwatch()
        db.dispose()

    app = ServiceApp(
        name="payout",
        full_name=FULL_NAME,
        servicer=PayoutServicer(calls, audit, payouts),
        add_to_server=payout_pb2_grpc.add_PayoutServiceServicer_to_server,
        access=ACCESS,
        executor=db.executor,
        loops=[
            BackgroundLoop(PROCESSOR_LOOP, settings.processor_interval_ms / 1000, processor.process_due),
            BackgroundLoop(
                REAPER_LOOP,
                settings.reaper_interval_seconds,
                lambda: request_ids.reap(settings.idempotency_retention_seconds),
            ),
        ],
        close=close,
    )
    return PayoutComponents(settings, db, payouts, processor, provider, request_ids, calls, app)


def build(settings: PayoutSettings, clock: Clock | None = None, provider: PayoutProvider | None = None) -> ServiceApp:
    """The payout ServiceApp; the clock defaults to the system's, the provider to the sandbox."""
    return assemble(settings, clock, provider).app
