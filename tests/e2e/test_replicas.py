"""The live feed across two gifting processes on one database, and a viewer resuming on the other."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2

from tests.e2e.conftest import Processes
from tests.gifting.harness import STREAM, Clients
from tests.support.identity import as_caller, user
from tests.support.processes import free_port


def watch(c: Clients, after_sequence: int = 0) -> Any:
    call = c.gifting.WatchGifts(
        gifting_pb2.WatchGiftsRequest(target=STREAM, after_sequence=after_sequence),
        metadata=as_caller(user("viewer")),
    )
    call.initial_metadata()  # live from here on
    return call


def test_gifts_sent_through_one_replica_reach_viewers_of_another_and_a_viewer_resumes_elsewhere(
    processes: Processes,
) -> None:
    a = processes.gifting(port=free_port()).start()
    b = processes.gifting(port=free_port()).start()
    via_a, via_b = processes.clients(a), processes.clients(b)
    try:
        via_a.viewer("vince")
        via_a.viewer("wendy")
        via_a.creator("carol")

        on_b = watch(via_b)
        sent = [
            via_a.send("vince", gift_id="rose", quantity=5, recipient_id="carol"),
            via_a.send("vince", gift_id="rose", quantity=5, recipient_id="carol"),
            via_a.send("wendy", gift_id="finger_heart", recipient_id="carol"),
        ]
        seen = [next(on_b) for _ in sent]
        assert [(e.sequence, e.combo_count) for e in seen] == [(1, 1), (2, 2), (3, 1)]
        assert [e.transfer.transfer_id for e in seen] == [t.transfer_id for t in sent]

        b.kill()  # the viewer's replica goes away
        with pytest.raises(grpc.RpcError):
            next(on_b)
        missed = [
            via_a.send("vince", gift_id="rose", quantity=5, recipient_id="carol"),
            via_a.send("vince", gift_id="rose", quantity=5, recipient_id="carol"),
        ]
        on_a = watch(via_a, after_sequence=seen[-1].sequence)  # reconnect elsewhere, after the last one seen
        resumed = [next(on_a) for _ in missed]
        assert [(e.sequence, e.combo_count) for e in resumed] == [(4, 1), (5, 2)]
        assert [e.transfer.transfer_id for e in resumed] == [t.transfer_id for t in missed]
        latest = via_a.send("wendy", gift_id="rose", recipient_id="carol")
        assert next(on_a).transfer.transfer_id == latest.transfer_id
        on_a.cancel()
        assert processes.problems() == []
    finally:
        via_a.close()
        via_b.close()
