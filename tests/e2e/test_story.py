"""The story end to end, three processes over real gRPC: buy coins, send a combo, watch it live."""

from __future__ import annotations

from giftcoin.gifting.v1 import gifting_pb2

from tests.e2e.conftest import Processes
from tests.gifting.harness import STREAM
from tests.support.identity import as_caller, user


def test_a_viewer_buys_coins_and_sends_a_rose_combo_that_a_watching_viewer_sees_once(processes: Processes) -> None:
    gifting = processes.gifting().start()
    c = processes.clients(gifting)
    try:
        c.viewer("vince", "coins_70")  # a sandbox store receipt, verified by the wallet
        c.creator("carol")
        assert c.balance("vince").total == 70

        watch = c.gifting.WatchGifts(gifting_pb2.WatchGiftsRequest(target=STREAM), metadata=as_caller(user("viewer")))
        watch.initial_metadata()  # subscribed: every gift completed from now on reaches this viewer
        combo = c.send("vince", gift_id="rose", quantity=10, recipient_id="carol")

        assert combo.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
        assert c.balance("vince").total == 70 - 10
        assert c.diamonds("carol") == 10 * 5000 // 10_000 == 5
        seen = next(watch)
        assert (seen.sequence, seen.combo_count, seen.transfer) == (1, 1, combo)
        assert seen.transfer.quantity == 10 and seen.transfer.sender_id == "vince"

        # Seen once: the next event the viewer gets is the next gift, not this one again.
        later = c.send("vince", gift_id="rose", quantity=10, recipient_id="carol")
        again = next(watch)
        assert (again.sequence, again.combo_count, again.transfer.transfer_id) == (2, 2, later.transfer_id)
        watch.cancel()
        assert processes.problems() == []
        assert gifting.terminate() == 0  # SIGTERM: drains and exits cleanly
    finally:
        c.close()
