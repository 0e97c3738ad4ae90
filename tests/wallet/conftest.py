"""The wallet in-process over real gRPC on 127.0.0.1, on a fresh database per test (SQLite and PostgreSQL).

Every test that uses `wallet` ends with the books checked: the ledger's invariants
(runtime.ledger.ledger_problems) and the wallet's own (`wallet_problems`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from sqlalchemy import Connection, func, select

from services.runtime.auth import Caller
from services.runtime.clock import FakeClock
from services.runtime.config import Env
from services.runtime.db import Database
from services.runtime.errors import DomainError, from_rpc_error
from services.runtime.guarded import Transactions
from services.runtime.ledger import ledger_problems
from services.runtime.server import BackgroundLoop, RunningServer, create_server
from services.wallet import app as wallet_app
from services.wallet import model, storage
from services.wallet.domain import Catalogue, UnitOfWork, Wallets
from services.wallet.model import WalletAccounts
from services.wallet.receipts import SandboxProvider, mint_receipt
from services.wallet.settings import DEFAULT_PACKAGES, DEV_SANDBOX_RECEIPT_KEY, WalletSettings, load_settings
from tests.support.identity import as_caller, operator, service, user

R = TypeVar("R")
GIFTING = service("gifting")
OPERATOR = operator("ops")
ADULT_BIRTH = common_pb2.Date(year=1990, month=6, day=15)


def new_id() -> str:
    return str(uuid.uuid4())


def wallet_settings(database_url: str, **env: str) -> WalletSettings:
    """Dev-mode settings whose loops never tick on their own: tests call a loop's step themselves."""
    return load_settings(
        Env(
            {
                "GIFTCOIN_DEV_MODE": "true",
                "GIFTCOIN_WALLET_DATABASE_URL": database_url,
                "GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS": "3600",
                "GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS": "3600",
                **env,
            }
        )
    )


def purchase_request(
    package_id: str = "coins_700", transaction_id: str = "", receipt_package: str = ""
) -> wallet_pb2.PurchaseCoinsRequest:
    """A purchase with a freshly minted sandbox receipt (for `receipt_package`, when it should not match)."""
    payload = mint_receipt(receipt_package or package_id, transaction_id or f"txn-{new_id()}")
    return wallet_pb2.PurchaseCoinsRequest(
        request_id=new_id(), package_id=package_id, receipt=wallet_pb2.Receipt(store="sandbox", payload=payload)
    )


def rpc_error(call: Callable[[], Any]) -> DomainError:
    """The DomainError a call fails with (read back from google.rpc details); fails if it succeeds."""
    try:
        call()
    except grpc.RpcError as err:
        error = from_rpc_error(err)
        assert error is not None, f"no ErrorInfo in {err}"
        return error
    raise AssertionError("the call succeeded")


def wallet_problems(conn: Connection) -> list[str]:
    """The wallet's own invariants, on top of the ledger's."""
    e, w, h = storage.ledger.entries, storage.wallet_transfers, storage.holds
    problems: list[str] = []
    users = [r.user_id for r in conn.execute(select(storage.wallets.c.user_id))]
    # Every transfer on a user's accounts is in that user's history, and nothing else is.
    touched: set[tuple[str, str]] = set()
    for user_id in users:
        accounts = WalletAccounts(user_id)
        rows = conn.execute(select(e.c.transfer_id).where(e.c.account.in_([*accounts.coins, accounts.debt])))
        touched |= {(user_id, r.transfer_id) for r in rows}
    linked = {(r.user_id, r.transfer_id) for r in conn.execute(select(w.c.user_id, w.c.transfer_id))}
    if touched != linked:
        problems.append(f"history differs from ledger: {sorted(touched ^ linked)}")
    for user_id in users:
        accounts = WalletAccounts(user_id)
        debt_entries = conn.execute(
            select(func.coalesce(func.sum(e.c.amount), 0)).where(e.c.account == accounts.debt)
        ).scalar_one()
        if debt_entries > 0:
            problems.append(f"{user_id}: debt account is positive ({debt_entries})")
        held = conn.execute(
            select(func.coalesce(func.sum(e.c.amount), 0)).where(
                e.c.account.in_([accounts.held_purchased, accounts.held_promotional])
            )
        ).scalar_one()
        holding = conn.execute(
            select(func.coalesce(func.sum(h.c.amount), 0)).where(h.c.user_id == user_id, h.c.state == model.HELD)
        ).scalar_one()
        if held != holding:
            problems.append(f"{user_id}: held accounts {held} != holds in state held {holding}")
    return problems


