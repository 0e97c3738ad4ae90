"""Wiring: the gifting servicer, who may call what, its peers and its background loops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from giftcoin.gifting.v1 import gifting_pb2_grpc

from services.gifting.domain import Gifts
from services.gifting.feed import FeedLoop, LiveFeed
from services.gifting.model import SagaPolicy
from services.gifting.peers import PAYOUT_SERVICE, WALLET_SERVICE, PayoutClient, WalletClient, peer_channel
from services.gifting.ports import Failpoint, PayoutPort, WalletPort
from services.gifting.saga import Saga
from services.gifting.sends import Sends
from services.gifting.servicer import FULL_NAME, GiftingServicer
from services.gifting.settings import GiftingSettings
from services.gifting.storage import UnitOfWork, audit_records
from services.gifting.storage import request_ids as request_ids_table
from services.runtime import auth, eventloop
from services.runtime.audit import AuditLog
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.guarded import GuardedCalls
from services.runtime.idempotency import RequestIdStore
from services.runtime.server import BackgroundLoop, ServiceApp
from services.runtime.telemetry import GIFTS_UNFINISHED, OLDEST_UNFINISHED_AGE, watch_all

ACCESS: Mapping[str, auth.Access] = {
    "ListGifts": auth.ANYONE,
    "WatchGifts": auth.ANYONE,
    "GetLeaderboard": auth.ANYONE,
    "UpsertGift": auth.OPERATOR,
    "RetireGift": auth.OPERATOR,
    "SendGift": auth.USER,
    "GetGiftTransfer": auth.USER,
    "ListSentGifts": auth.USER,
    "ListReceivedGifts": auth.USER,
    "ListAuditRecords": auth.OPERATOR,
    "ListGiftTransfers": auth.RECONCILER,
}

RECOVERY_LOOP = "gifting-recovery"
REAPER_LOOP = "gifting-request-id-reaper"


def policy(settings: GiftingSettings) -> SagaPolicy:
    return SagaPolicy(
        share_bps=settings.diamond_share_bps,
        daily_spend_limit_coins=settings.daily_spend_limit_coins,
        hold_ttl_seconds=settings.hold_ttl_seconds,
        hold_safety_margin_seconds=settings.hold_safety_margin_seconds,
        step_deadline_seconds=settings.step_deadline_ms / 1000,
        lease_seconds=settings.lease_seconds,
        retry_base_seconds=settings.recovery_interval_ms / 1000,
        retry_max_seconds=settings.retry_max_seconds,
    )


@dataclass
class GiftingComponents:
    """The assembled service; tests reach the domain and the saga (recover_once, ...) through it."""

    settings: GiftingSettings
    db: Database
    gifts: Gifts
    saga: Saga
    sends: Sends
    calls: GuardedCalls[UnitOfWork]
    feed: LiveFeed
    app: ServiceApp


def assemble(
    settings: GiftingSettings,
    clock: Clock | None = None,
    wallet: WalletPort | None = None,
    payout: PayoutPort | None = None,
) -> GiftingComponents:
    """Build everything (on the event loop); `wallet` and `payout` default to gRPC clients of the
    configured targets."""
    clock = clock or SystemClock()
    db = Database.from_url(
        settings.database_url, pool_size=settings.database_pool_size, traced=settings.traces_exported
    )
    channels: list[grpc.aio.Channel] = []
    if wallet is None:
        channels.append(eventloop.run(peer_channel(settings.wallet_target, WALLET_SERVICE, settings)))
        wallet = WalletClient(channels[-1])
    if payout is None:
        channels.append(eventloop.run(peer_channel(settings.payout_target, PAYOUT_SERVICE, settings)))
        payout = PayoutClient(channels[-1])
    request_ids = RequestIdStore(db, request_ids_table, clock)
    audit = AuditLog(db, audit_records, clock)
    calls = GuardedCalls(FULL_NAME, request_ids, UnitOfWork, audit)
    gifts = Gifts(calls.transactions, clock, policy(settings))
    feed = LiveFeed(gifts, settings.feed_flush_ms / 1000, settings.feed_max_viewers, settings.feed_writes_per_second)
    saga = Saga(calls.transactions, clock, wallet, payout, policy(settings), Failpoint(settings.failpoint), feed.notify)
    sends = Sends(gifts, saga)
    gifts.seed_catalogue()
    servicer = GiftingServicer(
        gifts, sends, feed, calls, audit, settings.send_batch_max, settings.send_batch_stall_ms / 1000
    )
    unwatch = watch_all(
        (GIFTS_UNFINISHED, lambda: [(gifts.unfinished()[0], {})]),
        (OLDEST_UNFINISHED_AGE, lambda: [(gifts.unfinished()[1], {})]),
    )

    async def stop_sending() -> None:
        await servicer.close()
        for channel in channels:
            await channel.close()

    def close() -> None:  # after the server has drained
        unwatch()
        eventloop.run(stop_sending())
        db.dispose()

    app = ServiceApp(
        name="gifting",
        full_name=FULL_NAME,
        servicer=servicer,
        add_to_server=gifting_pb2_grpc.add_GiftingServiceServicer_to_server,
        access=ACCESS,
        executor=db.executor,
        loops=[
            # Also what finishes, soon after start-up, the gifts a crashed replica left unfinished.
            BackgroundLoop(RECOVERY_LOOP, settings.recovery_interval_ms / 1000, saga.recover_once),
            FeedLoop(feed, settings.feed_poll_ms / 1000),
            BackgroundLoop(
                REAPER_LOOP,
                settings.reaper_interval_seconds,
                lambda: request_ids.reap(settings.idempotency_retention_seconds),
            ),
        ],
        close=close,
    )
    return GiftingComponents(settings, db, gifts, saga, sends, calls, feed, app)


def build(settings: GiftingSettings, clock: Clock | None = None) -> ServiceApp:
    """The gifting ServiceApp, calling the configured wallet and payout; the clock defaults to the system's."""
    return assemble(settings, clock).app
