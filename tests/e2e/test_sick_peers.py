"""A peer that hangs (SIGSTOP: its connections open, nothing answered) costs only the gifts that need it,
at most one step deadline each, and a gifting replica told to stop drains what is in flight.

Real processes, on this test's backend. The bounds asserted are the product's promises (README "How long
a client waits"), with room for a loaded machine: these are not speed measurements.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2

from services.runtime.errors import from_rpc_error
from tests.e2e.conftest import Processes
from tests.gifting.harness import STREAM, Clients, refused, wait_for
from tests.support.identity import as_caller, user
from tests.support.processes import ServiceProcess, free_port

STEP_DEADLINE_SECONDS = 3.0
# What a loaded machine (CI runs beside other work) may add to a wait: scheduling, not the design.
SLACK_SECONDS = 3.0
PENDING = gifting_pb2.GIFT_TRANSFER_STATE_PENDING
COMPLETED = gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED


@contextmanager
def paused(process: ServiceProcess) -> Iterator[None]:
    """The process stopped (SIGSTOP), then continued: silent, not refusing."""
    assert process.proc is not None
    os.kill(process.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.proc.pid, signal.SIGCONT)


T = TypeVar("T")
Answer = tuple[gifting_pb2.GiftTransfer | grpc.RpcError, float]


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    outcome = call()
    return outcome, time.monotonic() - started


def sends_in_background(
    c: Clients, requests: list[gifting_pb2.SendGiftRequest]
) -> tuple[list[threading.Thread], list[Answer]]:
    """The sends made at once, each answer (or error) with its time, in the list returned."""
    answers: list[Answer] = []

    def one(request: gifting_pb2.SendGiftRequest) -> None:
        started = time.monotonic()
        try:
            answers.append((c.send("vince", request), time.monotonic() - started))
        except grpc.RpcError as error:
            answers.append((error, time.monotonic() - started))

    threads = [threading.Thread(target=one, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    return threads, answers


def roses(c: Clients, count: int) -> list[gifting_pb2.SendGiftRequest]:
    return [c.send_request(gift_id="rose", recipient_id="carol") for _ in range(count)]


@pytest.mark.parametrize("peer", ["payout", "wallet"])
def test_a_silent_peer_costs_only_the_gifts_that_need_it_one_step_deadline_each(
    processes: Processes, peer: str
) -> None:
    gifting = processes.gifting(GIFTCOIN_GIFTING_STEP_DEADLINE_MS="3000", GIFTCOIN_GIFTING_LEASE_SECONDS="7").start()
    c = processes.clients(gifting)
    try:
        c.viewer("vince")
        c.creator("carol")
        assert c.send("vince", gift_id="rose", recipient_id="carol").state == COMPLETED  # connected to both
        with paused(getattr(processes, peer)):
            requests = roses(c, 5)
            threads, answers = sends_in_background(c, requests)
            time.sleep(0.3)  # their batch waits on the silent peer
            # What needs no peer answers at once: a refusal at the record, the catalogue, a read.
            error, elapsed = timed(lambda: refused(lambda: c.send("vince", gift_id="no_such_gift")))
            assert error.reason == "GIFT_NOT_FOUND" and elapsed < STEP_DEADLINE_SECONDS / 2
            catalogue, elapsed = timed(lambda: c.call("ListGifts", gifting_pb2.ListGiftsRequest(), user("vince")))
            assert len(catalogue.gifts) == 9 and elapsed < STEP_DEADLINE_SECONDS / 2
            for thread in threads:
                thread.join(30)
            # What needs the peer answers PENDING within a step deadline (left to recovery).
            assert len(answers) == 5
            pending = []
            for transfer, waited in answers:
                assert isinstance(transfer, gifting_pb2.GiftTransfer), transfer
                assert transfer.state == PENDING and waited < STEP_DEADLINE_SECONDS + SLACK_SECONDS
                pending.append(transfer)
            # A read of a pending gift answers at once; the clients' retries are driven side by side,
            # each answered within a step deadline, not one after another: PENDING, or ABORTED
            # REQUEST_IN_FLIGHT when recovery has taken the gift up meanwhile.
            _, waited = timed(lambda: c.transfer("vince", pending[0].transfer_id))
            assert waited < STEP_DEADLINE_SECONDS / 2
            threads, retried = sends_in_background(c, requests)
            for thread in threads:
                thread.join(30)
            assert len(retried) == 5
            for outcome, waited in retried:
                if isinstance(outcome, grpc.RpcError):
                    assert (outcome.code(), from_rpc_error(outcome).reason) == (  # type: ignore[union-attr]
                        grpc.StatusCode.ABORTED,
                        "REQUEST_IN_FLIGHT",
                    )
                else:
                    assert outcome.state == PENDING
                assert waited < STEP_DEADLINE_SECONDS + SLACK_SECONDS
        # The peer is back: recovery finishes every gift; nothing lost or made.
        ids = [t.transfer_id for t in pending]
        wait_for(lambda: all(c.transfer("vince", i).state == COMPLETED for i in ids), timeout=60, what="recovery")
        assert processes.problems() == []
    finally:
        c.close()


def test_sigterm_drains_the_calls_in_flight_and_viewers_resume_on_another_replica_without_loss(
    processes: Processes,
) -> None:
    slow_steps = {"GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "5000", "GIFTCOIN_GIFTING_LEASE_SECONDS": "11"}
    a = processes.gifting(port=free_port(), GIFTCOIN_SHUTDOWN_GRACE_SECONDS="10", **slow_steps).start()
    b = processes.gifting(port=free_port()).start()
    via_a, via_b = processes.clients(a), processes.clients(b)
    try:
        via_a.viewer("vince")
        via_a.creator("carol")
        request = gifting_pb2.WatchGiftsRequest(target=STREAM, max_events_per_response=10)
        viewer = via_a.gifting.WatchGifts(request, metadata=as_caller(user("viewer")))
        viewer.initial_metadata()
        first = via_a.send("vince", gift_id="rose", recipient_id="carol")
        seen = [e.sequence for e in next(viewer).events]
        assert seen == [1]
        with paused(processes.payout):  # a SendGift is in flight on A when it is told to stop
            threads, answers = sends_in_background(via_a, roses(via_a, 1))
            time.sleep(0.3)
            assert a.proc is not None
            a.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        for thread in threads:
            thread.join(30)
        ((in_flight, _),) = answers
        assert isinstance(in_flight, gifting_pb2.GiftTransfer) and in_flight.state == COMPLETED  # drained
        assert a.proc.wait(30) == 0
        # The viewer was told to watch again, and resumes on B after its last sequence: nothing missed.
        with pytest.raises(grpc.RpcError) as ended:
            for response in viewer:
                seen += [e.sequence for e in response.events]
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        later = via_b.send("vince", gift_id="rose", recipient_id="carol")
        resumed = via_b.gifting.WatchGifts(
            gifting_pb2.WatchGiftsRequest(target=STREAM, after_sequence=seen[-1], max_events_per_response=10),
            metadata=as_caller(user("viewer")),
        )
        ids = {first.transfer_id}
        for response in resumed:
            seen += [e.sequence for e in response.events]
            ids |= {e.transfer_id for e in response.events}
            if seen[-1] == 3:
                break
        resumed.cancel()
        assert seen == [1, 2, 3]
        assert ids == {first.transfer_id, in_flight.transfer_id, later.transfer_id}
        assert processes.problems() == []
    finally:
        via_a.close()
        via_b.close()
