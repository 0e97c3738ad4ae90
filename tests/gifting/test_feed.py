"""WatchGifts: each completed gift once, in order, with its combo count, to every viewer of a replica;
resumable; a slow viewer delays no one; connections that behave behind load balancers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc

from services.gifting.app import GiftingComponents, assemble
from services.gifting.model import FeedEventRecord, Target
from services.gifting.settings import load_settings
from services.runtime import eventloop
from services.runtime.config import Env
from services.runtime.errors import from_rpc_error
from services.runtime.server import RunningServer, create_server
from tests.gifting.harness import STREAM, Suite, refused, start_suite, wait_for
from tests.support import databases
from tests.support.identity import as_caller, user

STREAM_KEY = f"live_stream:{STREAM.id}"
STREAM_TARGET = Target("live_stream", STREAM.id)


@dataclass
class Watcher:
    """A viewer following a target's feed on a thread of its own (`reading` cleared: it stops reading).

    `per_response` > 1 asks for several events per response; `events` holds them one by one either way.
    """

    stub: gifting_pb2_grpc.GiftingServiceStub
    after_sequence: int = 0
    target: gifting_pb2.Target = field(default_factory=lambda: STREAM)
    per_response: int = 0
    from_start: bool = False
    events: list[gifting_pb2.GiftEvent] = field(default_factory=list)
    transfers: list[gifting_pb2.GiftTransfer] = field(default_factory=list)  # one event per response: each's
    responses: int = 0
    ended: threading.Event = field(default_factory=threading.Event)
    reading: threading.Event = field(default_factory=threading.Event)
    error: grpc.RpcError | None = None

    def __post_init__(self) -> None:
        request = gifting_pb2.WatchGiftsRequest(
            target=self.target,
            after_sequence=self.after_sequence,
            max_events_per_response=self.per_response,
            from_start=self.from_start,
        )
        self.call = self.stub.WatchGifts(request, metadata=as_caller(user("viewer")))
        self.call.initial_metadata()  # the server sends its headers once the subscription is live
        self.reading.set()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for response in self.call:
                self.reading.wait()
                self.responses += 1
                if self.per_response > 1:
                    assert not response.HasField("transfer") and response.sequence == 0
                    self.events.extend(response.events)
                else:  # one event per response, with its whole transfer
                    assert not response.events
                    t = response.transfer
                    self.transfers.append(t)
                    self.events.append(
                        gifting_pb2.GiftEvent(
                            sequence=response.sequence,
                            transfer_id=t.transfer_id,
                            sender_id=t.sender_id,
                            gift_id=t.gift_id,
                            quantity=t.quantity,
                            combo_count=response.combo_count,
                            complete_time=t.complete_time,
                        )
                    )
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 30) -> list[gifting_pb2.GiftEvent]:
        wait_for(lambda: len(self.events) >= count, timeout=timeout, what=f"{count} feed events")
        return self.events

    def cancel(self) -> None:
        self.call.cancel()
        self.ended.wait(10)


def subscribed(suite: Suite) -> None:
    wait_for(lambda: suite.components.feed.viewers(STREAM_KEY) == 1, what="the stream subscribed")


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
    assert [e.transfer_id for e in events] == [s.transfer_id for s in sends]
    assert [e.combo_count for e in events] == [1, 2, 3, 1, 1, 1]
    assert watcher.transfers[0] == sends[0]  # the whole transfer: who sent what, how many
    watcher.cancel()
    assert len(watcher.events) == 6


def test_zero_starts_from_now_and_a_reconnecting_viewer_resumes_after_its_last_event(story: Suite) -> None:
    before = send(story, "vince", "rose")
    watcher = Watcher(story.clients.gifting)
    first = send(story, "vince", "doughnut")
    assert [e.transfer_id for e in watcher.wait_for(1)] == [first.transfer_id]
    assert watcher.events[0].sequence == 2 and before.transfer_id != first.transfer_id
    watcher.cancel()
    # Gifts completed while the viewer was away are delivered on resuming; none twice, none missed.
    missed = [send(story, "wendy", "doughnut"), send(story, "wendy", "doughnut")]
    resumed = Watcher(story.clients.gifting, after_sequence=watcher.events[-1].sequence)
    assert [e.transfer_id for e in resumed.wait_for(2)] == [m.transfer_id for m in missed]
    assert [e.combo_count for e in resumed.events] == [1, 2]
    later = send(story, "vince", "rose")
    assert resumed.wait_for(3)[-1].transfer_id == later.transfer_id
    resumed.cancel()


def test_a_cancelled_stream_goes_away_on_the_server(story: Suite) -> None:
    watcher = Watcher(story.clients.gifting)
    subscribed(story)
    watcher.cancel()
    assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: story.components.feed.viewers(STREAM_KEY) == 0, what="the stream unsubscribed")


def test_a_stopping_server_tells_its_viewers_to_watch_again_and_they_resume_without_loss(story: Suite) -> None:
    watcher = Watcher(story.clients.gifting)
    first = send(story, "vince", "rose")
    watcher.wait_for(1)
    story.restart_gifting()  # graceful stop of the old server, then a new one
    assert watcher.ended.wait(10)
    assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.UNAVAILABLE
    assert from_rpc_error(watcher.error).reason == "SERVER_STOPPING"  # type: ignore[union-attr]
    missed = send(story, "wendy", "rose")  # while the viewer was away
    resumed = Watcher(story.clients.gifting, after_sequence=watcher.events[-1].sequence)
    later = send(story, "vince", "rose")
    got = [e.transfer_id for e in resumed.wait_for(2)]
    assert [first.transfer_id, *got] == [first.transfer_id, missed.transfer_id, later.transfer_id]
    resumed.cancel()


def test_a_gift_sent_through_one_replica_reaches_a_viewer_of_another(story: Suite) -> None:
    settings = load_settings(Env(story.gifting_env))
    other: GiftingComponents = assemble(settings, story.clock)
    replica: RunningServer = create_server(other.app, settings, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            watcher = Watcher(gifting_pb2_grpc.GiftingServiceStub(channel))
            gifts = [send(story, "vince", "rose"), send(story, "wendy", "rose")]  # through the first replica
            assert [e.transfer_id for e in watcher.wait_for(2)] == [g.transfer_id for g in gifts]
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


def send_together(suite: Suite, count: int, senders: tuple[str, ...] = ("vince", "wendy")) -> list[str]:
    """`count` roses sent at once by the senders in turn (they batch); their transfer ids."""
    ids: list[str] = [""] * count

    def one(i: int) -> None:
        ids[i] = send(suite, senders[i % len(senders)], "rose").transfer_id

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def in_feed_order(suite: Suite, count: int) -> list[str]:
    """The transfer ids of the stream's first `count` events, as the outbox numbered them."""
    return [e.transfer.transfer_id for e in suite.gifts.feed_after(STREAM_TARGET, 0, count)]


