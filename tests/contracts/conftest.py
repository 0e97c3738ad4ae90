"""Gifting's consumer contracts, checked against the REAL wallet and payout servers.

The calls go through gifting's own clients (services/gifting/peers.py), as service:gifting, so what is
checked is exactly what the saga relies on: the messages, the codes and the reasons it reads. The saga
asks in batches; these tests ask for one order at a time and read its item's answer as the saga does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.gifting.peers import PAYOUT_SERVICE, WALLET_SERVICE, PayoutClient, WalletClient, gifting_token
from services.gifting.ports import CaptureOrder, CreditOrder, Hold, HoldOrder, Refused, ReleaseOrder, StepUncertain
from services.runtime import eventloop
from services.runtime.clients import open_async_channel
from services.runtime.clock import FakeClock
from services.runtime.config import IdentitySettings
from services.runtime.server import RunningServer
from services.wallet.receipts import mint_receipt
from tests.gifting.harness import ADULT, MINOR, new_id, start_payout, start_wallet, suite
from tests.support.identity import as_caller, user

__all__ = ["suite"]  # the three services in-process, for the books' contracts (test_reconciler.py)


@dataclass
class Peer:
    """A running peer, gifting's channel to it, and a plain channel for its users' set-up calls."""

    server: RunningServer
    channel: grpc.aio.Channel
    plain: grpc.Channel

    def close(self) -> None:
        eventloop.run(self.channel.close())
        self.plain.close()
        self.server.stop(None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


TIMEOUT = 5.0  # each call's deadline


def _peer(server: RunningServer, service_name: str) -> Peer:
    target = f"127.0.0.1:{server.port}"

    async def channel() -> grpc.aio.Channel:  # opened on the loop it is used on
        return open_async_channel(target, service_name, gifting_token(IdentitySettings(dev_mode=True)))

    return Peer(server, eventloop.run(channel()), grpc.insecure_channel(target))


@pytest.fixture
def wallet_peer(make_database: Callable[[str], str], clock: FakeClock) -> Iterator[Peer]:
    peer = _peer(start_wallet(make_database("wallet"), clock), WALLET_SERVICE)
    yield peer
    peer.close()


@pytest.fixture
def payout_peer(make_database: Callable[[str], str], clock: FakeClock) -> Iterator[Peer]:
    peer = _peer(start_payout(make_database("payout"), clock), PAYOUT_SERVICE)
    yield peer
    peer.close()


def _one(answers: list[Any]) -> Any:
    """The one order's answer, raised when it is a refusal or no answer."""
    (answer,) = answers
    if isinstance(answer, (Refused, StepUncertain)):
        raise answer
    return answer


class OneAtATimeWallet:
    """Gifting's wallet client, asked for one order at a time."""

    def __init__(self, client: WalletClient) -> None:
        self.client = client

    def hold_coins(self, order: HoldOrder) -> Hold:
        return _one(eventloop.run(self.client.hold_many([order], TIMEOUT)))

    def capture_hold(self, order: CaptureOrder) -> Hold:
        return _one(eventloop.run(self.client.capture_many([order], TIMEOUT)))

    def release_hold(self, *, request_id: str, gift_id: str) -> Hold:
        return eventloop.run(self.client.release(ReleaseOrder(request_id, gift_id), TIMEOUT))


class OneAtATimePayout:
    """Gifting's payout client, asked for one credit at a time."""

    def __init__(self, client: PayoutClient) -> None:
        self.client = client

    def credit_diamonds(self, order: CreditOrder) -> None:
        _one(eventloop.run(self.client.credit_many([order], TIMEOUT)))


@pytest.fixture
def wallet(wallet_peer: Peer) -> OneAtATimeWallet:
    return OneAtATimeWallet(WalletClient(wallet_peer.channel))


@pytest.fixture
def payout(payout_peer: Peer) -> OneAtATimePayout:
    return OneAtATimePayout(PayoutClient(payout_peer.channel))


def open_wallet(peer: Peer, user_id: str, package_id: str = "coins_70", adult: bool = True) -> None:
    """A viewer's wallet with one package of coins (none for a minor: minors buy no coins), set up
    through the wallet's public API."""
    stub, me = wallet_pb2_grpc.WalletServiceStub(peer.plain), as_caller(user(user_id))
    born = ADULT if adult else MINOR
    stub.OpenWallet(
        wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=born, country_code="US"), metadata=me
    )
    if not adult:
        return
    receipt = wallet_pb2.Receipt(store="sandbox", payload=mint_receipt(package_id))
    stub.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id=package_id, receipt=receipt), metadata=me
    )


def wallet_balance(peer: Peer, user_id: str) -> wallet_pb2.Balance:
    stub = wallet_pb2_grpc.WalletServiceStub(peer.plain)
    return stub.GetWallet(wallet_pb2.GetWalletRequest(), metadata=as_caller(user(user_id))).wallet.balance


def register_creator(peer: Peer, creator_id: str, adult: bool = True) -> None:
    stub = payout_pb2_grpc.PayoutServiceStub(peer.plain)
    request = payout_pb2.RegisterCreatorRequest(
        request_id=new_id(), date_of_birth=ADULT if adult else MINOR, country_code="US"
    )
    stub.RegisterCreator(request, metadata=as_caller(user(creator_id)))


def refusal(call: Callable[[], object]) -> Refused:
    """The definite refusal gifting's client raises for a call."""
    with pytest.raises(Refused) as info:
        call()
    return info.value


def diamond_balance(peer: Peer, creator_id: str) -> int:
    stub = payout_pb2_grpc.PayoutServiceStub(peer.plain)
    return stub.GetEarnings(payout_pb2.GetEarningsRequest(), metadata=as_caller(user(creator_id))).diamond_balance
