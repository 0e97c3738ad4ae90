"""Micro-batching: calls that arrive together are served together.

A `Batcher` queues the items its callers submit; each of its worker threads takes everything waiting
(up to `max_batch`) and hands it to `process` at once, which answers each item. Nothing waits for a
batch to fill: a lone item goes at once, and the items that arrive while the workers are busy form
the next batches, so batches grow with the load (as TigerBeetle batches the transfers that queue
while its previous batch commits). With several workers, batches are in flight in different
processes at the same time (one holding coins in wallet while another credits diamonds in payout).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741 (the conventional name of an item type)
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new items."""


class Batcher(Generic[I, R]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[I]], Sequence[R | BaseException]],
        max_batch: int = 64,
        workers: int = 4,
    ) -> None:
        """`process(items)` answers every item, in order, with a result or the exception to raise for it."""
        self.name = name
        self.process = process
        self.max_batch = max_batch
        self._queue: deque[tuple[I, Future[R]]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: I) -> Future[R]:
        future: Future[R] = Future()
        with self._ready:
            if self._closed:
                raise BatcherClosed(f"{self.name} is shutting down")
            self._queue.append((item, future))
            self._ready.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking items; the workers finish what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _take(self) -> list[tuple[I, Future[R]]] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            batch: list[tuple[I, Future[R]]] = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            futures = [future for _, future in batch]
            try:
                outcomes = self.process([item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise AssertionError(f"{self.name}: {len(outcomes)} answers for {len(batch)} items")
            except BaseException as error:  # the whole batch failed: each of its callers hears it
                log.exception("%s: a batch of %d failed", self.name, len(batch))
                outcomes = [error] * len(batch)
            for future, outcome in zip(futures, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