def test_two_hundred_viewers_of_one_replica_each_see_every_gift_once_in_order_and_gifting_goes_on(
    story: Suite,
) -> None:
    # Viewers are no longer server threads: the 16th no longer stops the replica (issue 17).
    watchers = [Watcher(story.clients.gifting, per_response=0 if i % 2 else 50) for i in range(200)]
    wait_for(lambda: story.components.feed.viewers(STREAM_KEY) == 200, what="200 viewers subscribed")
    assert len(story.clients.call("ListGifts", gifting_pb2.ListGiftsRequest(), user("vince")).gifts) == 9
    sent = send_together(story, 12)
    order = in_feed_order(story, 12)
    assert sorted(order) == sorted(sent)
    for watcher in watchers:
        events = watcher.wait_for(12)
        assert [e.sequence for e in events] == list(range(1, 13))
        assert [e.transfer_id for e in events] == order
    assert sum(w.responses for w in watchers[::2]) < sum(w.responses for w in watchers[1::2])  # several per response
    for watcher in watchers:
        watcher.cancel()
    wait_for(lambda: story.components.feed.viewers() == 0, what="every viewer gone")


def test_a_viewer_that_stops_reading_delays_no_one_and_later_resumes_without_a_gap(story: Suite) -> None:
    story.components.feed.window_events = 4  # a short window: a viewer soon falls behind it
    slow, brisk = Watcher(story.clients.gifting), Watcher(story.clients.gifting, per_response=10)
    first = send(story, "vince", "rose")
    slow.wait_for(1)
    slow.reading.clear()  # the slow viewer's client stops reading
    sent = [first.transfer_id, *send_together(story, 30)]
    order = in_feed_order(story, 31)
    assert [e.transfer_id for e in brisk.wait_for(31)] == order  # not held up
    slow.reading.set()
    events = slow.wait_for(31)
    assert [e.sequence for e in events] == list(range(1, 32))
    assert [e.transfer_id for e in events] == order and sorted(order) == sorted(sent)
    slow.cancel()
    brisk.cancel()


