"""`giftctl watch`: follow a stream's or video's live gift feed (GiftingService.WatchGifts).

The feed numbers a target's completed gifts 1, 2, 3, ... with no gaps. When the connection drops
(a restart, a replica going away) the follower reconnects with `after_sequence` = the last sequence
it printed, so it misses none and shows none twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.giftctl.session import FULL_NAMES, CliError, Session, token_source
from services.runtime.clients import open_channel

# Codes after which the same subscription is worth retrying: the peer went away or restarted.
_RECONNECT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL})
_FIRST_DELAY = 0.2
_MAX_DELAY = 5.0


def check_reachable(target: str, service: str, timeout: float = 3.0) -> None:
    """Fail fast, with a clear message, when nothing answers health checks at `target`."""
    with grpc.insecure_channel(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            raise CliError(
                f"{service} at {target} is not reachable (is it running? `giftctl up` starts the suite)"
            ) from None


class Follower:
    """Follows one target's feed on the calling thread until `stop()` (from any thread) or `limit` events.

    It has a channel of its own: through the traced channel a stream is a plain iterator that cannot
    be cancelled, so `stop()` closes the channel, which ends the stream at once.
    """

    def __init__(
        self,
        session: Session,
        target: gifting_pb2.Target,
        after_sequence: int = 0,
        on_event: Callable[[gifting_pb2.WatchGiftsResponse], None] = lambda _event: None,
        on_reconnect: Callable[[str, float], None] = lambda _why, _delay: None,
        limit: int = 0,
    ) -> None:
        self.session = session
        self.target = target
        self.last_sequence = after_sequence
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.limit = limit
        self.seen = 0
        self.subscribed = threading.Event()  # the first call has been made
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._channel = open_channel(session.targets["gifting"], FULL_NAMES["gifting"], token_source(session.caller))
        self._stub = gifting_pb2_grpc.GiftingServiceStub(self._channel)

    def stop(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self._stopping.set()
                self._channel.close()

    def _done(self) -> bool:
        return self._stopping.is_set() or (self.limit > 0 and self.seen >= self.limit)

    def run(self) -> None:
        """Blocks; raises CliError on an error that reconnecting cannot fix (bad target, no access)."""
        delay = _FIRST_DELAY
        try:
            while not self._done():
                request = gifting_pb2.WatchGiftsRequest(target=self.target, after_sequence=self.last_sequence)
                with self._lock:
                    if self._stopping.is_set():
                        return
                    events = self._stub.WatchGifts(request)
                self.subscribed.set()
                try:
                    for event in events:
                        if event.sequence <= self.last_sequence:
                            continue  # already shown before a reconnect
                        self.last_sequence = event.sequence
                        self.seen += 1
                        delay = _FIRST_DELAY
                        self.on_event(event)
                        if self._done():
                            return
                    why = "the feed ended (server shutting down?)"
                except grpc.RpcError as err:
                    if self._stopping.is_set():
                        return
                    if err.code() not in _RECONNECT:
                        raise self.session.failure("gifting", err) from None
                    why = self.session.failure("gifting", err).message
                self.on_reconnect(why, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, _MAX_DELAY)
        finally:
            self.stop()
