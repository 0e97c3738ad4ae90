"""The process's asyncio event loop, on a thread of its own.

Every gRPC server of the process (one in a deployment, the three services in a test process), their
background loops and the channels gifting calls its peers on run on this one loop, so that no call
in flight holds a thread while it waits (for its batch, a peer, the next gift of a feed). Blocking
database work goes to a `Database`'s threads (`Database.run_async`). The loop lives on a daemon
thread so that the process's main thread stays free for signals (`server.serve`) and so that
synchronous code (tests, the command line) can start, call and stop servers with `run`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None:
            started = threading.Event()
            new_loop = asyncio.new_event_loop()

            def run_forever() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(started.set)
                new_loop.run_forever()

            threading.Thread(target=run_forever, name="giftcoin-loop", daemon=True).start()
            started.wait()
            _loop = new_loop
        return _loop


def run(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coroutine` on the process's loop and wait for its result (from any thread but the loop's)."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop()).result(timeout)