def test_a_viewer_behind_the_window_reads_the_outbox_from_its_last_sequence(story: Suite) -> None:
    """The fall-back a slow viewer takes, driven directly: the window has moved on past its cursor."""
    feed = story.components.feed
    feed.window_events = 4

    async def live() -> None:
        pass

    seen: list[int] = []
    resume = asyncio.Event()

    async def slow_viewer() -> None:
        def encode(events: Sequence[FeedEventRecord], per_response: int) -> list[bytes]:
            return [str(e.sequence).encode() for e in events]

        async for response in feed.watch(STREAM_TARGET, None, 1, encode, live):
            seen.append(int(response))
            if len(seen) == 1:
                await resume.wait()  # the viewer's writes block: it stops pulling events
            if len(seen) == 21:
                return

    task = asyncio.run_coroutine_threadsafe(slow_viewer(), eventloop.loop())
    wait_for(lambda: feed.viewers(STREAM_KEY) == 1, what="the viewer subscribed")
    send(story, "vince", "rose")
    wait_for(lambda: seen == [1], what="the first event")
    for _ in range(20):  # one after another: read into the window a few at a time, the oldest let go
        send(story, "vince", "rose")
    wait_for(lambda: feed._targets[STREAM_KEY].head == 21, what="the replica read every event")
    catch_ups = feed.catch_ups
    eventloop.loop().call_soon_threadsafe(resume.set)
    task.result(30)
    assert seen == list(range(1, 22))  # every event once, in order
    assert feed.catch_ups > catch_ups  # from the outbox: the window had moved past it


def test_from_start_reads_a_targets_feed_from_its_first_event(story: Suite) -> None:
    early = [send(story, "vince", "rose").transfer_id for _ in range(3)]
    watcher = Watcher(story.clients.gifting, from_start=True, per_response=2)
    assert [e.transfer_id for e in watcher.wait_for(3)] == early
    assert [e.sequence for e in watcher.events] == [1, 2, 3]
    watcher.cancel()


