"""Sends that arrive together go through the saga together, and each ends as it would alone.

The domain's batch path (`Gifts.record_sends`, `Saga.drive`) is driven directly here, so that the
batch's composition is known; the SendGift tests elsewhere go through it too (batches of one, or of
whatever arrives together). The `suite` fixture checks conservation across the three services.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from sqlalchemy import update

from services.gifting.model import COMPLETED, FAILED, PENDING, Send, SendAsk, Target, TransferRecord
from services.gifting.ports import new_lease_owner
from services.gifting.storage import UnitOfWork, gift_transfers
from services.runtime import eventloop
from services.runtime.errors import DomainError
from tests.gifting.harness import STREAM, Suite, new_id, start_suite
from tests.gifting.test_recovery import recover_until_finished
from tests.support.identity import as_caller, user

LEASE = 10  # GIFTCOIN_GIFTING_LEASE_SECONDS of the suite
STREAM_TARGET = Target("live_stream", STREAM.id)


class Crash(Exception):
    """The process died here."""


@pytest.fixture
def tight(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The suite with a daily limit of 100 coins."""
    running = start_suite(make_database, GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS="100")
    try:
        yield running
        assert running.problems() == []
    finally:
        running.close()


def ask(sender: str, gift_id: str = "doughnut", quantity: int = 1, recipient: str = "carol") -> SendAsk:
    request_id = new_id()
    return SendAsk(sender, request_id, f"print-{request_id}", Send(gift_id, quantity, recipient, STREAM_TARGET), "{}")


def record_and_settle(suite: Suite, asks: list[SendAsk]) -> list[TransferRecord | DomainError]:
    """What the SendGift batcher does with a batch, minus the request-id store and protobuf."""
    gifts, owner = suite.gifts, new_lease_owner()
    recorded = gifts.transactions.run(lambda uow: gifts.record_sends(uow, asks, owner))
    fresh = [r for r in recorded if isinstance(r, TransferRecord)]
    settled = eventloop.run(suite.saga.drive(fresh, owner))
    return [r if isinstance(r, DomainError) else settled[r.transfer_id] for r in recorded]


def transfer(suite: Suite, caller_id: str, transfer_id: str) -> TransferRecord:
    return suite.gifts.transactions.run(lambda uow: suite.gifts.get_transfer(uow, caller_id, transfer_id))


