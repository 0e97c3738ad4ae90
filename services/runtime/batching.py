"""Micro-batching: calls that arrive together are served together, on the event loop.

A `Batcher` queues the items its callers submit, and hands everything waiting (up to `max_batch`) to
`process` at once, which answers each item. Nothing waits for a batch to fill: a lone item goes at
once, and the items that arrive while a batch leads form the next batch, so batches grow with the
load (as TigerBeetle batches the transfers that queue while its previous batch commits).

A batch leads until it makes way (`process` calls the `make_way` it is given when what is left of
its batch may run beside the next: gifting's, once its gifts are credited). The next batch starts
once no batch leads, or once a full batch waits, or once every leading batch has led for longer than
`stall_seconds` (its peer is slow or silent: what queued behind it must not wait for it). Under a
moderate load the items that arrive meanwhile wait only for the head of the batch in flight, then go
together, so batches stay few and large (most of a small batch's cost is fixed); under a heavy load
full batches go beside each other; and a batch stuck on a peer holds up nothing but its own items.

A caller waits for its item's answer without holding a thread; a caller that gives up (its deadline)
leaves its item in the batch, which still answers it (nobody listens).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from services.runtime.telemetry import BATCHER_QUEUE

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741 (the conventional name of an item type)
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new items."""


class Batcher(Generic[I, R]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[I], Callable[[], None]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 64,
        stall_seconds: float = 0.25,
    ) -> None:
        """`process(items, make_way)` answers every item, in order, with a result or the exception to
        raise for it; it may call `make_way()` once the rest of its work may go beside the next batch.
        Created, used and closed on the event loop."""
        self.name = name
        self.process = process
        self.max_batch = max_batch
        self.stall_seconds = stall_seconds
        self._queue: deque[tuple[I, asyncio.Future[R]]] = deque()
        self._leading: dict[int, float] = {}  # batches in flight that have not made way: when each started
        self._batches: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # wakes the dispatcher when the leaders stall
        self._next_id = 0
        self._unwatch = BATCHER_QUEUE.watch(lambda: [(len(self._queue), {"giftcoin.batcher.name": name})])

    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    async def submit(self, item: I, timeout: float | None = None) -> R:
        """The item's result, or the exception its batch answered it with, raised; TimeoutError if
        none came within `timeout` (the item stays in its batch)."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is shutting down")
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=self.name)
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieved)  # a refusal nobody waits for any more is not an error to log
        self._queue.append((item, answer))
        self._wake.set()
        # shield: the caller's deadline or cancellation never cancels the item's answer.
        return await asyncio.wait_for(asyncio.shield(answer), timeout)

    async def close(self) -> None:
        """Stop taking items; the batches queued and in flight finish."""
        self._unwatch()
        self._closed = True
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                wait = self._may_start_in()
                if wait > 0:
                    self._wake_in(wait)
                    break
                self._start()
            if self._closed and not self._queue:
                return

    def _wake_in(self, wait: float) -> None:
        """Wake the dispatcher in `wait` seconds (or sooner, if a wake-up is due sooner already)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + wait
        if self._timer is not None:
            if loop.time() <= self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._wake.set)

    def _may_start_in(self) -> float:
        """0 if a batch may start now; else how long until every leading batch counts as stalled."""
        if not self._leading or len(self._queue) >= self.max_batch or self._closed:
            return 0.0
        return max(max(self._leading.values()) + self.stall_seconds - time.monotonic(), 0.0)

    def _start(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        batch_id = self._next_id
        self._next_id += 1
        self._leading[batch_id] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._run(batch_id, batch), name=f"{self.name}-{batch_id}")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _made_way(self, batch_id: int) -> None:
        if self._leading.pop(batch_id, None) is not None:
            self._wake.set()  # what waited for the batch in flight may go now

    async def _run(self, batch_id: int, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self.process([item for item, _ in batch], lambda: self._made_way(batch_id))
            if len(outcomes) != len(batch):
                raise AssertionError(f"{self.name}: {len(outcomes)} answers for {len(batch)} items")
        except Exception as error:  # the whole batch failed: each of its callers hears it
            log.exception("%s: a batch of %d failed", self.name, len(batch))
            outcomes = [error] * len(batch)
        finally:
            self._made_way(batch_id)  # done (if it had not made way before)
        for (_, answer), outcome in zip(batch, outcomes, strict=True):
            if answer.done():
                continue
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)


def _retrieved(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()
