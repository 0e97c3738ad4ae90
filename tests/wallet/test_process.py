"""The wallet as its own process: health, reflection, replays that survive a restart, clean SIGTERM."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from services.giftctl.suite import free_port
from services.wallet.model import account_token
from services.wallet.servicer import FULL_NAME
from tests.support.app_store import AppleChain, Transaction, app_store_env, notification
from tests.support.identity import as_caller, user
from tests.support.processes import ServiceProcess
from tests.wallet.conftest import ADULT_BIRTH, new_id, purchase_request, rpc_error

ALICE = as_caller(user("alice"))


def listed_services(channel: grpc.Channel, version: str = "v1alpha") -> set[str]:
    """The services reflection lists, asked through grpc.reflection.<version> (v1's messages are v1alpha's)."""
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {s.name for reply in replies for s in reply.list_services_response.service}


def test_replays_survive_a_restart_and_sigterm_exits_cleanly(wallet_url: str, tmp_path: Path) -> None:
    process = ServiceProcess("wallet", wallet_url, log_dir=tmp_path).start()
    try:
        with process.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", FULL_NAME):
                status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            assert FULL_NAME in listed_services(channel)
            assert FULL_NAME in listed_services(channel, "v1")

            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            opened = wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=ADULT_BIRTH, country_code="US")
            stub.OpenWallet(opened, metadata=ALICE, timeout=5)
            purchase = purchase_request("coins_700")
            first = stub.PurchaseCoins(purchase, metadata=ALICE, timeout=5)
            replays = _replays(stub, purchase)
            assert replays["same request"] == first.SerializeToString()
        assert process.terminate() == 0

        process = ServiceProcess("wallet", wallet_url, log_dir=tmp_path).start()
        with process.channel() as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            assert _replays(stub, purchase) == replays
            assert stub.OpenWallet(opened, metadata=ALICE, timeout=5).wallet.user_id == "alice"
            assert stub.GetWallet(wallet_pb2.GetWalletRequest(), metadata=ALICE, timeout=5).wallet.balance.total == 700
        assert process.terminate() == 0
    finally:
        process.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="tgkill and /proc are Linux's")
def test_a_sigterm_the_kernel_hands_to_another_thread_still_drains_and_exits_cleanly(tmp_path: Path) -> None:
    # A process's signal may go to any of its threads; Python runs the handler on the main thread only,
    # when it next runs Python code: a main thread asleep for good never would (cpython#85300).
    process = ServiceProcess("wallet", f"sqlite:///{tmp_path / 'wallet.db'}", log_dir=tmp_path).start()
    try:
        assert process.proc is not None
        pid = process.proc.pid
        other_thread = min(int(task) for task in os.listdir(f"/proc/{pid}/task") if int(task) != pid)
        assert ctypes.CDLL(None, use_errno=True).tgkill(pid, other_thread, signal.SIGTERM) == 0
        assert process.proc.wait(10) == 0
    finally:
        process.kill()


def _replays(stub: wallet_pb2_grpc.WalletServiceStub, purchase: wallet_pb2.PurchaseCoinsRequest) -> dict[str, object]:
    """The outcomes of replaying a purchase three ways."""
    same = stub.PurchaseCoins(purchase, metadata=ALICE, timeout=5).SerializeToString()
    other_package = wallet_pb2.PurchaseCoinsRequest()
    other_package.CopyFrom(purchase)
    other_package.package_id = "coins_70"
    reused = rpc_error(lambda: stub.PurchaseCoins(other_package, metadata=ALICE, timeout=5))
    same_receipt = wallet_pb2.PurchaseCoinsRequest()
    same_receipt.CopyFrom(purchase)
    same_receipt.request_id = new_id()
    used = rpc_error(lambda: stub.PurchaseCoins(same_receipt, metadata=ALICE, timeout=5))
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert (used.code, used.reason) == (grpc.StatusCode.ALREADY_EXISTS, "RECEIPT_ALREADY_USED")
    return {"same request": same, "other package": reused.reason, "same receipt": used.reason}


def test_store_notifications_are_served_beside_grpc_with_health_and_a_span_each(
    wallet_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    chain = AppleChain.make(now)
    port, spans = free_port(), tmp_path / "traces-wallet.jsonl"
    env = {
        **app_store_env(chain.write_root(tmp_path / "root.pem")),
        "GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT": str(port),
        "GIFTCOIN_TRACE_EXPORTER": "file",
        "GIFTCOIN_TRACE_FILE": str(spans),
    }
    root = f"http://127.0.0.1:{port}"
    process = ServiceProcess("wallet", wallet_url, env=env, log_dir=tmp_path).start()
    try:
        assert _http(f"{root}/healthz") == (200, {"serving": True})
        with process.channel() as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            opened = wallet_pb2.OpenWalletRequest(request_id=new_id(), date_of_birth=ADULT_BIRTH, country_code="US")
            stub.OpenWallet(opened, metadata=ALICE, timeout=5)
            bought = Transaction(now, account_token("alice"))
            receipt = wallet_pb2.Receipt(store="app_store", payload=chain.sign(bought.payload()))
            purchase = wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id="coins_700", receipt=receipt)
            assert stub.PurchaseCoins(purchase, metadata=ALICE, timeout=5).wallet.balance.total == 700
            refunded = replace(bought, revoked_at=now)
            refund = notification(chain, "REFUND", refunded, now + timedelta(seconds=1))
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            assert _http(f"{root}/app-store/notifications", refund, traceparent)[1]["outcome"] == "applied"
            assert _http(f"{root}/app-store/notifications", refund)[1]["outcome"] == "duplicate"
            assert stub.GetWallet(wallet_pb2.GetWalletRequest(), metadata=ALICE, timeout=5).wallet.balance.total == 0
        assert process.terminate() == 0
    finally:
        process.kill()
    served = [json.loads(line) for line in spans.read_text().splitlines()]
    posts = [s for s in served if s["name"] == "POST /app-store/notifications"]
    assert [(s["kind"], s["attributes"]["http.response.status_code"]) for s in posts] == [("SERVER", 200)] * 2
    assert posts[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # the caller's trace continued
    assert posts[0]["parent_span_id"] == "b7ad6b7169203331"


def _http(url: str, body: bytes | None = None, traceparent: str = "") -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json", **({"traceparent": traceparent} if traceparent else {})}
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as response:
        return response.status, json.loads(response.read())
