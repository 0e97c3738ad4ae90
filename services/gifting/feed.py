"""The live feed's delivery: one replica's viewers, fed from the durable outbox.

Events are written by the saga in the transaction that completes a gift (storage.FeedRepository),
numbered per target with no gaps, in the database every replica shares: the outbox is the truth.

Each replica reads a watched target's new events once, whatever its number of viewers, into a short
window of recent events (a `_TargetFeed`), and every local viewer of the target is sent them from
there, in order, each once. New events are read when a gift completes on this replica, and when the
poller (one query a tick for every watched target) sees a head moved by another replica; reads of a
target are at most one per `flush_interval()`, so a busy stream's events reach its viewers a few at a
time, several to a response when the viewer asked for that. The interval grows with the replica's
viewers, so that the responses written to all of them stay within a budget per second: no number
of viewers takes more than that from sending gifts (their lag grows instead).

Viewers are coroutines, woken a slice at a time so that a stream with thousands of viewers never
holds the event loop (SendGift's callbacks run between the slices). A viewer writes its responses
itself: a slow one (its client reads slowly) holds up only itself, and once it is behind the window
it reads the outbox from its last sequence, a page at a time, until it has caught up. Responses are
encoded once per window chunk and shared by the viewers that are sent them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from services.gifting.domain import Gifts
from services.gifting.model import FeedEventRecord, Target
from services.runtime.errors import DomainError, unavailable
from services.runtime.server import BackgroundLoop
from services.runtime.telemetry import FEED_LAG, FEED_VIEWERS, untraced

log = logging.getLogger(__name__)

# Encodes events as the responses a viewer is sent: up to `per_response` events each.
Encode = Callable[[Sequence[FeedEventRecord], int], list[bytes]]

# Recent events a replica keeps per watched target (at least): a viewer that falls further behind
# reads the outbox itself, so the window covers a busy stream's events of many seconds.
WINDOW_EVENTS = 8192
READ_PAGE = 500  # events read from the outbox at a time
WAKE_SLICE = 64  # viewers woken at a time before the event loop runs what else is ready


@dataclass
class _Chunk:
    """Events read together, consecutive; their responses, encoded once per shape and shared."""

    events: tuple[FeedEventRecord, ...]
    encoded: dict[int, list[bytes]] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return self.events[0].sequence

    @property
    def last(self) -> int:
        return self.events[-1].sequence

    def responses(self, after: int, per_response: int, encode: Encode) -> list[bytes]:
        if after < self.first:  # the whole chunk: what (nearly) every viewer is sent
            if per_response not in self.encoded:
                self.encoded[per_response] = encode(self.events, per_response)
            return self.encoded[per_response]
        return encode([e for e in self.events if e.sequence > after], per_response)


class _TargetFeed:
    """One watched target on this replica: its head, its window of recent events, its waiting viewers."""

    def __init__(self, key: str, head: int) -> None:
        self.key = key
        self.head = head  # the last sequence read into the window
        self.chunks: deque[_Chunk] = deque()
        self.window = 0  # events in the chunks
        self.viewers = 0
        self.waiting: list[asyncio.Future[None]] = []
        self.reading: asyncio.Task[None] | None = None
        self.read_again = False
        self.last_read = 0.0

    def append(self, events: Sequence[FeedEventRecord], window_events: int) -> None:
        self.chunks.append(_Chunk(tuple(events)))
        self.window += len(events)
        self.head = events[-1].sequence
        while self.window - len(self.chunks[0].events) >= window_events:
            self.window -= len(self.chunks.popleft().events)

    def chunks_after(self, cursor: int) -> list[_Chunk] | None:
        """The window's chunks holding the events after `cursor`; None if some of them left it."""
        if not self.chunks or cursor + 1 < self.chunks[0].first:
            return None
        return [c for c in self.chunks if c.last > cursor]


def server_stopping() -> DomainError:
    return unavailable("SERVER_STOPPING", "this replica is stopping: watch again (with after_sequence) to resume")


def too_many_viewers(limit: int) -> DomainError:
    return DomainError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_VIEWERS",
        f"this replica serves its limit of {limit} viewers: watch through another replica, or later",
        {"limit": str(limit)},
    )


