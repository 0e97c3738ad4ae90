"""The three services for gifting's tests: the real wallet and payout, and gifting, over real gRPC.

`Suite` runs all three in this process on 127.0.0.1 (port 0), each on its own fresh database, sharing
one FakeClock; the loops never tick on their own (tests call `recover()` and friends), except the live
feed's poller. The conservation check (`value_problems`) reads every service's books: the ledgers'
invariants and, gift by gift, that what gifting says happened is what wallet and payout did.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from sqlalchemy import select

from services.gifting import model as gifting_model
from services.gifting import storage as gifting_storage
from services.gifting.app import GiftingComponents, assemble
from services.gifting.domain import Gifts
from services.gifting.saga import Saga
from services.gifting.settings import GiftingSettings
from services.gifting.settings import load_settings as load_gifting_settings
from services.payout import storage as payout_storage
from services.payout.app import build as build_payout
from services.payout.settings import load_settings as load_payout_settings
from services.runtime import eventloop
from services.runtime.auth import Caller
from services.runtime.clock import FakeClock
from services.runtime.config import Env
from services.runtime.db import Database
from services.runtime.errors import DomainError, from_rpc_error
from services.runtime.ledger import ledger_problems
from services.runtime.server import RunningServer, create_server
from services.wallet import model as wallet_model
from services.wallet import storage as wallet_storage
from services.wallet.app import build as build_wallet
from services.wallet.receipts import mint_receipt
from services.wallet.settings import load_settings as load_wallet_settings
from tests.support.identity import as_caller, operator, service, user

GIFTING = service("gifting")
OPERATOR = operator("catalogue-desk")
ADULT = common_pb2.Date(year=1990, month=6, day=15)
MINOR = common_pb2.Date(year=2015, month=6, day=15)
STREAM = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="stream-1")
HOUR_MS = "3600000"


def new_id() -> str:
    return str(uuid.uuid4())


def refused(call: Callable[[], Any]) -> DomainError:
    """The DomainError a call fails with (read back from the google.rpc details); fails if it succeeds."""
    try:
        call()
    except grpc.RpcError as err:
        error = from_rpc_error(err)
        assert error is not None, f"{err.code()} without ErrorInfo: {err.details()}"
        return error
    raise AssertionError("the call succeeded")


def gifting_env(database_url: str, wallet_target: str, payout_target: str, **env: str) -> dict[str, str]:
    """Dev-mode gifting settings for tests: short leases and retries, loops that wait for the test."""
    return {
        "GIFTCOIN_DEV_MODE": "true",
        "GIFTCOIN_GIFTING_DATABASE_URL": database_url,
        "GIFTCOIN_GIFTING_WALLET_TARGET": wallet_target,
        "GIFTCOIN_GIFTING_PAYOUT_TARGET": payout_target,
        "GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "2000",
        "GIFTCOIN_GIFTING_LEASE_SECONDS": "10",
        "GIFTCOIN_GIFTING_RECOVERY_INTERVAL_MS": HOUR_MS,
        "GIFTCOIN_GIFTING_RETRY_MAX_SECONDS": "5",
        "GIFTCOIN_GIFTING_FEED_POLL_MS": "50",
        **env,
    }


# --- the books ---------------------------------------------------------------------------------------


def _read(url: str, work: Callable[[Any], Any]) -> Any:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.transaction() as conn:
            return work(conn)
    finally:
        db.dispose()


def ledgers_problems(wallet_url: str, payout_url: str) -> list[str]:
    """How wallet's and payout's ledgers break their invariants (runtime.ledger.ledger_problems); empty when
    they keep them (for tests that move value past the saga too, where the gift-by-gift check cannot hold)."""
    problems = [f"wallet: {p}" for p in _read(wallet_url, lambda c: ledger_problems(wallet_storage.ledger, c))]
    return problems + [f"payout: {p}" for p in _read(payout_url, lambda c: ledger_problems(payout_storage.ledger, c))]


def value_problems(wallet_url: str, payout_url: str, gifting_url: str) -> list[str]:
    """Every way value was not conserved across the three services; empty when it was.

    - wallet's and payout's ledgers keep their invariants (runtime.ledger.ledger_problems);
    - a COMPLETED gift's hold is captured for its coins and its diamonds are credited once, exactly;
    - a FAILED gift cost nothing: its hold (if any) was released or lapsed, and nothing was credited;
    - no gift is left PENDING, and no hold is left HELD;
    - coins captured = coins of completed gifts; diamonds credited = diamonds owed by completed gifts.
    """
    t = gifting_storage.gift_transfers
    transfers = _read(gifting_url, lambda c: c.execute(select(t)).all())
    holds = {
        r.gift_id: r
        for r in _read(
            wallet_url,
            lambda c: c.execute(select(wallet_storage.holds)).all(),
        )
    }
    credits = {
        r.gift_id: r for r in _read(payout_url, lambda c: c.execute(select(payout_storage.diamond_credits)).all())
    }
    problems = ledgers_problems(wallet_url, payout_url)
    gifts = {tr.transfer_id for tr in transfers}
    for tr in transfers:
        hold, credit = holds.get(tr.transfer_id), credits.get(tr.transfer_id)
        if tr.state == gifting_model.COMPLETED:
            if hold is None or hold.state != wallet_model.CAPTURED or hold.amount != tr.total_coins:
                problems.append(f"completed gift {tr.transfer_id}: hold {hold and (hold.state, hold.amount)}")
            credited = credit.diamonds if credit is not None else 0
            if credited != tr.total_diamonds:
                problems.append(f"completed gift {tr.transfer_id}: {credited} diamonds, {tr.total_diamonds} owed")
        elif tr.state == gifting_model.FAILED:
            if hold is not None and hold.state not in (wallet_model.RELEASED, wallet_model.EXPIRED):
                problems.append(f"failed gift {tr.transfer_id}: hold {hold.state}")
            if credit is not None:
                problems.append(f"failed gift {tr.transfer_id}: {credit.diamonds} diamonds credited")
        else:
            problems.append(f"gift {tr.transfer_id} still pending at step {tr.step}")
    problems += [f"hold of {g} still held" for g, h in holds.items() if h.state == wallet_model.HELD]
    problems += [f"hold for unknown gift {g}" for g in holds if g not in gifts]
    problems += [f"credit for unknown gift {g}" for g in credits if g not in gifts]
    completed = [tr for tr in transfers if tr.state == gifting_model.COMPLETED]
    captured = sum(h.amount for h in holds.values() if h.state == wallet_model.CAPTURED)
    spent = sum(tr.total_coins for tr in completed)
    if captured != spent:
        problems.append(f"coins captured {captured} != coins of completed gifts {spent}")
    credited = sum(c.diamonds for c in credits.values())
    if credited != sum(tr.total_diamonds for tr in completed):
        problems.append(f"diamonds credited {credited} != owed {sum(tr.total_diamonds for tr in completed)}")
    return problems


# --- clients -----------------------------------------------------------------------------------------


@dataclass
class Clients:
    """Stubs of the three services and the calls tests make, each through the public API."""

    wallet_target: str
    payout_target: str
    gifting_target: str
    channels: list[grpc.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wallet = wallet_pb2_grpc.WalletServiceStub(self._channel(self.wallet_target))
        self.payout = payout_pb2_grpc.PayoutServiceStub(self._channel(self.payout_target))
        self.gifting = gifting_pb2_grpc.GiftingServiceStub(self._channel(self.gifting_target))

    def _channel(self, target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target)
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    # --- wallet and payout: the people in the story -------------------------------------------------

    def viewer(
        self, user_id: str, package_id: str = "coins_700", born: common_pb2.Date = ADULT, store_transaction_id: str = ""
    ) -> None:
        """A viewer with a wallet and the coins of one package bought with a sandbox receipt."""
        opened = wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=born, country_code="US")
        self.wallet.OpenWallet(opened, metadata=as_caller(user(user_id)), timeout=10)
        if package_id:
            self.buy(user_id, package_id, store_transaction_id)

    def buy(self, user_id: str, package_id: str, store_transaction_id: str = "") -> None:
        receipt = wallet_pb2.Receipt(store="sandbox", payload=mint_receipt(package_id, store_transaction_id))
        purchase = wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id=package_id, receipt=receipt)
        self.wallet.PurchaseCoins(purchase, metadata=as_caller(user(user_id)), timeout=10)

    def creator(self, user_id: str, born: common_pb2.Date = ADULT) -> None:
        request = payout_pb2.RegisterCreatorRequest(request_id=new_id(), date_of_birth=born, country_code="US")
        self.payout.RegisterCreator(request, metadata=as_caller(user(user_id)), timeout=10)

    def balance(self, user_id: str) -> wallet_pb2.Balance:
        me = as_caller(user(user_id))
        return self.wallet.GetWallet(wallet_pb2.GetWalletRequest(), metadata=me, timeout=10).wallet.balance

    def diamonds(self, creator_id: str) -> int:
        me = as_caller(user(creator_id))
        return self.payout.GetEarnings(payout_pb2.GetEarningsRequest(), metadata=me, timeout=10).diamond_balance

    # --- gifting --------------------------------------------------------------------------------------

    def send_request(
        self,
        gift_id: str = "rose",
        quantity: int = 1,
        recipient_id: str = "carol",
        target: gifting_pb2.Target = STREAM,
        request_id: str = "",
    ) -> gifting_pb2.SendGiftRequest:
        return gifting_pb2.SendGiftRequest(
            request_id=request_id or new_id(),
            gift_id=gift_id,
            quantity=quantity,
            recipient_id=recipient_id,
            target=target,
        )

    def send(self, sender_id: str, request: gifting_pb2.SendGiftRequest | None = None, **fields: Any) -> Any:
        """SendGift as `sender_id`; the transfer it answers with."""
        request = request or self.send_request(**fields)
        return self.gifting.SendGift(request, metadata=as_caller(user(sender_id)), timeout=30).transfer

    def send_until_answered(self, sender_id: str, request: gifting_pb2.SendGiftRequest, timeout: float = 30) -> Any:
        """SendGift retried, as a well-behaved client does, while it is ABORTED (another call drives it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.send(sender_id, request)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def transfer(self, caller_id: str, transfer_id: str) -> gifting_pb2.GiftTransfer:
        request = gifting_pb2.GetGiftTransferRequest(transfer_id=transfer_id)
        return self.gifting.GetGiftTransfer(request, metadata=as_caller(user(caller_id)), timeout=10).transfer

    def upsert(self, gift_id: str, name: str, coin_price: int, diamonds: int = 0) -> gifting_pb2.Gift:
        request = gifting_pb2.UpsertGiftRequest(
            request_id=new_id(), gift_id=gift_id, name=name, coin_price=coin_price, diamonds=diamonds
        )
        return self.gifting.UpsertGift(request, metadata=as_caller(OPERATOR), timeout=10).gift

    def retire(self, gift_id: str) -> gifting_pb2.Gift:
        request = gifting_pb2.RetireGiftRequest(request_id=new_id(), gift_id=gift_id)
        return self.gifting.RetireGift(request, metadata=as_caller(OPERATOR), timeout=10).gift

    def call(self, method: str, request: Any, caller: Caller) -> Any:
        return getattr(self.gifting, method)(request, metadata=as_caller(caller), timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


# --- the three services in this process -------------------------------------------------------------


@dataclass
class Suite:
    """wallet, payout and gifting in this process, and clients of all three."""

    clock: FakeClock
    wallet_url: str
    payout_url: str
    gifting_url: str
    wallet_server: RunningServer
    payout_server: RunningServer
    gifting_server: RunningServer
    components: GiftingComponents
    clients: Clients
    gifting_env: dict[str, str]

    @property
    def gifts(self) -> Gifts:
        return self.components.gifts

    @property
    def db(self) -> Database:
        """The gifting database, for what a test reads or writes past the domain."""
        return self.components.db

    @property
    def saga(self) -> Saga:
        return self.components.saga

    def recover(self) -> int:
        """One pass of the recovery loop."""
        return eventloop.run(self.components.saga.recover_once())

    def stop_payout(self) -> None:
        self.payout_server.stop(None)

    def start_payout(self) -> None:
        self.payout_server = start_payout(self.payout_url, self.clock, self.clients.payout_target)

    def stop_wallet(self) -> None:
        self.wallet_server.stop(None)

    def start_wallet(self) -> None:
        self.wallet_server = start_wallet(self.wallet_url, self.clock, self.clients.wallet_target)

    def restart_gifting(self, **env: str) -> None:
        """A new gifting replica on the same database (the old one stopped gracefully), with `env` on top."""
        self.gifting_server.stop(grace=5)
        settings = load_gifting_settings(Env({**self.gifting_env, **env}))
        self.components = assemble(settings, self.clock)
        self.gifting_server = create_server(self.components.app, settings, self.clients.gifting_target)

    def problems(self) -> list[str]:
        return value_problems(self.wallet_url, self.payout_url, self.gifting_url)

    def close(self) -> None:
        self.clients.close()
        for server in (self.gifting_server, self.payout_server, self.wallet_server):
            server.stop(None)


def start_wallet(url: str, clock: FakeClock, address: str = "127.0.0.1:0") -> RunningServer:
    settings = load_wallet_settings(
        Env(
            {
                "GIFTCOIN_DEV_MODE": "true",
                "GIFTCOIN_WALLET_DATABASE_URL": url,
                "GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS": "3600",
                "GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS": "3600",
            }
        )
    )
    return create_server(build_wallet(settings, clock), settings, address)


def start_payout(url: str, clock: FakeClock, address: str = "127.0.0.1:0") -> RunningServer:
    settings = load_payout_settings(
        Env(
            {
                "GIFTCOIN_DEV_MODE": "true",
                "GIFTCOIN_PAYOUT_DATABASE_URL": url,
                "GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": HOUR_MS,
            }
        )
    )
    return create_server(build_payout(settings, clock), settings, address)


def start_suite(make_database: Callable[[str], str], clock: FakeClock | None = None, **env: str) -> Suite:
    clock = clock or FakeClock()
    wallet_url, payout_url, gifting_url = (make_database(s) for s in ("wallet", "payout", "gifting"))
    wallet_server = start_wallet(wallet_url, clock)
    payout_server = start_payout(payout_url, clock)
    wallet_target, payout_target = f"127.0.0.1:{wallet_server.port}", f"127.0.0.1:{payout_server.port}"
    values = gifting_env(gifting_url, wallet_target, payout_target, **env)
    settings: GiftingSettings = load_gifting_settings(Env(values))
    components = assemble(settings, clock)
    gifting_server = create_server(components.app, settings, "127.0.0.1:0")
    clients = Clients(wallet_target, payout_target, f"127.0.0.1:{gifting_server.port}")
    return Suite(
        clock,
        wallet_url,
        payout_url,
        gifting_url,
        wallet_server,
        payout_server,
        gifting_server,
        components,
        clients,
        values,
    )


@pytest.fixture
def suite(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The three services in-process; the test ends with value conserved across all of them."""
    running = start_suite(make_database)
    try:
        yield running
        assert running.problems() == []
    finally:
        running.close()
