"""The saga through crashes and outages: every gift ends COMPLETED or FAILED, value is conserved.

A crash is simulated in this process by making the failpoint raise (the process-level os._exit
version runs in tests/e2e): the SendGift call dies mid-saga holding the gift's lease, as a killed
replica would. Recovery (`recover_once`, what the recovery loop runs) or the client's retry takes the
gift over once the lease has passed. The `suite` fixture checks conservation across the three
services after each test, from their databases and ledgers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from sqlalchemy import select, update

from services.gifting.app import assemble
from services.gifting.model import Target
from services.gifting.ports import CreditOrder, Refused, StepUncertain, step_request_id
from services.gifting.saga import Saga
from services.gifting.settings import load_settings
from services.gifting.storage import gift_transfers
from services.runtime import eventloop
from services.runtime.config import Env
from services.wallet.app import HOLD_EXPIRY_LOOP
from services.wallet.storage import holds as wallet_holds
from tests.gifting.harness import STREAM, Suite, _read, refused, start_suite
from tests.support.identity import user

PENDING = gifting_pb2.GIFT_TRANSFER_STATE_PENDING
COMPLETED = gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
FAILED = gifting_pb2.GIFT_TRANSFER_STATE_FAILED
LEASE = 10  # GIFTCOIN_GIFTING_LEASE_SECONDS of the suite
STREAM_TARGET = Target("live_stream", STREAM.id)


class Crash(Exception):
    """The process died here."""


def crash_at(suite: Suite, point: str) -> None:
    def failpoint(name: str) -> None:
        if name == point:
            raise Crash(name)

    suite.saga.failpoint = failpoint


def heal(suite: Suite) -> None:
    suite.saga.failpoint = lambda _name: None


def crashed_send(suite: Suite, point: str, request: gifting_pb2.SendGiftRequest) -> str:
    """Send a gift whose drive dies at `point` (its lease still held, as a killed replica's would be);
    returns the gift's id. The client is answered all the same: with the gift as it stands, PENDING."""
    before = sent_ids(suite)
    crash_at(suite, point)
    answered = suite.clients.send("vince", request)
    heal(suite)
    (transfer_id,) = sent_ids(suite) - before
    assert (answered.transfer_id, answered.state) == (transfer_id, PENDING)
    return transfer_id


def sent_ids(suite: Suite) -> set[str]:
    listed = suite.clients.call("ListSentGifts", gifting_pb2.ListSentGiftsRequest(page_size=500), user("vince"))
    return {t.transfer_id for t in listed.transfers}


def feed_events(suite: Suite) -> list[str]:
    return [e.transfer.transfer_id for e in suite.gifts.feed_after(STREAM_TARGET, 0)]


@pytest.fixture
def story(suite: Suite) -> Suite:
    suite.clients.viewer("vince")
    suite.clients.creator("carol")
    return suite


@pytest.mark.parametrize("point", ["after_record", "after_hold", "after_credit", "after_capture"])
def test_a_crash_at_any_step_is_finished_by_recovery_and_moves_value_once(story: Suite, point: str) -> None:
    c = story.clients
    request = c.send_request(gift_id="doughnut", quantity=3, recipient_id="carol")
    transfer_id = crashed_send(story, point, request)
    assert c.transfer("vince", transfer_id).state == PENDING
    # While the dead call's lease lasts, no one else drives the gift; a retry is told to wait.
    in_flight = refused(lambda: c.send("vince", request))
    assert (in_flight.code, in_flight.reason) == (grpc.StatusCode.ABORTED, "REQUEST_IN_FLIGHT")
    assert story.recover() == 0

    story.clock.advance(seconds=LEASE + 1)
    assert story.recover() == 1
    done = c.transfer("vince", transfer_id)
    assert done.state == COMPLETED
    assert c.send("vince", request) == done  # the replay answers with the finished gift
    assert c.balance("vince").total == 610 and c.balance("vince").held == 0
    assert c.diamonds("carol") == 45
    assert feed_events(story) == [transfer_id]


def test_the_clients_retry_finishes_a_gift_once_the_lease_has_passed(story: Suite) -> None:
    c = story.clients
    request = c.send_request(gift_id="confetti", quantity=1, recipient_id="carol")
    transfer_id = crashed_send(story, "after_hold", request)
    story.clock.advance(seconds=LEASE + 1)
    assert c.send("vince", request).state == COMPLETED
    assert story.recover() == 0  # nothing left
    assert c.transfer("carol", transfer_id).state == COMPLETED
    assert c.balance("vince").total == 600 and c.diamonds("carol") == 50


def recover_until_finished(suite: Suite, expected: int = 1, passes: int = 30) -> None:
    """Recovery passes, each after the longest retry wait (5 s of the fake clock), until `expected` gifts end.

    (A restarted peer is reconnected to in the background, in real time: how many passes that takes is
    not the point, so the passes are a fifth of a second apart; 30 of them stay within every gift's
    credit deadline on the fake clock.)
    """
    finished = 0
    for _ in range(passes):
        suite.clock.advance(seconds=6)
        finished += suite.recover()
        if finished >= expected:
            break
        time.sleep(0.2)
    assert finished == expected


def test_payout_down_leaves_the_gift_pending_until_recovery_finishes_it(story: Suite) -> None:
    c = story.clients
    story.stop_payout()
    pending = c.send("vince", gift_id="confetti", recipient_id="carol")
    assert pending.state == PENDING
    assert c.balance("vince").held == 100  # reserved, not spent
    story.clock.advance(seconds=6)
    assert story.recover() == 0  # payout still down: put back, to be retried later
    story.start_payout()
    assert story.recover() == 0  # not before its retry time
    recover_until_finished(story)
    assert c.transfer("vince", pending.transfer_id).state == COMPLETED
    assert c.balance("vince").total == 600 and c.diamonds("carol") == 50
    assert feed_events(story) == [pending.transfer_id]


def test_wallet_down_before_the_capture_delays_the_gift_but_never_undoes_the_credit(story: Suite) -> None:
    c = story.clients
    transfer_id = crashed_send(story, "after_credit", c.send_request(gift_id="confetti", recipient_id="carol"))
    story.stop_wallet()
    story.clock.advance(seconds=LEASE + 1)
    assert story.recover() == 0
    assert c.transfer("vince", transfer_id).state == PENDING
    story.start_wallet()
    recover_until_finished(story)
    assert c.transfer("vince", transfer_id).state == COMPLETED
    assert c.balance("vince").total == 600 and c.diamonds("carol") == 50


def test_a_long_payout_outage_ends_in_failure_never_in_a_late_credit(story: Suite) -> None:
    c = story.clients
    story.stop_payout()
    request = c.send_request(gift_id="confetti", recipient_id="carol")
    transfer_id = c.send("vince", request).transfer_id
    # Past the gift's credit deadline (its hold's 300 s less the 60 s margin): whether the credit that
    # got no answer landed, only payout can say; the gift waits for it.
    story.clock.advance(seconds=250)
    assert story.recover() == 0
    assert c.transfer("vince", transfer_id).state == PENDING
    # The hold lapses meanwhile: the viewer has the coins back.
    story.clock.advance(seconds=60)
    expiry = next(loop for loop in story.wallet_server.app.loops if loop.name == HOLD_EXPIRY_LOOP)
    expiry.step()
    assert c.balance("vince").total == 700 and c.balance("vince").held == 0
    # Payout back: the credit is refused for its deadline (nothing credited, ever), so the gift fails.
    story.start_payout()
    recover_until_finished(story)
    failed = c.transfer("vince", transfer_id)
    assert (failed.state, failed.failure_reason) == (FAILED, "GIFT_FAILED")
    error = refused(lambda: c.send("vince", request))
    assert (error.code, error.reason, error.metadata["cause"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GIFT_FAILED",
        "EXPIRED",
    )
    assert c.balance("vince").total == 700 and c.balance("vince").held == 0
    assert c.diamonds("carol") == 0
    assert feed_events(story) == []
    # The failed gift's coins no longer count against the day's limit.
    spent = story.db.run(
        lambda conn: conn.exec_driver_sql("SELECT coalesce(sum(coins), 0) FROM daily_spending").scalar_one()
    )
    assert spent == 0


@pytest.mark.parametrize("point", ["after_record", "after_hold"])
def test_a_gift_stranded_before_its_credit_fails_once_too_late(story: Suite, point: str) -> None:
    c = story.clients
    request = c.send_request(gift_id="confetti", recipient_id="carol")
    transfer_id = crashed_send(story, point, request)
    story.clock.advance(seconds=250)  # past the point where a hold made now could back a credit
    assert story.recover() == 1
    failed = c.transfer("vince", transfer_id)
    assert (failed.state, failed.failure_reason) == (FAILED, "GIFT_FAILED")
    assert refused(lambda: c.send("vince", request)).metadata["cause"] == "EXPIRED"
    # The hold the crashed call made (after_hold) was released: the viewer has every coin.
    assert c.balance("vince").total == 700 and c.balance("vince").held == 0


def test_a_credited_gift_completes_even_after_its_hold_lapsed(story: Suite) -> None:
    c = story.clients
    transfer_id = crashed_send(story, "after_credit", c.send_request(gift_id="confetti", recipient_id="carol"))
    story.clock.advance(seconds=400)
    expiry = next(loop for loop in story.wallet_server.app.loops if loop.name == HOLD_EXPIRY_LOOP)
    expiry.step()  # wallet gives the lapsed hold's coins back ...
    assert c.balance("vince").held == 0 and c.balance("vince").total == 700
    assert story.recover() == 1  # ... and the capture spends them from the balance all the same
    assert c.transfer("vince", transfer_id).state == COMPLETED
    assert c.balance("vince").total == 600 and c.diamonds("carol") == 50


class StopsWalletAfterCredit:
    """Payout's port as the saga sees it, that stops the wallet once a credit has landed (before the capture)."""

    def __init__(self, suite: Suite) -> None:
        self.suite, self.payout = suite, suite.saga.payout

    async def credit_many(self, orders: Sequence[CreditOrder], timeout: float) -> list[Refused | StepUncertain | None]:
        answers = await self.payout.credit_many(orders, timeout)
        await self.suite.wallet_server.stop_async(None)
        return answers


@pytest.fixture
def patient(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The suite with recovery's doubling delay allowed past a hold's whole life (300 s)."""
    running = start_suite(make_database, GIFTCOIN_GIFTING_RETRY_MAX_SECONDS="600")
    try:
        yield running
        assert running.problems() == []
    finally:
        running.close()


def test_a_wallet_outage_right_after_the_credit_ends_in_a_capture_of_the_hold_not_of_the_balance(
    patient: Suite,
) -> None:
    c = patient.clients
    c.viewer("vince")
    c.creator("carol")
    stopping = StopsWalletAfterCredit(patient)
    patient.saga.payout = stopping
    pending = c.send("vince", gift_id="confetti", recipient_id="carol")
    assert pending.state == PENDING  # credited; its capture got no answer: left to recovery
    patient.saga.payout = stopping.payout
    patient.start_wallet()
    # Recovery and wallet's hold expiry run as their loops would, every few seconds, until the gift ends:
    # the gift is asked again while its hold lasts, however long recovery's delay has grown.
    expiry = next(loop for loop in patient.wallet_server.app.loops if loop.name == HOLD_EXPIRY_LOOP)
    for _ in range(130):  # 650 s of the fake clock: past recovery's longest delay
        patient.clock.advance(seconds=5)
        expiry.step()
        if patient.recover():
            break
        time.sleep(0.05)  # the restarted wallet is reconnected to in the background, in real time
    assert c.transfer("vince", pending.transfer_id).state == COMPLETED
    hold = _read(patient.wallet_url, lambda conn: conn.execute(select(wallet_holds)).one())
    assert (hold.gift_id, hold.state, hold.debt_added) == (pending.transfer_id, "captured", 0)
    expired = _read(
        patient.wallet_url,
        lambda conn: conn.exec_driver_sql("SELECT count(*) FROM ledger_transfers WHERE kind = 'expiry'").scalar_one(),
    )
    assert expired == 0  # the hold never lapsed: nothing was given back, then spent from the balance
    assert c.balance("vince").total == 600 and c.balance("vince").held == 0
    assert c.diamonds("carol") == 50


def test_a_gift_an_earlier_version_left_deciding_to_credit_is_credited_as_it_was_asked_then_completes(
    story: Suite,
) -> None:
    """Earlier versions wrote `crediting` (the decision to credit) before a credit without a deadline.
    Such a gift is finished by asking for its credit exactly as it was asked (a replay, not
    REQUEST_ID_REUSED), then capturing."""
    c = story.clients
    transfer_id = crashed_send(story, "after_hold", c.send_request(gift_id="confetti", recipient_id="carol"))
    # What the earlier version did: the decision written down, then the credit asked (and answered).
    legacy = {"step": "crediting", "promotional_coins": 0, "credit_deadline": None}
    row = gift_transfers.c.transfer_id == transfer_id
    story.db.run(lambda conn: conn.execute(update(gift_transfers).where(row).values(**legacy)))
    credit = CreditOrder(step_request_id(transfer_id, "credit"), transfer_id, "carol", 50, 100, 0, None)
    assert eventloop.run(story.saga.payout.credit_many([credit], timeout=5)) == [None]
    story.clock.advance(seconds=LEASE + 1)
    assert story.recover() == 1
    assert c.transfer("vince", transfer_id).state == COMPLETED
    assert c.balance("vince").total == 600 and c.diamonds("carol") == 50


def test_a_crash_after_releasing_a_refused_gifts_hold_still_ends_in_failure(story: Suite) -> None:
    c = story.clients
    request = c.send_request(gift_id="confetti", recipient_id="not_a_creator")
    transfer_id = crashed_send(story, "after_release", request)
    story.clock.advance(seconds=LEASE + 1)
    assert story.recover() == 1
    assert c.transfer("vince", transfer_id).failure_reason == "RECIPIENT_CANNOT_RECEIVE"
    assert refused(lambda: c.send("vince", request)).reason == "RECIPIENT_CANNOT_RECEIVE"
    assert c.balance("vince").total == 700 and c.balance("vince").held == 0


def test_two_replicas_recovering_at_once_drive_each_gift_once(story: Suite) -> None:
    c = story.clients
    ids = [crashed_send(story, "after_hold", c.send_request("doughnut", recipient_id="carol")) for _ in range(6)]
    other = assemble(load_settings(Env(story.gifting_env)), story.clock)  # a second replica, same database
    story.clock.advance(seconds=LEASE + 1)
    finished: list[int] = []

    def recover(saga: Saga) -> None:
        finished.append(eventloop.run(saga.recover_once()))

    replicas = [threading.Thread(target=recover, args=(g,)) for g in (story.saga, other.saga)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join()
    other.app.close()
    assert sum(finished) == 6
    assert {c.transfer("vince", i).state for i in ids} == {COMPLETED}
    assert sorted(feed_events(story)) == sorted(ids)
    assert c.balance("vince").total == 700 - 6 * 30 and c.diamonds("carol") == 6 * 15


@pytest.fixture
def spans(story: Suite) -> Iterator[InMemorySpanExporter]:
    """The saga's spans, recorded whatever the process-wide tracing set-up samples (a provider of our own)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    story.saga.tracer = provider.get_tracer("test")
    yield exporter
    provider.shutdown()


def test_recovery_continues_the_gifts_own_trace(story: Suite, spans: InMemorySpanExporter) -> None:
    c = story.clients
    transfer_id = crashed_send(story, "after_hold", c.send_request(gift_id="confetti", recipient_id="carol"))
    story.clock.advance(seconds=LEASE + 1)
    assert story.recover() == 1
    steps = [s for s in spans.get_finished_spans() if (s.attributes or {}).get("giftcoin.gift_id") == transfer_id]
    names = {s.name for s in steps}
    assert {"gifting.saga.hold", "gifting.saga.recover", "gifting.saga.credit", "gifting.saga.capture"} <= names
    assert len({s.context.trace_id for s in steps if s.context is not None}) == 1


@given(transfer_id=st.uuids(), step=st.sampled_from(["hold", "credit", "capture", "release"]))
def test_a_steps_request_id_is_the_uuid5_every_version_and_replica_computes(transfer_id: uuid.UUID, step: str) -> None:
    # A step asked again after a restart or by another replica (or a version before this one) must
    # carry the very request id its peer recorded, or it would move value a second time.
    expected = uuid.uuid5(transfer_id, f"giftcoin.gifting.{step}")
    assert step_request_id(str(transfer_id), step) == str(expected)
