"""Gifting's calls to wallet and payout: the saga's ports spoken over gRPC, as `service:gifting`.

Protobuf <-> domain translation and the reading of the peers' errors, nothing else. A peer's answer is
either a result, a definite refusal (`Refused`, carrying the peer's code, reason and metadata), or no
definite answer (`StepUncertain`): down, timed out, busy, or an error that says nothing certain about
whether the step happened. Calls are asynchronous (a gift waiting on a peer holds no thread), each
with the deadline the saga gives it; channels retry UNAVAILABLE and ABORTED themselves within it
(runtime.clients).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.gifting.ports import CaptureOrder, CreditOrder, Hold, HoldOrder, Refused, ReleaseOrder, StepUncertain
from services.runtime import auth
from services.runtime.auth import TokenSource
from services.runtime.clients import open_async_channel
from services.runtime.config import IdentitySettings, ServiceSettings
from services.runtime.errors import from_item_error, from_rpc_error
from services.runtime.timestamps import from_timestamp, to_timestamp

log = logging.getLogger(__name__)
R = TypeVar("R")

WALLET_SERVICE = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name
PAYOUT_SERVICE = payout_pb2.DESCRIPTOR.services_by_name["PayoutService"].full_name
GIFTING = auth.service("gifting")

# Codes with which a peer says for certain that it did not do what was asked. Anything else
# (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNKNOWN, and PERMISSION_DENIED or
# UNAUTHENTICATED, which mean a misconfigured deployment) leaves the step to be asked again.
_DEFINITE = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}

_HOLD_STATES = {
    wallet_pb2.HOLD_STATE_HELD: "held",
    wallet_pb2.HOLD_STATE_CAPTURED: "captured",
    wallet_pb2.HOLD_STATE_RELEASED: "released",
    wallet_pb2.HOLD_STATE_EXPIRED: "expired",
}


async def _ask(peer: str, method: str, call: Awaitable[R]) -> R:
    try:
        return await call
    except grpc.RpcError as err:
        code = err.code()
        refusal = from_rpc_error(err)
        if code in _DEFINITE and refusal is not None:
            raise Refused(refusal) from None
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            log.error("%s refused gifting's identity on %s: check its signing key, the peer's JWKS, mTLS", peer, method)
        raise StepUncertain(f"{peer}.{method}: {code.name} {err.details()}") from None


async def _ask_batch(peer: str, method: str, call: Awaitable[R]) -> R:
    """A batch call: a refusal of the whole call (a malformed batch: a bug) says nothing certain about
    any one item, so it counts as no answer: the batch is asked again, then its gifts are left to
    recovery."""
    try:
        return await _ask(peer, method, call)
    except Refused as refusal:
        log.error("%s refused a whole %s: %s", peer, method, refusal)
        raise StepUncertain(f"{peer}.{method}: {refusal}") from None


def _item(peer: str, method: str, result: Any) -> Refused | StepUncertain | None:
    """A batch item's error as `_ask` reads a unary call's (None: the item succeeded)."""
    if result.WhichOneof("outcome") != "error":
        return None
    error = from_item_error(result.error)
    code = error.code if error is not None else None
    if error is not None and code in _DEFINITE:
        return Refused(error)
    return StepUncertain(f"{peer}.{method}: {code.name if code else result.error.code} {result.error.message}")


def _hold(hold: wallet_pb2.Hold) -> Hold:
    return Hold(
        amount=hold.amount,
        promotional_amount=hold.promotional_amount,
        state=_HOLD_STATES.get(hold.state, "unknown"),
        expire_time=from_timestamp(hold.expire_time),
    )


class WalletClient:
    """WalletPort over gRPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = wallet_pb2_grpc.WalletServiceStub(channel)

    async def hold_many(self, orders: Sequence[HoldOrder], timeout: float) -> list[Hold | Refused | StepUncertain]:
        request = wallet_pb2.BatchHoldCoinsRequest(requests=[_hold_request(o) for o in orders])
        reply = await _ask_batch("wallet", "BatchHoldCoins", self.stub.BatchHoldCoins(request, timeout=timeout))
        return [_item("wallet", "HoldCoins", r) or _hold(r.response.hold) for r in reply.results]

    async def capture_many(
        self, orders: Sequence[CaptureOrder], timeout: float
    ) -> list[Hold | Refused | StepUncertain]:
        request = wallet_pb2.BatchCaptureHoldsRequest(
            requests=[wallet_pb2.CaptureHoldRequest(request_id=o.request_id, gift_id=o.gift_id) for o in orders]
        )
        reply = await _ask_batch("wallet", "BatchCaptureHolds", self.stub.BatchCaptureHolds(request, timeout=timeout))
        return [_item("wallet", "CaptureHold", r) or _hold(r.response.hold) for r in reply.results]

    async def release(self, order: ReleaseOrder, timeout: float) -> Hold:
        request = wallet_pb2.ReleaseHoldRequest(request_id=order.request_id, gift_id=order.gift_id)
        return _hold((await _ask("wallet", "ReleaseHold", self.stub.ReleaseHold(request, timeout=timeout))).hold)


class PayoutClient:
    """PayoutPort over gRPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = payout_pb2_grpc.PayoutServiceStub(channel)

    async def credit_many(self, orders: Sequence[CreditOrder], timeout: float) -> list[Refused | StepUncertain | None]:
        request = payout_pb2.BatchCreditDiamondsRequest(requests=[_credit_request(o) for o in orders])
        call = self.stub.BatchCreditDiamonds(request, timeout=timeout)
        reply = await _ask_batch("payout", "BatchCreditDiamonds", call)
        return [_item("payout", "CreditDiamonds", r) for r in reply.results]


def _hold_request(o: HoldOrder) -> wallet_pb2.HoldCoinsRequest:
    return wallet_pb2.HoldCoinsRequest(
        request_id=o.request_id, gift_id=o.gift_id, user_id=o.user_id, amount=o.amount, ttl_seconds=o.ttl_seconds
    )


def _credit_request(o: CreditOrder) -> payout_pb2.CreditDiamondsRequest:
    request = payout_pb2.CreditDiamondsRequest(
        request_id=o.request_id,
        gift_id=o.gift_id,
        creator_id=o.creator_id,
        diamonds=o.diamonds,
        coins=o.coins,
        promotional_coins=o.promotional_coins,
    )
    if o.deadline is not None:
        request.credit_deadline.CopyFrom(to_timestamp(o.deadline))
    return request


async def peer_channel(target: str, service_full_name: str, settings: ServiceSettings) -> grpc.aio.Channel:
    """A channel to a peer, calling as service:gifting (token, tracing, retries: runtime.clients),
    opened on the event loop it is used on."""
    return open_async_channel(target, service_full_name, gifting_token(settings.identity), settings.tls)


def gifting_token(identity: IdentitySettings) -> TokenSource:
    """The service:gifting tokens gifting sends its peers, signed with its own key (dev mode: its dev key)."""
    return TokenSource.for_settings(identity, GIFTING)