def check_books(database_url: str) -> None:
    db = Database.from_url(database_url, pool_size=1)
    try:
        with db.transaction() as conn:
            assert ledger_problems(storage.ledger, conn) == []
            assert wallet_problems(conn) == []
    finally:
        db.dispose()


@dataclass
class WalletHarness:
    """A running wallet and the calls tests make, as each kind of caller."""

    running: RunningServer
    stub: wallet_pb2_grpc.WalletServiceStub
    clock: FakeClock
    database_url: str
    packages: dict[str, int] = field(default_factory=dict)

    def loop(self, name: str) -> BackgroundLoop:
        return next(loop for loop in self.running.app.loops if loop.name == name)

    def expire_holds(self) -> None:
        self.loop(wallet_app.HOLD_EXPIRY_LOOP).step()

    # --- user calls ---------------------------------------------------------------------------

    def open_wallet(self, user_id: str, born: common_pb2.Date = ADULT_BIRTH, country: str = "US") -> wallet_pb2.Wallet:
        request = wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=born, country_code=country)
        return self.stub.OpenWallet(request, metadata=as_caller(user(user_id))).wallet

    def get(self, user_id: str) -> wallet_pb2.Wallet:
        return self.stub.GetWallet(wallet_pb2.GetWalletRequest(), metadata=as_caller(user(user_id))).wallet

    def purchase_request(
        self, package_id: str = "coins_700", transaction_id: str = "", receipt_package: str = ""
    ) -> wallet_pb2.PurchaseCoinsRequest:
        return purchase_request(package_id, transaction_id, receipt_package)

    def buy(self, user_id: str, package_id: str = "coins_700") -> wallet_pb2.PurchaseCoinsResponse:
        return self.stub.PurchaseCoins(self.purchase_request(package_id), metadata=as_caller(user(user_id)))

    def claim(self, user_id: str, promotion_id: str, request_id: str = "") -> wallet_pb2.ClaimPromotionResponse:
        request = wallet_pb2.ClaimPromotionRequest(request_id=request_id or new_id(), promotion_id=promotion_id)
        return self.stub.ClaimPromotion(request, metadata=as_caller(user(user_id)))

    def history(self, user_id: str, page_size: int = 0, page_token: str = "") -> wallet_pb2.ListTransactionsResponse:
        request = wallet_pb2.ListTransactionsRequest(page_size=page_size, page_token=page_token)
        return self.stub.ListTransactions(request, metadata=as_caller(user(user_id)))

    # --- operator calls -----------------------------------------------------------------------

    def refund(
        self, store_transaction_id: str, kind: wallet_pb2.RefundKind.ValueType = wallet_pb2.REFUND_KIND_REFUND
    ) -> wallet_pb2.RefundPurchaseResponse:
        request = wallet_pb2.RefundPurchaseRequest(
            request_id=new_id(), store="sandbox", store_transaction_id=store_transaction_id, kind=kind
        )
        return self.stub.RefundPurchase(request, metadata=as_caller(OPERATOR))

    def create_promotion(
        self, promotion_id: str, coins_per_claim: int, budget: int, hours: int = 24
    ) -> wallet_pb2.Promotion:
        start = self.clock.now()
        request = wallet_pb2.CreatePromotionRequest(
            request_id=new_id(),
            promotion_id=promotion_id,
            name=f"promotion {promotion_id}",
            coins_per_claim=coins_per_claim,
            budget=budget,
        )
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(start + timedelta(hours=hours))
        return self.stub.CreatePromotion(request, metadata=as_caller(OPERATOR)).promotion

    # --- gifting calls ------------------------------------------------------------------------

    def hold(
        self,
        gift_id: str,
        user_id: str,
        amount: int,
        request_id: str = "",
        ttl_seconds: int = 0,
        caller: Caller = GIFTING,
    ) -> wallet_pb2.Hold:
        request = wallet_pb2.HoldCoinsRequest(
            request_id=request_id or new_id(), gift_id=gift_id, user_id=user_id, amount=amount, ttl_seconds=ttl_seconds
        )
        return self.stub.HoldCoins(request, metadata=as_caller(caller)).hold

    def capture(self, gift_id: str, request_id: str = "") -> wallet_pb2.Hold:
        request = wallet_pb2.CaptureHoldRequest(request_id=request_id or new_id(), gift_id=gift_id)
        return self.stub.CaptureHold(request, metadata=as_caller(GIFTING)).hold

    def release(self, gift_id: str, request_id: str = "") -> wallet_pb2.Hold:
        request = wallet_pb2.ReleaseHoldRequest(request_id=request_id or new_id(), gift_id=gift_id)
        return self.stub.ReleaseHold(request, metadata=as_caller(GIFTING)).hold

    def batch_hold(
        self, requests: Sequence[wallet_pb2.HoldCoinsRequest], caller: Caller = GIFTING
    ) -> list[wallet_pb2.HoldCoinsResult]:
        batch = wallet_pb2.BatchHoldCoinsRequest(requests=requests)
        return list(self.stub.BatchHoldCoins(batch, metadata=as_caller(caller)).results)

    def batch_capture(
        self, requests: Sequence[wallet_pb2.CaptureHoldRequest], caller: Caller = GIFTING
    ) -> list[wallet_pb2.CaptureHoldResult]:
        batch = wallet_pb2.BatchCaptureHoldsRequest(requests=requests)
        return list(self.stub.BatchCaptureHolds(batch, metadata=as_caller(caller)).results)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wallet_url(make_database: Callable[[str], str]) -> str:
    return make_database("wallet")


