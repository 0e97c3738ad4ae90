"""The live feed's delivery: WatchGifts streams read the feed_events outbox and wait to be woken.

Events are written by the saga in the transaction that completes a gift (storage.FeedRepository),
numbered per target with no gaps, in the database every replica shares. A stream reads the events
after its cursor, in order; when there are none it waits until the target's head moves. One poller
per replica (FeedLoop) reads the heads of the targets being watched every `poll` interval, so a gift
completed through another replica reaches this one's viewers; a gift completed here wakes them at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from services.gifting.domain import Gifting, Target
from services.gifting.storage import FeedEventRecord
from services.runtime.server import BackgroundLoop
from services.runtime.telemetry import FEED_LAG, FEED_VIEWERS

# A waiting stream rechecks whether its client is still there at least this often.
IDLE_CHECK_SECONDS = 1.0


class Subscription:
    def __init__(self, target_key: str) -> None:
        self.target_key = target_key
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()


class LiveFeed:
    """The streams this replica serves, and what wakes them."""

    def __init__(self, gifting: Gifting) -> None:
        self.gifting = gifting
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._heads: dict[str, int] = {}

    def watch(
        self,
        target: Target,
        after_sequence: int,
        active: Callable[[], bool],
        on_cancel: Callable[[Callable[[], None]], object] = lambda _wake: None,
        on_live: Callable[[], object] = lambda: None,
    ) -> Iterator[FeedEventRecord]:
        """The target's events after `after_sequence` (0: from now on), in order, each once, until the
        client goes (`active` false; `on_cancel` registers the wake-up for that) or the feed closes.

        `on_live` is called once the subscription is in place: every gift completed after that call
        reaches this stream.
        """
        subscription = self._subscribe(target.key)
        try:
            on_cancel(subscription.wake)
            # Subscribed before reading the head: an event completed in between is not missed.
            cursor = after_sequence or self.gifting.feed_head(target)
            on_live()
            while active() and not self.closed.is_set():
                subscription.woken.clear()
                events = self.gifting.feed_after(target, cursor)
                for event in events:
                    yield event
                    cursor = event.sequence
                if events:  # how far behind this stream is: its newest event's age, once per read
                    completed_at = events[-1].transfer.completed_at or self.gifting.clock.now()
                    FEED_LAG.record(max(0.0, (self.gifting.clock.now() - completed_at).total_seconds()))
                else:
                    subscription.woken.wait(IDLE_CHECK_SECONDS)
        finally:
            self._unsubscribe(subscription)

    def watchers(self, target_key: str) -> int:
        """How many streams of this replica follow the target."""
        with self._lock:
            return len(self._subscriptions.get(target_key, ()))

    def notify(self, target_key: str) -> None:
        """A gift on the target completed (on this replica): wake its streams now."""
        with self._lock:
            subscriptions = list(self._subscriptions.get(target_key, ()))
        for subscription in subscriptions:
            subscription.wake()

    def poll(self) -> None:
        """Wake the streams whose target's head moved (a gift completed through any replica)."""
        with self._lock:
            keys = list(self._subscriptions)
        if not keys:
            return
        heads = self.gifting.feed_heads(keys)
        for key, head in heads.items():
            with self._lock:
                moved = self._heads.get(key) != head
                self._heads[key] = head
            if moved:
                self.notify(key)

    def close(self) -> None:
        """End every stream cleanly (the server is stopping)."""
        self.closed.set()
        with self._lock:
            subscriptions = [s for group in self._subscriptions.values() for s in group]
        for subscription in subscriptions:
            subscription.wake()

    def _subscribe(self, target_key: str) -> Subscription:
        subscription = Subscription(target_key)
        with self._lock:
            self._subscriptions.setdefault(target_key, set()).add(subscription)
        FEED_VIEWERS.add(1)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        FEED_VIEWERS.add(-1)
        with self._lock:
            group = self._subscriptions.get(subscription.target_key)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._subscriptions[subscription.target_key]
                    self._heads.pop(subscription.target_key, None)


class FeedLoop(BackgroundLoop):
    """The replica's feed poller; stopping it (first thing in a graceful shutdown) ends the streams."""

    def __init__(self, feed: LiveFeed, interval: float) -> None:
        super().__init__("gifting-feed", interval, feed.poll)
        self.feed = feed

    def stop(self, timeout: float = 5.0) -> None:
        self.feed.close()
        super().stop(timeout)