def test_each_send_of_a_batch_ends_as_it_would_alone(tight: Suite) -> None:
    c = tight.clients
    c.viewer("vince")  # 700 coins
    c.viewer("wendy")
    c.viewer("penny", package_id="")  # a wallet without coins
    c.creator("carol")
    outcomes = record_and_settle(
        tight,
        [
            ask("vince", quantity=2),  # 60 coins: completes
            ask("wendy", "rose"),  # completes
            ask("vince", quantity=2),  # 120 today: past vince's daily limit of 100
            ask("penny"),  # wallet refuses the hold
            ask("vince", recipient="vince"),  # to oneself
            ask("wendy", "no-such-gift"),
            ask("wendy", recipient="nobody"),  # not a creator: payout refuses the credit, the hold is released
            ask("vince", "finger_heart", quantity=4),  # 80 today: still within the limit
        ],
    )
    assert states(outcomes) == [
        COMPLETED,
        COMPLETED,
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_SPENDING_LIMIT_EXCEEDED"),
        FAILED,
        (grpc.StatusCode.INVALID_ARGUMENT, "SELF_GIFT"),
        (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND"),
        FAILED,
        COMPLETED,
    ]
    failed = [o for o in outcomes if isinstance(o, TransferRecord) and o.state == FAILED]
    assert [f.failure_reason for f in failed] == ["INSUFFICIENT_FUNDS", "RECIPIENT_CANNOT_RECEIVE"]
    # A refused send left nothing recorded: every transfer stored is one answered with its transfer.
    stored = tight.db.run(lambda conn: conn.exec_driver_sql("SELECT transfer_id FROM gift_transfers").all())
    assert sorted(r[0] for r in stored) == sorted(o.transfer_id for o in outcomes if isinstance(o, TransferRecord))
    assert c.balance("vince").total == 700 - 60 - 20 and c.balance("vince").held == 0
    assert c.balance("wendy").total == 699 and c.balance("wendy").held == 0  # the refused credit cost nothing
    assert c.diamonds("carol") == 30 + 0 + 10
    # The completed gifts reached the live feed once each, in the batch's order.
    completed = [o.transfer_id for o in outcomes if isinstance(o, TransferRecord) and o.state == COMPLETED]
    assert [e.transfer.transfer_id for e in tight.gifts.feed_after(STREAM_TARGET, 0)] == completed
    # A failed gift gives its coins back to the daily limit (wendy: 1 of 100 used); vince has used 80.
    again = record_and_settle(tight, [ask("wendy", quantity=3), ask("vince")])
    assert states(again) == [COMPLETED, (grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_SPENDING_LIMIT_EXCEEDED")]
    assert c.balance("wendy").total == 699 - 90


def states(outcomes: list[TransferRecord | DomainError]) -> list[object]:
    return [o.state if isinstance(o, TransferRecord) else (o.code, o.reason) for o in outcomes]


def test_a_crash_mid_batch_leaves_every_gift_of_it_to_recovery_which_moves_value_once(tight: Suite) -> None:
    c = tight.clients
    for viewer in ("vince", "wendy", "xena"):
        c.viewer(viewer)
    c.creator("carol")

    def crash(point: str) -> None:
        if point == "after_credit":
            raise Crash(point)

    tight.saga.failpoint = crash
    asks = [ask("vince"), ask("wendy", quantity=3), ask("xena", "rose")]
    with pytest.raises(Crash):
        record_and_settle(tight, asks)
    tight.saga.failpoint = lambda _point: None
    sent = sent_transfers(tight, asks)
    assert [t.state for t in sent] == [PENDING] * 3
    assert tight.recover() == 0  # the dead batch's lease still holds
    tight.clock.advance(seconds=LEASE + 1)
    assert tight.recover() == 3
    assert [transfer(tight, a.sender_id, t.transfer_id).state for a, t in zip(asks, sent, strict=True)] == [
        COMPLETED
    ] * 3
    assert c.diamonds("carol") == 15 + 45 + 0
    assert (c.balance("vince").total, c.balance("wendy").total, c.balance("xena").total) == (670, 610, 699)


def sent_transfers(suite: Suite, asks: list[SendAsk]) -> list[TransferRecord]:
    pairs = [(a.sender_id, a.request_id) for a in asks]
    found = suite.db.run(lambda conn: UnitOfWork(conn).transfers.by_requests(pairs)())
    return [found[(a.sender_id, a.request_id)] for a in asks]


def test_concurrent_send_gift_calls_each_complete_once_and_replay_identically(tight: Suite) -> None:
    c = tight.clients
    viewers = [f"viewer{i}" for i in range(6)]
    for viewer in viewers:
        c.viewer(viewer)
    c.creator("carol")
    c.creator("dave")
    requests = {
        (viewer, n): c.send_request("doughnut", recipient_id="carol" if n % 2 else "dave")
        for viewer in viewers
        for n in range(3)
    }
    answers: dict[tuple[str, int], gifting_pb2.GiftTransfer] = {}
    start = threading.Barrier(len(requests))

    def send(key: tuple[str, int]) -> None:
        start.wait()
        answers[key] = c.send_until_answered(key[0], requests[key])

    threads = [threading.Thread(target=send, args=(key,)) for key in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.state for a in answers.values()} == {gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED}
    assert len({a.transfer_id for a in answers.values()}) == len(requests)
    for viewer in viewers:
        assert c.balance(viewer).total == 700 - 3 * 30
    assert c.diamonds("carol") + c.diamonds("dave") == len(requests) * 15
    assert len(tight.gifts.feed_after(STREAM_TARGET, 0)) == len(requests)
    # Each replays as the gift it became; the same id with another gift is refused.
    for key, request in requests.items():
        assert c.send(key[0], request) == answers[key]
    reused = gifting_pb2.SendGiftRequest()
    reused.CopyFrom(requests[("viewer0", 0)])
    reused.quantity = 2
    with pytest.raises(grpc.RpcError) as info:
        c.gifting.SendGift(reused, metadata=as_caller(user("viewer0")), timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_nothing_of_a_batch_is_left_pending(tight: Suite) -> None:
    """A pending transfer after its batch means a gift left to recovery without cause."""
    tight.clients.viewer("vince")
    tight.clients.creator("carol")
    outcomes = record_and_settle(tight, [ask("vince", "rose") for _ in range(5)])
    assert all(isinstance(o, TransferRecord) and o.state != PENDING for o in outcomes)


def test_a_peer_down_mid_batch_leaves_every_gift_of_it_pending_and_recovery_finishes_them(tight: Suite) -> None:
    c = tight.clients
    for viewer in ("vince", "wendy"):
        c.viewer(viewer)
    c.creator("carol")
    # Wallet down: no hold was made, nothing moved; the batch is left to recovery.
    tight.stop_wallet()
    pending = record_and_settle(tight, [ask("vince"), ask("wendy", "rose")])
    assert states(pending) == [PENDING, PENDING]
    tight.start_wallet()
    assert (c.balance("vince").held, c.balance("wendy").held) == (0, 0)
    # Payout down after the holds: the decision to credit is not taken, the coins stay reserved.
    tight.stop_payout()
    held = record_and_settle(tight, [ask("vince", quantity=2), ask("wendy")])
    assert states(held) == [PENDING, PENDING]
    assert (c.balance("vince").held, c.balance("wendy").held) == (60, 30)
    tight.start_payout()
    gifts = [t for t in (*pending, *held) if isinstance(t, TransferRecord)]
    recover_until_finished(tight, expected=len(gifts))
    assert [transfer(tight, t.sender_id, t.transfer_id).state for t in gifts] == [COMPLETED] * 4
    assert (c.balance("vince").total, c.balance("wendy").total) == (700 - 30 - 60, 700 - 1 - 30)
    assert c.diamonds("carol") == 15 + 0 + 30 + 15


def test_a_batch_that_loses_its_lease_answers_every_client_with_its_gift_as_it_stands(tight: Suite) -> None:
    c = tight.clients
    senders = ("vince", "wendy", "xena")
    for viewer in senders:
        c.viewer(viewer)
    c.creator("carol")

    def taken_over(point: str) -> None:  # another replica takes the batch's gifts over mid-saga
        if point == "after_hold":
            pending = gift_transfers.c.state == "pending"
            tight.db.run(lambda conn: conn.execute(update(gift_transfers).where(pending).values(lease_owner="b")))

    tight.saga.failpoint = taken_over
    answers: dict[str, gifting_pb2.GiftTransfer | grpc.RpcError] = {}
    start = threading.Barrier(len(senders))

    def send(sender: str) -> None:
        start.wait()
        try:
            answers[sender] = c.send(sender, gift_id="doughnut", recipient_id="carol")
        except grpc.RpcError as error:
            answers[sender] = error

    threads = [threading.Thread(target=send, args=(sender,)) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tight.saga.failpoint = lambda _point: None
    # Each client hears of its gift, as it stands (the other replica drives it): never INTERNAL.
    assert {sender: getattr(a, "state", a) for sender, a in answers.items()} == {
        sender: gifting_pb2.GIFT_TRANSFER_STATE_PENDING for sender in senders
    }
    tight.clock.advance(seconds=LEASE + 1)  # the other replica died: recovery takes the gifts over
    recover_until_finished(tight, expected=3)
    assert {c.transfer(s, answers[s].transfer_id).state for s in senders} == {  # type: ignore[union-attr]
        gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
    }
    assert c.diamonds("carol") == 3 * 15
