"""The payout processor never pays twice: crashes at every point, provider outages, two processors at once.

A crash is simulated by an exception that no code catches (a BaseException), thrown around the real
sandbox provider's calls; "restarting" is a fresh processor over the same database and provider.
"""

from __future__ import annotations

import threading

import pytest
from giftcoin.payout.v1 import payout_pb2

from services.payout.model import PayoutProvider, ProviderPayment, ProviderResult
from services.payout.processor import PayoutProcessor
from tests.payout.conftest import PayoutHarness


class Crash(BaseException):
    """The process died here: nothing after this point ran."""


class FaultyProvider:
    """The real provider, with a fault injected before or after one kind of call."""

    def __init__(self, inner: PayoutProvider, where: str, fault: type[BaseException] = Crash) -> None:
        self.inner = inner
        self.where = where
        self.fault = fault

    def submit(self, payment: ProviderPayment) -> ProviderResult:
        if self.where == "before submit":
            raise self.fault("before submit")
        result = self.inner.submit(payment)
        if self.where == "after submit":
            raise self.fault("after submit")
        return result

    def status(self, idempotency_key: str) -> ProviderResult | None:
        if self.where == "status":
            raise self.fault("status")
        return self.inner.status(idempotency_key)


def processor_with(payout: PayoutHarness, provider: PayoutProvider) -> PayoutProcessor:
    return PayoutProcessor(payout.components.calls.transactions, payout.components.payouts.clock, provider)


def requested_payout(payout: PayoutHarness, destination: str = "succeed") -> payout_pb2.Payout:
    payout.register("alice", destination=destination)
    payout.credit("alice", 6000)
    return payout.request_payout("alice", 6000)


@pytest.mark.parametrize(
    ("where", "paid_before_restart"), [("before submit", False), ("after submit", True)], ids=["before", "after"]
)
def test_a_crash_around_the_provider_call_never_pays_twice(
    payout: PayoutHarness, where: str, paid_before_restart: bool
) -> None:
    requested = requested_payout(payout)
    with pytest.raises(Crash):
        processor_with(payout, FaultyProvider(payout.components.provider, where)).process_due()
    # Marked processing before the call, so the crash left it processing, not requested.
    assert payout.get_payout("alice", requested.payout_id).state == payout_pb2.PAYOUT_STATE_PROCESSING
    assert len(payout.payments("alice")) == int(paid_before_restart)

    restarted = processor_with(payout, payout.components.provider)
    assert restarted.process_due().paid == 1
    assert payout.get_payout("alice", requested.payout_id).state == payout_pb2.PAYOUT_STATE_PAID
    assert payout.payments("alice") == [(requested.payout_id, requested.net.amount_minor, "paid")]
    assert restarted.process_due().paid == 0
    assert payout.earnings("alice").paid_net.amount_minor == requested.net.amount_minor
    assert payout.ledger_problems() == []


def test_a_crash_while_polling_a_delayed_payment_never_pays_twice(payout: PayoutHarness) -> None:
    requested = requested_payout(payout, "delay:10")
    assert payout.process().still_processing == 1
    payout.clock.advance(seconds=11)
    with pytest.raises(Crash):
        processor_with(payout, FaultyProvider(payout.components.provider, "status")).process_due()
    assert payout.process().paid == 1
    assert payout.payments("alice") == [(requested.payout_id, requested.net.amount_minor, "paid")]


def test_a_provider_outage_is_retried_on_the_next_pass(payout: PayoutHarness) -> None:
    requested = requested_payout(payout)
    down = processor_with(payout, FaultyProvider(payout.components.provider, "before submit", ConnectionError))
    report = down.process_due()
    assert len(report.errors) == 1 and "ConnectionError" in report.errors[0]
    assert len(down.process_due().errors) == 1  # still down: polled, never received, resubmitted, refused
    assert payout.payments("alice") == []
    assert payout.process().paid == 1
    assert payout.payments("alice") == [(requested.payout_id, requested.net.amount_minor, "paid")]
    assert payout.ledger_problems() == []


def test_two_processors_at_once_pay_each_payout_once(payout: PayoutHarness) -> None:
    creators = [f"creator-{n}" for n in range(8)]
    payout_ids = {}
    for creator_id in creators:
        payout.register(creator_id)
        payout.credit(creator_id, 3000)
        payout_ids[creator_id] = payout.request_payout(creator_id).payout_id
    processors = [processor_with(payout, payout.components.provider) for _ in range(2)]
    threads = [threading.Thread(target=p.process_due) for p in processors for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for creator_id in creators:
        assert payout.payments(creator_id) == [(payout_ids[creator_id], 1455, "paid")]
        assert payout.get_payout(creator_id, payout_ids[creator_id]).state == payout_pb2.PAYOUT_STATE_PAID
    assert payout.ledger_problems() == []
