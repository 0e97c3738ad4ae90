"""Wiring: the gifting servicer, who may call what, its peers and its background loops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from giftcoin.gifting.v1 import gifting_pb2_grpc

from services.gifting.domain import Failpoint, Gifting, PayoutPort, SagaPolicy, WalletPort
from services.gifting.feed import FeedLoop, LiveFeed
from services.gifting.peers import (
    PAYOUT_SERVICE,
    WALLET_SERVICE,
    PayoutClient,
    WalletClient,
    gifting_token,
    peer_channel,
)
from services.gifting.servicer import FULL_NAME, GiftingServicer
from services.gifting.settings import GiftingSettings
from services.gifting.storage import request_ids
from services.runtime import auth
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.idempotency import RequestIdStore
from services.runtime.server import BackgroundLoop, ServiceApp

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
}

RECOVERY_LOOP = "gifting-recovery"
REAPER_LOOP = "gifting-request-id-reaper"


def policy(settings: GiftingSettings) -> SagaPolicy:
    return SagaPolicy(
        share_bps=settings.diamond_share_bps,
        daily_spend_limit_coins=settings.daily_spend_limit_coins,
        hold_ttl_seconds=settings.hold_ttl_seconds,
        hold_safety_margin_seconds=settings.hold_safety_margin_seconds,
        step_attempts=settings.step_attempts,
        lease_seconds=settings.lease_seconds,
        retry_base_seconds=settings.recovery_interval_ms / 1000,
        retry_max_seconds=settings.retry_max_seconds,
    )


@dataclass
class GiftingComponents:
    """The assembled service; tests reach the domain (recover_once, ...) through it."""

    settings: GiftingSettings
    db: Database
    gifting: Gifting
    feed: LiveFeed
    app: ServiceApp


def assemble(
    settings: GiftingSettings,
    clock: Clock | None = None,
    wallet: WalletPort | None = None,
    payout: PayoutPort | None = None,
) -> GiftingComponents:
    """Build everything; `wallet` and `payout` default to gRPC clients of the configured targets."""
    clock = clock or SystemClock()
    db = Database.from_url(settings.database_url, pool_size=settings.max_workers, traced=settings.traces_exported)
    deadline = settings.step_deadline_ms / 1000
    channels = []
    if wallet is None or payout is None:
        token = gifting_token(settings.identity)
        if wallet is None:
            channels.append(peer_channel(settings.wallet_target, WALLET_SERVICE, token, settings.tls))
            wallet = WalletClient(channels[-1], deadline)
        if payout is None:
            channels.append(peer_channel(settings.payout_target, PAYOUT_SERVICE, token, settings.tls))
            payout = PayoutClient(channels[-1], deadline)
    gifting = Gifting(db, clock, wallet, payout, policy(settings), Failpoint(settings.failpoint))
    feed = LiveFeed(gifting)
    gifting.on_completed = feed.notify
    gifting.seed_catalogue()
    requests = RequestIdStore(db, request_ids, clock)
    servicer = GiftingServicer(gifting, feed, requests, settings.send_batch_max, settings.send_batch_workers)

    def close() -> None:
        servicer.close()
        for channel in channels:
            channel.close()
        db.dispose()

    app = ServiceApp(
        name="gifting",
        full_name=FULL_NAME,
        servicer=servicer,
        add_to_server=gifting_pb2_grpc.add_GiftingServiceServicer_to_server,
        access=ACCESS,
        loops=[
            # Also what finishes, soon after start-up, the gifts a crashed replica left unfinished.
            BackgroundLoop(RECOVERY_LOOP, settings.recovery_interval_ms / 1000, gifting.recover_once),
            FeedLoop(feed, settings.feed_poll_ms / 1000),
            BackgroundLoop(
                REAPER_LOOP,
                settings.reaper_interval_seconds,
                lambda: requests.reap(settings.idempotency_retention_seconds),
            ),
        ],
        close=close,
    )
    return GiftingComponents(settings, db, gifting, feed, app)


def build(settings: GiftingSettings, clock: Clock | None = None) -> ServiceApp:
    """The gifting ServiceApp, calling the configured wallet and payout; the clock defaults to the system's."""
    return assemble(settings, clock).app
