"""Viewers for the benchmark's feed phases: one process holding many WatchGifts streams.

    python -m bench.viewers TARGET PLAN PER_RESPONSE CHANNELS [AFTER]

PLAN is `stream:count,stream:count,...` (live streams of the target gifting replica); AFTER a JSON object
{stream: sequence} of where each stream's viewers start (`after_sequence`: the stream's head when the
benchmark read it, so that a viewer that is sent nothing is still checked against the head). The process opens
the streams (spread over CHANNELS connections), prints `ready N` once every one is live (its response
headers came), and follows them. It then reads one JSON line on stdin: `{"heads": {stream: last
sequence}, "window": [start, end]}` (wall-clock seconds), waits (up to a limit) until every viewer has
seen its stream's head, and prints one JSON line of what its viewers saw, checked per viewer by
sequence: events, events received within the window, missed (gaps, and any part of the head not
reached), repeated (a sequence again, or going back), and the fan-out lag of each event (received
time minus the gift's complete_time) as a histogram in milliseconds.

One Python gRPC client process (one event loop on one core) stalls before it holds a few thousand
open streams, so the benchmark starts several of these (bench/feed.py's VIEWERS_PER_PROCESS each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc

from bench.suite import metadata_for

LAG_BUCKETS = 20_000  # milliseconds; later lags count in the last bucket
CATCH_UP_SECONDS = 60.0


@dataclass
class Viewer:
    stream: str
    first: int = 0
    last: int = 0
    events: int = 0
    missed: int = 0
    repeated: int = 0


class Watching:
    def __init__(self, per_response: int) -> None:
        self.per_response = per_response
        self.lags = [0] * LAG_BUCKETS
        self.viewers: list[Viewer] = []
        self.received: Counter[int] = Counter()  # events received in each tenth of a wall-clock second
        self.heads: dict[str, int] = {}
        self.caught_up = asyncio.Event()

    def saw(self, viewer: Viewer, events: Any, now: float) -> None:
        """A response's events (consecutive, by the contract: checked by its first and last and its
        count, so that a viewer costs this process little per event). Each event's lag is taken as
        the first's, the oldest of the response: an upper bound."""
        count = len(events)
        first, last = events[0].sequence, events[count - 1].sequence
        if last - first + 1 != count:
            viewer.missed += max(0, last - first + 1 - count)
            viewer.repeated += max(0, count - (last - first + 1))
        if viewer.last and first <= viewer.last:
            viewer.repeated += viewer.last - first + 1
        elif viewer.last and first > viewer.last + 1:
            viewer.missed += first - viewer.last - 1
        if not viewer.first:
            viewer.first = first
        viewer.last = max(viewer.last, last)
        viewer.events += count
        self.received[int(now * 10)] += count
        done = events[0].complete_time
        lag_ms = int((now - done.seconds - done.nanos / 1e9) * 1000)
        self.lags[min(max(lag_ms, 0), LAG_BUCKETS - 1)] += count

    async def follow(self, stub: gifting_pb2_grpc.GiftingServiceStub, viewer: Viewer, live: asyncio.Event) -> None:
        request = gifting_pb2.WatchGiftsRequest(
            target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=viewer.stream),
            max_events_per_response=self.per_response,
            after_sequence=viewer.last,
        )
        call: Any = stub.WatchGifts(request, metadata=metadata_for(f"watcher-{id(viewer)}"))
        await call.initial_metadata()
        live.set()
        try:
            async for response in call:
                if response.events:
                    self.saw(viewer, response.events, time.time())
                if self.heads and viewer.last >= self.heads.get(viewer.stream, 0):
                    self.check_caught_up()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                print(f"viewer of {viewer.stream}: {error.code().name} {error.details()}", file=sys.stderr)

    def check_caught_up(self) -> None:
        if all(v.last >= self.heads.get(v.stream, 0) for v in self.viewers):
            self.caught_up.set()


async def main(target: str, plan: str, per_response: int, channels: int, after: dict[str, int]) -> None:
    watching = Watching(per_response)
    for part in plan.split(","):
        stream, _, count = part.rpartition(":")
        watching.viewers += [Viewer(stream, last=after.get(stream, 0)) for _ in range(int(count))]
    # Connections of their own (by default channels to one target share one): a viewer's app has its own.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
    ]
    stubs = [gifting_pb2_grpc.GiftingServiceStub(channel) for channel in opened]
    lives = [asyncio.Event() for _ in watching.viewers]
    tasks = [
        asyncio.ensure_future(watching.follow(stubs[i % channels], viewer, lives[i]))
        for i, viewer in enumerate(watching.viewers)
    ]
    for live in lives:
        await live.wait()
    print(f"ready {len(watching.viewers)}", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    order = json.loads(line)
    watching.heads = order["heads"]
    watching.check_caught_up()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watching.caught_up.wait(), CATCH_UP_SECONDS)
    start, end = order["window"]
    summary = {
        "viewers": len(watching.viewers),
        "events": sum(v.events for v in watching.viewers),
        "events_in_window": sum(n for tenth, n in watching.received.items() if start * 10 <= tenth < end * 10),
        "missed": sum(v.missed + max(0, watching.heads.get(v.stream, 0) - v.last) for v in watching.viewers),
        "repeated": sum(v.repeated for v in watching.viewers),
        "lags_ms": {str(ms): n for ms, n in enumerate(watching.lags) if n},
    }
    print(json.dumps(summary), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in opened:
        await channel.close()


if __name__ == "__main__":
    after = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), after))