def test_a_replica_at_its_viewer_limit_refuses_one_more_with_a_reason_and_still_sends(
    make_database: Callable[[str], str],
) -> None:
    running = start_suite(make_database, GIFTCOIN_GIFTING_FEED_MAX_VIEWERS="2")
    try:
        running.clients.viewer("vince")
        running.clients.creator("carol")
        watchers = [Watcher(running.clients.gifting) for _ in range(2)]
        third = gifting_pb2.WatchGiftsRequest(target=STREAM)
        error = refused(lambda: next(running.clients.gifting.WatchGifts(third, metadata=as_caller(user("v")))))
        assert (error.code, error.reason, error.metadata["limit"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_VIEWERS",
            "2",
        )
        gift = send(running, "vince", "rose")
        assert gift.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
        for watcher in watchers:
            assert watcher.wait_for(1)[0].transfer_id == gift.transfer_id
            watcher.cancel()
        assert running.problems() == []
    finally:
        running.close()


@pytest.fixture
def sqlite_suite(tmp_path: Path) -> Iterator[Suite]:
    """The suite on SQLite only: what these tests check is the transport, not the storage."""
    running = start_suite(lambda service: databases.fresh_database("sqlite", service, tmp_path))
    try:
        yield running
    finally:
        running.close()


def test_a_client_pinging_every_ten_seconds_keeps_its_idle_stream_for_a_minute(sqlite_suite: Suite) -> None:
    # Connections: gRPC's default server policy cut such a client off after its third ping (GOAWAY).
    pinging = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_permit_without_calls", 1)]
    with grpc.insecure_channel(sqlite_suite.clients.gifting_target, options=pinging) as channel:
        watcher = Watcher(gifting_pb2_grpc.GiftingServiceStub(channel))
        assert not watcher.ended.wait(61)  # a minute idle, pinging all the while
        sqlite_suite.clients.viewer("vince")
        sqlite_suite.clients.creator("carol")
        gift = send(sqlite_suite, "vince", "rose")
        assert watcher.wait_for(1)[0].transfer_id == gift.transfer_id
        watcher.cancel()


VIEWER_SCRIPT = """
import sys, grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
target = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=sys.argv[2])
request = gifting_pb2.WatchGiftsRequest(target=target)
call = gifting_pb2_grpc.GiftingServiceStub(channel).WatchGifts(request, metadata=[("authorization", sys.argv[3])])
call.initial_metadata()
print("live", flush=True)
for _ in call:
    pass
"""


def test_a_viewer_that_vanished_without_closing_is_found_by_the_servers_pings(tmp_path: Path) -> None:
    running = start_suite(
        lambda service: databases.fresh_database("sqlite", service, tmp_path),
        GIFTCOIN_KEEPALIVE_TIME_SECONDS="1",
        GIFTCOIN_KEEPALIVE_TIMEOUT_SECONDS="1",
    )
    ((_, authorization),) = as_caller(user("viewer"))
    viewer = subprocess.Popen(
        [sys.executable, "-c", VIEWER_SCRIPT, running.clients.gifting_target, STREAM.id, authorization],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert viewer.stdout is not None and viewer.stdout.readline().strip() == b"live"
        wait_for(lambda: running.components.feed.viewers(STREAM_KEY) == 1, what="the viewer subscribed")
        viewer.send_signal(signal.SIGSTOP)  # its process is there, its connection open, but it answers nothing
        wait_for(lambda: running.components.feed.viewers(STREAM_KEY) == 0, timeout=20, what="the stream closed")
    finally:
        viewer.kill()
        viewer.wait(10)
        running.close()


BURST_SCRIPT = """
import asyncio, sys, grpc
from giftcoin.gifting.v1 import gifting_pb2
async def main(target, count, connections, authorization):
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    request = gifting_pb2.WatchGiftsRequest(
        target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=sys.argv[4])
    ).SerializeToString()
    calls = [channels[i % connections].unary_stream("/giftcoin.gifting.v1.GiftingService/WatchGifts")(
        request, metadata=[("authorization", authorization)]) for i in range(count)]
    await asyncio.gather(*(call.initial_metadata() for call in calls))
    print(sum(not call.done() for call in calls), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]))
"""


def test_thousands_of_viewers_arriving_at_once_are_all_held(sqlite_suite: Suite) -> None:
    # gRPC's defaults cancelled at random the calls of a burst the event loop had not picked up yet.
    ((_, authorization),) = as_caller(user("viewer"))
    burst = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BURST_SCRIPT,
            sqlite_suite.clients.gifting_target,
            "2500",
            "25",
            STREAM.id,
            authorization,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert burst.stdout is not None and burst.stdout.readline().strip() == "2500"  # every call still open
        wait_for(lambda: sqlite_suite.components.feed.viewers(STREAM_KEY) == 2500, what="2500 viewers held")
    finally:
        burst.kill()
        burst.wait(10)
    wait_for(lambda: sqlite_suite.components.feed.viewers() == 0, what="every viewer gone")
