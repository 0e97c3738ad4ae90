"""Micro-batching: calls that arrive together are served together.

A `Batcher` queues the items its callers submit; each of its worker threads takes everything waiting
(up to `max_batch`) and hands it to `process` at once, which answers each item. Nothing waits for a
batch to fill: a lone item goes at once, and the items that arrive while the workers are busy form
the next batches, so batches grow with the load (as TigerBeetle batches the transfers that queue
while its previous batch commits).

With several workers, a further worker starts a batch beside one in flight once that one has made
way (`process` calls the `make_way` it is given when what is left of its batch may run beside the
next: gifting's, once its gifts are credited) or once a full batch (`max_batch`) waits. Under a
moderate load the items that arrive meanwhile wait only for the head of the batch in flight, then go
together, so batches stay few and large (most of a small batch's cost is fixed) and the next starts
while the last finishes in other processes (holding coins in wallet while the last is captured);
under a heavy load full batches go beside each other.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from services.runtime.telemetry import BATCHER_QUEUE

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741 (the conventional name of an item type)
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new items."""


class Answer(Generic[R]):
    """An item's outcome, once its batch is processed: `result` waits for it.

    A lock held until the outcome is set, rather than concurrent.futures.Future: a Future's
    Condition (an RLock and a new lock per waiter, in Python) cost a SendGift more than its batch's
    share of the work.
    """

    __slots__ = ("_error", "_set", "_value")

    def __init__(self) -> None:
        self._set = threading.Lock()
        self._set.acquire()
        self._value: R | None = None
        self._error: BaseException | None = None

    def _answer(self, outcome: R | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self._error = outcome
        else:
            self._value = outcome
        self._set.release()

    def _wait(self, timeout: float | None) -> None:
        if not self._set.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("no answer yet")
        self._set.release()  # answered: any later wait returns at once

    def result(self, timeout: float | None = None) -> R:
        """The item's result, or the exception its batch answered it with raised; TimeoutError if none came."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error


class Batcher(Generic[I, R]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[I], Callable[[], None]], Sequence[R | BaseException]],
        max_batch: int = 64,
        workers: int = 4,
    ) -> None:
        """`process(items, make_way)` answers every item, in order, with a result or the exception to
        raise for it; it may call `make_way()` once the rest of its work may go beside the next batch."""
        self.name = name
        self.process = process
        self.max_batch = max_batch
        self._queue: deque[tuple[I, Answer[R]]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._leading = 0  # batches in flight that have not made way
        self._unwatch = BATCHER_QUEUE.watch(lambda: [(len(self._queue), {"giftcoin.batcher.name": name})])
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: I) -> Answer[R]:
        answer: Answer[R] = Answer()
        with self._ready:
            if self._closed:
                raise BatcherClosed(f"{self.name} is shutting down")
            self._queue.append((item, answer))
            self._ready.notify()
        return answer

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking items; the workers finish what is queued, then stop."""
        self._unwatch()
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _take(self) -> list[tuple[I, Answer[R]]] | None:
        with self._ready:
            while not (self._queue and (self._leading == 0 or len(self._queue) >= self.max_batch)):
                if self._closed and not self._queue:
                    return None
                self._ready.wait()
            batch: list[tuple[I, Answer[R]]] = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            self._leading += 1
            return batch

    def _lead_ended(self) -> None:
        with self._ready:
            self._leading -= 1
            self._ready.notify()  # what waited for the batch in flight may go now, with another worker

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            answers = [answer for _, answer in batch]
            way = _Way(self._lead_ended)
            try:
                outcomes = self.process([item for item, _ in batch], way.make)
                if len(outcomes) != len(batch):
                    raise AssertionError(f"{self.name}: {len(outcomes)} answers for {len(batch)} items")
            except BaseException as error:  # the whole batch failed: each of its callers hears it
                log.exception("%s: a batch of %d failed", self.name, len(batch))
                outcomes = [error] * len(batch)
            way.make()  # done (if it had not made way before)
            for answer, outcome in zip(answers, outcomes, strict=True):
                answer._answer(outcome)


class _Way:
    """A batch's `make_way`: the first call lets the next batch start beside it; later calls do nothing."""

    __slots__ = ("_end_lead", "_made")

    def __init__(self, end_lead: Callable[[], None]) -> None:
        self._end_lead = end_lead
        self._made = False

    def make(self) -> None:
        if not self._made:
            self._made = True
            self._end_lead()