@contextmanager
def running_wallet(url: str, clock: FakeClock, **env: str) -> Iterator[WalletHarness]:
    """A wallet served on 127.0.0.1 over the database at `url` (settings: dev mode's, then `env`); its
    books are checked when it stops."""
    settings = wallet_settings(url, **env)
    running = create_server(wallet_app.build(settings, clock), settings, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield WalletHarness(running, wallet_pb2_grpc.WalletServiceStub(channel), clock, url)
    finally:
        channel.close()
        running.stop(None)
    check_books(url)


@pytest.fixture
def wallet(wallet_url: str, clock: FakeClock) -> Iterator[WalletHarness]:
    with running_wallet(wallet_url, clock) as harness:
        yield harness


# --- the wallet's rules driven directly, without gRPC ---------------------------------------------

BORN = date(1990, 6, 15)
T = TypeVar("T")


class Books:
    """The wallet's rules (`Wallets`) over a real database, each call its own unit of work."""

    def __init__(self, url: str, clock: FakeClock) -> None:
        self.db = Database.from_url(url, pool_size=4)
        self.transactions = Transactions(self.db, UnitOfWork)
        self.clock = clock
        self.wallets = Wallets(
            Catalogue(DEFAULT_PACKAGES), {"sandbox": SandboxProvider(DEV_SANDBOX_RECEIPT_KEY)}, clock, 600
        )
        self.run(self.wallets.open_platform_accounts)

    def open(self, user_id: str, born: date = BORN) -> model.Wallet:
        return self.run(lambda uow: self.wallets.open_wallet(uow, user_id, born, "US"))

    def buy(self, user_id: str, package_id: str) -> model.PurchaseResult:
        receipt = mint_receipt(package_id, user_id=user_id)
        verified = self.wallets.verify_purchase(self.transactions, user_id, package_id, "", "sandbox", receipt)
        return self.run(lambda uow: self.wallets.purchase(uow, user_id, verified))

    def wallet(self, user_id: str) -> model.Wallet:
        return self.run(lambda uow: self.wallets.get_wallet(uow, user_id))

    def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """`work` on a unit of work of its own, in one transaction."""
        return self.transactions.run(work)

    def do(self, rule: Callable[..., T], *args: Any) -> T:
        """`rule(uow, *args)` for a rule of `Wallets`, in a unit of work of its own."""
        return self.run(lambda uow: rule(uow, *args))


@pytest.fixture
def books(make_database: Callable[[str], str], clock: FakeClock) -> Iterator[Books]:
    url = make_database("wallet")
    books = Books(url, clock)
    yield books
    books.db.dispose()
    check_books(url)
