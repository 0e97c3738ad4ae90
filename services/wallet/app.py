"""Wiring: the wallet's servicer, who may call what, its stores, background loops and the stores'
notifications endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from giftcoin.wallet.v1 import wallet_pb2_grpc

from services.runtime import auth
from services.runtime.audit import AuditLog
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.guarded import GuardedCalls
from services.runtime.http import HttpEndpoint
from services.runtime.idempotency import RequestIdStore
from services.runtime.server import BackgroundLoop, ServiceApp
from services.runtime.telemetry import COINS_HELD, HOLDS_ACTIVE, watch_all
from services.wallet import storage
from services.wallet.app_store import APP_STORE, AppStoreProvider
from services.wallet.domain import Catalogue, PaymentProvider, UnitOfWork, Wallets
from services.wallet.google_play import GOOGLE_PLAY, GooglePlayProvider, GooglePlaySync
from services.wallet.notifications import StoreNotifications
from services.wallet.receipts import SANDBOX_STORE, SandboxProvider
from services.wallet.servicer import FULL_NAME, WalletServicer
from services.wallet.settings import WalletSettings

ACCESS: Mapping[str, auth.Access] = {
    "OpenWallet": auth.USER,
    "GetWallet": auth.USER,
    "PurchaseCoins": auth.USER,
    "ClaimPromotion": auth.USER,
    "ListTransactions": auth.USER,
    "ListCoinPackages": auth.ANYONE,
    "RefundPurchase": auth.OPERATOR,
    "CreatePromotion": auth.OPERATOR,
    "HoldCoins": auth.internal("gifting"),
    "CaptureHold": auth.internal("gifting"),
    "BatchHoldCoins": auth.internal("gifting"),
    "BatchCaptureHolds": auth.internal("gifting"),
    "ReleaseHold": auth.internal("gifting"),
    "GetUserWallet": auth.OPERATOR,
    "ListUserTransactions": auth.OPERATOR,
    "ListPromotions": auth.OPERATOR,
    "ListAuditRecords": auth.OPERATOR,
    "ListHolds": auth.RECONCILER,
    "SummarizeBooks": auth.RECONCILER,
}

# Purchases verified at once (each may wait on a store's servers); more queue for a thread.
STORE_THREADS = 8

HOLD_EXPIRY_LOOP = "wallet-hold-expiry"
REAPER_LOOP = "wallet-request-id-reaper"
GOOGLE_PLAY_LOOP = "wallet-google-play-sync"
STORE_NOTIFICATIONS = "wallet-store-notifications"


def payment_providers(settings: WalletSettings) -> dict[str, PaymentProvider]:
    """The stores whose receipts this wallet accepts: the sandbox store when it has a key, the App
    Store and Google Play when configured."""
    providers: dict[str, PaymentProvider] = {}
    if settings.sandbox_receipt_key:
        providers[SANDBOX_STORE] = SandboxProvider(settings.sandbox_receipt_key)
    if settings.app_store is not None:
        providers[APP_STORE] = AppStoreProvider(settings.app_store)
    if settings.google_play is not None:
        providers[GOOGLE_PLAY] = GooglePlayProvider.from_settings(settings.google_play)
    return providers


def build(
    settings: WalletSettings,
    clock: Clock | None = None,
    providers: Mapping[str, PaymentProvider] | None = None,
) -> ServiceApp:
    clock = clock or SystemClock()
    db = Database.from_url(
        settings.database_url, pool_size=settings.database_pool_size, traced=settings.traces_exported
    )
    request_ids = RequestIdStore(db, storage.request_ids, clock)
    audit = AuditLog(db, storage.audit_records, clock)
    calls = GuardedCalls(FULL_NAME, request_ids, UnitOfWork, audit)
    providers = payment_providers(settings) if providers is None else providers
    wallets = Wallets(Catalogue(settings.packages), providers, clock, settings.hold_ttl_seconds)
    calls.read(wallets.open_platform_accounts)
    # Purchases wait on the stores: threads of their own (a bulkhead), never the database's.
    store_threads = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="stores")
    servicer = WalletServicer(wallets, calls, audit, settings.hold_ttl_max_seconds, store_threads)
    loops = [
        BackgroundLoop(
            HOLD_EXPIRY_LOOP,
            settings.hold_expiry_interval_seconds,
            lambda: wallets.expire_due_holds(calls.transactions),
        ),
        BackgroundLoop(
            REAPER_LOOP,
            settings.reaper_interval_seconds,
            lambda: request_ids.reap(settings.idempotency_retention_seconds),
        ),
    ]
    app_store, play = providers.get(APP_STORE), providers.get(GOOGLE_PLAY)
    play_sync = None
    if isinstance(play, GooglePlayProvider):
        play_sync = GooglePlaySync(play.api, play.products, wallets, calls.transactions, clock)
        loops.append(BackgroundLoop(GOOGLE_PLAY_LOOP, play.settings.sync_interval_seconds, play_sync.step))
    endpoints = []
    if settings.store_notifications_port:
        notifications = StoreNotifications(
            wallets,
            calls.transactions,
            app_store if isinstance(app_store, AppStoreProvider) else None,
            play_sync,
            settings.google_play,
        )
        endpoints.append(
            HttpEndpoint(STORE_NOTIFICATIONS, settings.host, settings.store_notifications_port, notifications.routes())
        )
    unwatch = watch_all(
        (HOLDS_ACTIVE, lambda: [(calls.read(lambda uow: uow.outstanding_holds())[0], {})]),
        (COINS_HELD, lambda: [(calls.read(lambda uow: uow.outstanding_holds())[1], {})]),
    )

    def close() -> None:
        unwatch()
        store_threads.shutdown(wait=True)
        db.dispose()

    return ServiceApp(
        name="wallet",
        full_name=FULL_NAME,
        servicer=servicer,
        add_to_server=wallet_pb2_grpc.add_WalletServiceServicer_to_server,
        access=ACCESS,
        executor=db.executor,
        loops=loops,
        close=close,
        http_endpoints=endpoints,
    )
