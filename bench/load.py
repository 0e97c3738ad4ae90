"""The load generator: `concurrency` callers in one asyncio loop, for a fixed time.

Closed loop by default (each caller starts its next call when the last one ends: the most the system
under test completes). With a `rate`, calls are started on a fixed schedule instead, and a call's
latency counts from when it was due, not from when a free caller got to it, so that a stalled system
is not flattered by calls it kept from being made (coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

OK = "OK"
PENDING = "PENDING"  # SendGift answered with the gift still pending (recovery finishes it)

# One call: returns OK, PENDING, or an error's "CODE REASON".
Call = Callable[[], Awaitable[str]]


@dataclass
class LoadResult:
    duration: float
    completed: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # of completed calls
    outcomes: Counter[str] = field(default_factory=Counter)
    # Counters read before and after the measured window (CPU seconds by process, database
    # transactions by service, ...): how much of each the window used.
    used: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    def used_per_op(self) -> dict[str, float]:
        return {name: used / self.completed for name, used in self.used.items()} if self.completed else {}

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.outcomes.items()) if k != OK}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


async def drive(
    call: Call,
    concurrency: int,
    duration: float,
    warmup: float = 0.0,
    rate: float = 0.0,
    counters: Callable[[], dict[str, float]] | None = None,
) -> LoadResult:
    """Run `call` from `concurrency` callers for warmup + duration seconds; measure the last `duration`.

    `counters`, if given, reads counters (CPU time of each process involved, ...); the result keeps
    how much each grew while measured.
    """
    # The load generator's own garbage collections would stall every call in flight (a full pass
    # traverses everything the run built so far): what exists now is kept out of them.
    gc.collect()
    gc.freeze()
    loop_start = time.perf_counter()
    measure_from = loop_start + warmup
    end = measure_from + duration
    result = LoadResult(duration)
    issued = 0

    def next_due() -> float | None:
        nonlocal issued
        if rate <= 0:
            now = time.perf_counter()
            return now if now < end else None
        due = loop_start + issued / rate
        issued += 1
        return due if due < end else None

    async def caller() -> None:
        while True:
            due = next_due()
            if due is None:
                return
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            outcome = await call()
            finished = time.perf_counter()
            if due < measure_from or finished > end:
                continue  # warm-up, or ended after the window: neither counted
            result.outcomes[outcome] += 1
            if outcome == OK:
                result.completed += 1
                result.latencies_ms.append((finished - due) * 1000)

    async def meter() -> dict[str, float]:
        assert counters is not None
        await asyncio.sleep(warmup)
        before = counters()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = counters()
        return {name: after[name] - before.get(name, 0.0) for name in after}

    metering = asyncio.ensure_future(meter()) if counters is not None else None
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    if metering is not None:
        result.used = await metering
    return result