class LiveFeed:
    """The viewers this replica serves, and what wakes them."""

    def __init__(
        self,
        gifting: Gifts,
        flush_seconds: float = 0.1,
        max_viewers: int = 0,
        writes_per_second: int = 5000,
        window_events: int = WINDOW_EVENTS,
    ) -> None:
        self.gifting = gifting
        self.flush_seconds = flush_seconds
        self.writes_per_second = writes_per_second
        self.max_viewers = max_viewers  # 0: no limit
        self.window_events = window_events
        self.catch_ups = 0  # outbox reads by viewers behind the window
        self.closed = False
        self._targets: dict[str, _TargetFeed] = {}
        self._viewers = 0
        self._opening: dict[str, asyncio.Task[None]] = {}

    def viewers(self, target_key: str | None = None) -> int:
        """How many streams of this replica follow the target (all targets: None)."""
        if target_key is None:
            return self._viewers
        feed = self._targets.get(target_key)
        return 0 if feed is None else feed.viewers

    async def watch(
        self,
        target: Target,
        after_sequence: int | None,
        per_response: int,
        encode: Encode,
        on_live: Callable[[], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        """The target's events after `after_sequence` (None: from now on), in order, each once, as
        encoded responses, until the client goes or the replica stops (UNAVAILABLE SERVER_STOPPING:
        watch again to resume). `on_live` is awaited once the viewer is in place: every gift completed
        from then on reaches it."""
        if self.closed:
            raise server_stopping()
        if self.max_viewers and self._viewers >= self.max_viewers:
            raise too_many_viewers(self.max_viewers)
        self._viewers += 1
        FEED_VIEWERS.add(1)
        try:
            feed = await self._join(target.key)
            try:
                cursor = feed.head if after_sequence is None else after_sequence
                await on_live()
                while True:
                    if self.closed:
                        raise server_stopping()
                    if cursor < feed.head:
                        chunks = feed.chunks_after(cursor)
                        if chunks is not None:
                            for chunk in chunks:
                                for response in chunk.responses(cursor, per_response, encode):
                                    yield response
                                cursor = chunk.last
                            continue
                        # Behind the window (a slow viewer, or one resuming): the outbox has every event.
                        events = await self._read_outbox(target, cursor)
                        self.catch_ups += 1
                        if events:
                            for response in encode(events, per_response):
                                yield response
                            cursor = events[-1].sequence
                            continue
                    waiter = asyncio.get_running_loop().create_future()
                    feed.waiting.append(waiter)
                    await waiter
            finally:
                feed.viewers -= 1
                if feed.viewers == 0 and self._targets.get(feed.key) is feed:
                    del self._targets[feed.key]
        finally:
            self._viewers -= 1
            FEED_VIEWERS.add(-1)

    async def _read_outbox(self, target: Target, after: int) -> list[FeedEventRecord]:
        return await self.gifting.transactions.call_async(
            functools.partial(self.gifting.feed_after, target, after, READ_PAGE)
        )

    async def _join(self, key: str) -> _TargetFeed:
        """The target's feed on this replica, with one more viewer; its head is read by its first."""
        while (feed := self._targets.get(key)) is None:
            opening = self._opening.get(key)
            if opening is None:
                opening = asyncio.get_running_loop().create_task(self._open(key))
                self._opening[key] = opening
            await asyncio.shield(opening)
        feed.viewers += 1
        return feed

    async def _open(self, key: str) -> None:
        try:
            head = await self.gifting.transactions.call_async(lambda: self.gifting.feed_heads([key])[key])
            self._targets[key] = _TargetFeed(key, head)
            # A gift completed between the head's read and now is read by the first refresh.
            self.notify(key)
        finally:
            del self._opening[key]

    def notify(self, target_key: str) -> None:
        """Events of the target may have been written (a gift completed here, or the poller saw its
        head move): read them, at most once per `flush_seconds`."""
        feed = self._targets.get(target_key)
        if feed is None or self.closed:
            return
        if feed.reading is not None:
            feed.read_again = True
            return
        feed.reading = asyncio.get_running_loop().create_task(self._read(feed), name=f"feed-{target_key}")

    def flush_interval(self) -> float:
        """How long at least between two reads of a target: its viewers are each written to once a
        read, so the more viewers the replica serves, the less often, keeping the responses written
        to all of them under `writes_per_second` (what the replica spends on its viewers is bounded,
        whatever their number; past it, the fan-out lag grows instead)."""
        return max(self.flush_seconds, self._viewers / self.writes_per_second)

    async def _read(self, feed: _TargetFeed) -> None:
        """Read a target's new events into its window and wake its viewers (untraced: plumbing that a
        completing gift's trace would otherwise be filled with)."""
        with untraced():
            await self._read_untraced(feed)

    async def _read_untraced(self, feed: _TargetFeed) -> None:
        try:
            while True:
                feed.read_again = False
                pause = feed.last_read + self.flush_interval() - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                feed.last_read = time.monotonic()
                target = _target(feed.key)
                while True:
                    events = await self._read_outbox(target, feed.head)
                    if events and events[0].sequence == feed.head + 1:
                        feed.append(events, self.window_events)
                    if len(events) < READ_PAGE:
                        break
                await self._wake(feed)
                if not feed.read_again or self.closed:
                    return
        except Exception:
            log.exception("live feed: reading %s failed; the next completion or poll reads again", feed.key)
        finally:
            feed.reading = None

    async def _wake(self, feed: _TargetFeed) -> None:
        """Wake the target's waiting viewers, a slice at a time; the lag: how old its newest event is
        once every viewer is woken with it."""
        waiting, feed.waiting = feed.waiting, []
        for start in range(0, len(waiting), WAKE_SLICE):
            for waiter in waiting[start : start + WAKE_SLICE]:
                if not waiter.done():
                    waiter.set_result(None)
            if start + WAKE_SLICE < len(waiting):
                await asyncio.sleep(0)
        newest = feed.chunks[-1].events[-1].transfer.completed_at if feed.chunks else None
        if waiting and newest is not None:
            FEED_LAG.record(max(0.0, (self.gifting.clock.now() - newest).total_seconds()))

    async def poll(self) -> None:
        """Read the heads of the watched targets (one query): those another replica moved are read."""
        keys = list(self._targets)
        if not keys:
            return
        heads = await self.gifting.transactions.call_async(lambda: self.gifting.feed_heads(keys))
        for key, head in heads.items():
            feed = self._targets.get(key)
            if feed is not None and head > feed.head:
                self.notify(key)

    async def close(self) -> None:
        """End every stream: UNAVAILABLE SERVER_STOPPING, so that its viewer watches again elsewhere."""
        self.closed = True
        for feed in list(self._targets.values()):
            if feed.reading is not None:
                feed.reading.cancel()
            await self._wake(feed)


def _target(key: str) -> Target:
    kind, _, target_id = key.partition(":")
    return Target(kind, target_id)


class FeedLoop(BackgroundLoop):
    """The replica's feed poller; stopping it (first thing in a graceful shutdown) ends the streams."""

    def __init__(self, feed: LiveFeed, interval: float) -> None:
        super().__init__("gifting-feed", interval, feed.poll)
        self.feed = feed

    async def stop(self) -> None:
        await self.feed.close()
        await super().stop()
