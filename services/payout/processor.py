"""Processing payouts: requested -> processing -> paid | failed, through the payout provider.

Never pays twice, whatever crashes when: a payout is marked processing (committed) *before* the
provider is called, and the provider is keyed by the payout id. After a restart a processing payout
is polled by that key: a payment the provider made is found and recorded; one it never received
(a crash between the commit and the call) is submitted again under the same key. Settling is a
conditional update from processing, so two processors cannot settle one payout twice.

The ledger bookings of a paid and of a failed payout are drawn in domain.py's header.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from opentelemetry import trace

from services.payout.model import (
    DIAMOND,
    DIAMONDS_REDEEMED,
    FAILED,
    PAID,
    PAYOUT_PAID,
    PAYOUT_RETURNED,
    PROCESSING,
    PROVIDER_FAILED,
    PROVIDER_PAID,
    REQUESTED,
    PayoutProvider,
    PayoutRecord,
    ProviderPayment,
    ProviderResult,
    cash_issued,
    cash_paid_out,
    creator_diamonds,
    creator_diamonds_in_payout,
    fee_revenue,
)
from services.payout.storage import UnitOfWork
from services.runtime.clock import Clock
from services.runtime.guarded import Transactions
from services.runtime.ledger import Posting
from services.runtime.telemetry import PAYOUT_OUTCOMES, traced

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
T = TypeVar("T")


@dataclass
class ProcessingReport:
    """What one pass of the processor did, by resulting state."""

    submitted: int = 0
    paid: int = 0
    failed: int = 0
    still_processing: int = 0
    errors: list[str] = field(default_factory=list)


class PayoutProcessor:
    """Drives due payouts through the provider, each step in a transaction of its own (the module's header)."""

    def __init__(
        self, transactions: Transactions[UnitOfWork], clock: Clock, provider: PayoutProvider, batch_size: int = 100
    ) -> None:
        self.transactions = transactions
        self.clock = clock
        self.provider = provider
        self.batch_size = batch_size

    def process_due(self) -> ProcessingReport:
        report = ProcessingReport()
        processing = self.transactions.run(lambda uow: uow.payouts.ids_in_state(PROCESSING, self.batch_size))
        requested = self.transactions.run(lambda uow: uow.payouts.ids_in_state(REQUESTED, self.batch_size))
        for payout_id in processing:
            with traced(), tracer.start_as_current_span("payout.poll", attributes={"giftcoin.payout_id": payout_id}):
                self._guarded(report, payout_id, self._poll)
        for payout_id in requested:
            with traced(), tracer.start_as_current_span("payout.submit", attributes={"giftcoin.payout_id": payout_id}):
                if self._guarded(report, payout_id, self._submit):
                    report.submitted += 1
        return report

    def _guarded(self, report: ProcessingReport, payout_id: str, step: Callable[[str], str]) -> str:
        """Run one payout's step; its state after it ("" if another worker had it)."""
        try:
            state = step(payout_id)
        except Exception as error:  # the provider or database failed: retried on the next pass
            log.exception("payout %s: processing failed; retrying later", payout_id)
            report.errors.append(f"{payout_id}: {type(error).__name__}: {error}")
            return ""
        if state == PAID:
            report.paid += 1
        elif state == FAILED:
            report.failed += 1
        elif state == PROCESSING:
            report.still_processing += 1
        return state

    def _submit(self, payout_id: str) -> str:
        payment = self.transactions.run(lambda uow: self.start_submission(uow, payout_id))
        if payment is None:
            return ""
        result = self.provider.submit(payment)
        return self._apply(payout_id, result)

    def _poll(self, payout_id: str) -> str:
        payment = self.transactions.run(lambda uow: self.processing_payment(uow, payout_id))
        if payment is None:
            return ""
        result = self.provider.status(payment.idempotency_key)
        if result is None:
            payment = self.transactions.run(lambda uow: self.resubmission(uow, payout_id))
            if payment is None:
                return ""
            result = self.provider.submit(payment)
        return self._apply(payout_id, result)

    def _apply(self, payout_id: str, result: ProviderResult) -> str:
        state = self.transactions.run(lambda uow: self.apply_result(uow, payout_id, result))
        if state in (PAID, FAILED):
            log.info("payout %s %s (provider reference %s)", payout_id, state, result.provider_reference)
            PAYOUT_OUTCOMES.add(1, {"giftcoin.payout.state": state})
        return state

    # the steps, each inside the caller's unit of work

    def start_submission(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        """requested -> processing, before the provider is called; None if another worker took it."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != REQUESTED:
            return None
        moved = uow.payouts.transition(
            payout_id, REQUESTED, state=PROCESSING, submissions=record.submissions + 1, updated_at=self.clock.now()
        )
        return _payment(record) if moved else None

    def resubmission(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        """A processing payout the provider never received (a crash before the call): submit it again."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != PROCESSING:
            return None
        uow.payouts.transition(payout_id, PROCESSING, submissions=record.submissions + 1, updated_at=self.clock.now())
        return _payment(record)

    def processing_payment(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        record = uow.payouts.get(payout_id)
        return _payment(record) if record is not None and record.state == PROCESSING else None

    def apply_result(self, uow: UnitOfWork, payout_id: str, result: ProviderResult) -> str:
        """Record the provider's answer for a processing payout; returns the payout's state after it."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != PROCESSING:
            return record.state if record else ""
        now = self.clock.now()
        if result.state == PROVIDER_PAID:
            if uow.payouts.transition(
                payout_id, PROCESSING, state=PAID, provider_reference=result.provider_reference, updated_at=now
            ):
                _post_paid(uow, record, now)
            return PAID
        if result.state == PROVIDER_FAILED:
            if uow.payouts.transition(
                payout_id,
                PROCESSING,
                state=FAILED,
                provider_reference=result.provider_reference,
                failure_reason=result.failure_reason[:256] or "refused by the payout provider",
                updated_at=now,
            ):
                uow.ledger.post(
                    PAYOUT_RETURNED,
                    payout_id,
                    [
                        Posting(creator_diamonds_in_payout(record.creator_id), -record.diamonds),
                        Posting(creator_diamonds(record.creator_id), record.diamonds),
                    ],
                    now,
                    transfer_id=f"payout-returned:{payout_id}",
                )
            return FAILED
        uow.payouts.set_provider_reference(payout_id, result.provider_reference, now)
        return PROCESSING


def _post_paid(uow: UnitOfWork, record: PayoutRecord, now: datetime) -> None:
    currency = record.currency
    for code, unit in (
        (DIAMONDS_REDEEMED, DIAMOND),
        (cash_issued(currency), currency),
        (cash_paid_out(currency), currency),
        (fee_revenue(currency), currency),
    ):
        uow.ledger.open_account(code, unit, now, platform=True)
    uow.ledger.post(
        PAYOUT_PAID,
        record.payout_id,
        [
            Posting(creator_diamonds_in_payout(record.creator_id), -record.diamonds),
            Posting(DIAMONDS_REDEEMED, record.diamonds),
            Posting(cash_issued(currency), -record.gross),
            Posting(cash_paid_out(currency), record.net),
            Posting(fee_revenue(currency), record.fee),
        ],
        now,
        transfer_id=f"payout-paid:{record.payout_id}",
    )


def _payment(record: PayoutRecord) -> ProviderPayment:
    return ProviderPayment(
        idempotency_key=record.payout_id,
        beneficiary=record.creator_id,
        destination_kind=record.destination_kind,
        destination_reference=record.destination_reference,
        amount_minor=record.net,
        currency=record.currency,
    )
