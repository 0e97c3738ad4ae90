"""Bytes that are not a request: every RPC of the three services, enumerated from their descriptors.

A caller who may call the method gets INVALID_ARGUMENT MALFORMED_REQUEST; a caller without a token gets
UNAUTHENTICATED, whatever it sends. Never INTERNAL, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from services.gifting.app import ACCESS as GIFTING_ACCESS
from services.payout.app import ACCESS as PAYOUT_ACCESS
from services.runtime.auth import Access, Caller, CallerKind, operator, service, user
from services.runtime.errors import from_rpc_error
from services.wallet.app import ACCESS as WALLET_ACCESS
from tests.gifting.harness import Suite, start_suite
from tests.support import databases
from tests.support.identity import as_caller

ACCESS = {"wallet": WALLET_ACCESS, "gifting": GIFTING_ACCESS, "payout": PAYOUT_ACCESS}
# An unpaired UTF-16 surrogate as some clients encode it: not valid UTF-8.
HALF_AN_EMOJI = b"\xed\xa0\xbd"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    workdir: Path = tmp_path_factory.mktemp("decode")
    running = start_suite(lambda name: databases.fresh_database("sqlite", name, workdir))
    try:
        yield running
    finally:
        running.close()


def methods() -> list[tuple[str, MethodDescriptor]]:
    """Every RPC of the three services, from the contracts' descriptors."""
    services = (
        ("wallet", wallet_pb2.DESCRIPTOR.services_by_name["WalletService"]),
        ("gifting", gifting_pb2.DESCRIPTOR.services_by_name["GiftingService"]),
        ("payout", payout_pb2.DESCRIPTOR.services_by_name["PayoutService"]),
    )
    return [(name, method) for name, descriptor in services for method in descriptor.methods]


def allowed_caller(access: Access) -> Caller:
    if access.service_name:
        return service(access.service_name)
    return operator("desk") if CallerKind.USER not in access.kinds else user("alice")


def invalid_utf8(method: MethodDescriptor) -> bytes | None:
    """The request with its first string field holding bytes that are not UTF-8 (None: it has none)."""
    for field in method.input_type.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return bytes([field.number << 3 | 2, len(HALF_AN_EMOJI)]) + HALF_AN_EMOJI
    return None


def call(suite: Suite, service_name: str, method: MethodDescriptor, payload: bytes, caller: Caller | None) -> None:
    target = {"wallet": suite.clients.wallet_target, "gifting": suite.clients.gifting_target}.get(
        service_name, suite.clients.payout_target
    )
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = as_caller(caller) if caller is not None else ()
    raw: dict[str, Callable[[bytes], bytes]] = {"request_serializer": bytes, "response_deserializer": bytes}
    with grpc.insecure_channel(target) as channel:
        if method.server_streaming:
            list(channel.unary_stream(path, **raw)(payload, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(path, **raw)(payload, metadata=metadata, timeout=10)


def refusal(
    suite: Suite, service_name: str, method: MethodDescriptor, payload: bytes, caller: Caller | None
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(suite, service_name, method, payload, caller)
    error = from_rpc_error(info.value)
    return info.value.code(), error.reason if error else str(info.value.details())


@pytest.mark.parametrize(("service_name", "method"), methods(), ids=lambda m: getattr(m, "name", m))
def test_bytes_that_are_not_the_request_are_invalid_argument_after_identity(
    suite: Suite, service_name: str, method: MethodDescriptor
) -> None:
    caller = allowed_caller(ACCESS[service_name][method.name])
    assert refusal(suite, service_name, method, b"\xff", caller) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    assert refusal(suite, service_name, method, b"\xff", None)[0] == grpc.StatusCode.UNAUTHENTICATED
    not_utf8 = invalid_utf8(method)
    if not_utf8 is not None:
        assert refusal(suite, service_name, method, not_utf8, caller) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
        )
