"""WatchGifts: each completed gift once, in order, with its combo count; resumable; ends cleanly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc

from services.gifting.app import GiftingComponents, assemble
from services.gifting.settings import load_settings
from services.runtime.config import Env
from services.runtime.server import RunningServer, create_server
from tests.gifting.harness import STREAM, Suite, refused, wait_for
from tests.support.identity import as_caller, user

STREAM_KEY = f"live_stream:{STREAM.id}"


@dataclass
class Watcher:
    """A viewer following a target's feed on a thread of its own."""

    stub: gifting_pb2_grpc.GiftingServiceStub
    after_sequence: int = 0
    target: gifting_pb2.Target = field(default_factory=lambda: STREAM)
    events: list[gifting_pb2.WatchGiftsResponse] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    error: grpc.RpcError | None = None

    def __post_init__(self) -> None:
        request = gifting_pb2.WatchGiftsRequest(target=self.target, after_sequence=self.after_sequence)
        self.call = self.stub.WatchGifts(request, metadata=as_caller(user("viewer")))
        self.call.initial_metadata()  # the server sends its headers once the subscription is live
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def wait_for(self, count: int) -> list[gifting_pb2.WatchGiftsResponse]:
        wait_for(lambda: len(self.events) >= count, what=f"{count} feed events")
        return self.events

    def cancel(self) -> None:
        self.call.cancel()
        self.ended.wait(10)


def subscribed(suite: Suite) -> None:
    wait_for(lambda: suite.components.feed.watchers(STREAM_KEY) == 1, what="the stream subscribed")


@pytest.fixture
def story(suite: Suite) -> Iterator[Suite]:
    for viewer in ("vince", "wendy"):
        suite.clients.viewer(viewer)
    suite.clients.creator("carol")
    yield suite


def send(suite: Suite, sender: str, gift_id: str, quantity: int = 1) -> gifting_pb2.GiftTransfer:
    return suite.clients.send(sender, gift_id=gift_id, quantity=quantity, recipient_id="carol")


def test_each_completed_gift_arrives_once_in_order_with_its_combo_count(story: Suite) -> None:
    watcher = Watcher(story.clients.gifting)
    sends = [
        send(story, "vince", "rose", 10),
        send(story, "vince", "rose", 10),
        send(story, "vince", "rose"),
        send(story, "vince", "finger_heart"),
        send(story, "wendy", "finger_heart"),
        send(story, "vince", "finger_heart"),
    ]
    assert refused(lambda: send(story, "vince", "lion")).reason == "INSUFFICIENT_FUNDS"  # failed: not shown
    events = watcher.wait_for(6)
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.transfer.transfer_id for e in events] == [s.transfer_id for s in sends]
    assert [e.combo_count for e in events] == [1, 2, 3, 1, 1, 1]
    assert events[0].transfer == sends[0]  # the whole transfer: who sent what, how many
    watcher.cancel()
    assert len(watcher.events) == 6


def test_zero_starts_from_now_and_a_reconnecting_viewer_resumes_after_its_last_event(story: Suite) -> None:
    before = send(story, "vince", "rose")
    watcher = Watcher(story.clients.gifting)
    first = send(story, "vince", "doughnut")
    assert [e.transfer.transfer_id for e in watcher.wait_for(1)] == [first.transfer_id]
    assert watcher.events[0].sequence == 2 and before.transfer_id != first.transfer_id
    watcher.cancel()
    # Gifts completed while the viewer was away are delivered on resuming; none twice, none missed.
    missed = [send(story, "wendy", "doughnut"), send(story, "wendy", "doughnut")]
    resumed = Watcher(story.clients.gifting, after_sequence=watcher.events[-1].sequence)
    assert [e.transfer.transfer_id for e in resumed.wait_for(2)] == [m.transfer_id for m in missed]
    assert [e.combo_count for e in resumed.events] == [1, 2]
    later = send(story, "vince", "rose")
    assert resumed.wait_for(3)[-1].transfer.transfer_id == later.transfer_id
    resumed.cancel()


def test_a_cancelled_stream_goes_away_on_the_server(story: Suite) -> None:
    watcher = Watcher(story.clients.gifting)
    subscribed(story)
    watcher.cancel()
    assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: story.components.feed.watchers(STREAM_KEY) == 0, what="the stream unsubscribed")


def test_a_stopping_server_ends_its_streams_cleanly(story: Suite) -> None:
    watcher = Watcher(story.clients.gifting)
    story.restart_gifting()  # graceful stop of the old server, then a new one
    assert watcher.ended.wait(10)
    assert watcher.error is None  # the stream ended with OK, not cut off
    resumed = Watcher(story.clients.gifting)
    gift = send(story, "vince", "rose")
    assert resumed.wait_for(1)[0].transfer.transfer_id == gift.transfer_id
    resumed.cancel()


def test_a_gift_sent_through_one_replica_reaches_a_viewer_of_another(story: Suite) -> None:
    settings = load_settings(Env(story.gifting_env))
    other: GiftingComponents = assemble(settings, story.clock)
    replica: RunningServer = create_server(other.app, settings, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            watcher = Watcher(gifting_pb2_grpc.GiftingServiceStub(channel))
            gifts = [send(story, "vince", "rose"), send(story, "wendy", "rose")]  # through the first replica
            assert [e.transfer.transfer_id for e in watcher.wait_for(2)] == [g.transfer_id for g in gifts]
            watcher.cancel()
    finally:
        replica.stop(None)


def test_bad_subscriptions_are_invalid_arguments(suite: Suite) -> None:
    stub, anyone = suite.clients.gifting, as_caller(user("viewer"))
    no_target = gifting_pb2.WatchGiftsRequest(after_sequence=-1)
    error = refused(lambda: list(stub.WatchGifts(no_target, metadata=anyone, timeout=5)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in error.violations} == {"target", "after_sequence"}
    bad_kind = gifting_pb2.WatchGiftsRequest(target=gifting_pb2.Target(id="s"))
    assert refused(lambda: list(stub.WatchGifts(bad_kind, metadata=anyone, timeout=5))).violations[0].field == (
        "target.kind"
    )
