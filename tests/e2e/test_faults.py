"""Crashes and outages with real processes: gifting killed between every pair of steps (os._exit at a
failpoint, as abrupt as SIGKILL), wallet and payout stopped between steps. After restarts and recovery
every gift is COMPLETED or FAILED and value is conserved across the three services' books, as the
reconciler proves through their RPCs."""

from __future__ import annotations

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2

from services.gifting.ports import FAILPOINT_EXIT_CODE
from tests.e2e.conftest import Processes, die_at_failpoint
from tests.gifting.harness import Clients, refused, wait_for
from tests.support.identity import user
from tests.support.processes import ServiceProcess

COMPLETED = gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
FAILED = gifting_pb2.GIFT_TRANSFER_STATE_FAILED


def state_of(c: Clients, transfer_id: str) -> int:
    return int(c.transfer("vince", transfer_id).state)


def sent_ids(c: Clients) -> set[str]:
    listed = c.call("ListSentGifts", gifting_pb2.ListSentGiftsRequest(page_size=500), user("vince"))
    return {t.transfer_id for t in listed.transfers}


def restarted(process: ServiceProcess) -> ServiceProcess:
    """The same service on the same port and database, started again."""
    return ServiceProcess(process.service, process.database_url, port=process.port, log_dir=process.log_dir).start()


def test_a_gift_survives_gifting_dying_at_every_step_and_peers_stopping_between_steps(processes: Processes) -> None:
    # --- a gift whose replica dies after recording it, and each replica that recovers it dies at the next step.
    first = processes.gifting(GIFTCOIN_GIFTING_FAILPOINT="after_record").start()
    c = processes.clients(first)
    c.viewer("vince")
    c.creator("carol")
    chain = c.send_request(gift_id="doughnut", quantity=2, recipient_id="carol")
    with pytest.raises(grpc.RpcError) as info:
        c.send("vince", chain)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the process is gone mid-call
    assert first.proc is not None and first.proc.wait(30) == FAILPOINT_EXIT_CODE
    for point in ("after_hold", "after_credit", "after_capture"):
        die_at_failpoint(processes.gifting(GIFTCOIN_GIFTING_FAILPOINT=point))
    replica = processes.gifting().start()
    done = c.send_until_answered("vince", chain)  # the client's retry, answered once recovery is through
    assert done.state == COMPLETED
    assert c.balance("vince").total == 700 - 60 and c.diamonds("carol") == 30

    # --- payout stopped while a gift waits to be credited: it stays pending, and completes when payout is back.
    processes.payout.terminate()
    pending = c.send("vince", gift_id="confetti", recipient_id="carol")
    assert pending.state == gifting_pb2.GIFT_TRANSFER_STATE_PENDING
    processes.payout = restarted(processes.payout)
    wait_for(lambda: state_of(c, pending.transfer_id) == COMPLETED, what="the gift completed after payout returned")

    # --- wallet stopped between the credit and the capture (gifting died there too): completes when it is back.
    replica.terminate()
    armed = processes.gifting(GIFTCOIN_GIFTING_FAILPOINT="after_credit").start()
    before = sent_ids(c)
    with pytest.raises(grpc.RpcError):
        c.send("vince", gift_id="money_gun", recipient_id="carol")
    assert armed.proc is not None and armed.proc.wait(30) == FAILPOINT_EXIT_CODE
    processes.wallet.terminate()
    processes.gifting().start()
    (stranded,) = sent_ids(c) - before
    assert state_of(c, stranded) == gifting_pb2.GIFT_TRANSFER_STATE_PENDING  # cannot capture: wallet is down
    processes.wallet = restarted(processes.wallet)
    wait_for(lambda: state_of(c, stranded) == COMPLETED, what="the gift completed after wallet returned")

    # --- and a refused gift costs nothing, through all of it.
    assert refused(lambda: c.send("vince", gift_id="doughnut", recipient_id="not_a_creator")).reason == (
        "RECIPIENT_CANNOT_RECEIVE"
    )
    assert c.balance("vince").total == 700 - 60 - 100 - 500
    assert c.balance("vince").held == 0
    assert c.diamonds("carol") == 30 + 50 + 250
    c.close()
    assert processes.problems() == []
    # The reconciler, through the services' RPCs, finds the same: every gift agrees with its hold and credit.
    report = processes.reconcile()
    assert report.discrepancies == []
    assert (report.completed, report.failed, report.in_flight) == (3, 1, 0)
    assert report.money.coins_spent == 60 + 100 + 500 and report.money.diamonds_credited == 30 + 50 + 250
