"""A service stops within its documented bound whatever the trace collector's state: SIGTERM, then
the drain (GIFTCOIN_SHUTDOWN_GRACE_SECONDS), the loops and pools (STOP_ALLOWANCE_SECONDS), and the
last export of its spans (GIFTCOIN_TELEMETRY_TIMEOUT_MS), with exit status 0. The deployment's
terminationGracePeriodSeconds covers the same sum (tests/deploy/test_manifests.py)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.giftctl.suite import free_port
from tests.support.identity import as_caller, user
from tests.support.processes import STOP_ALLOWANCE_SECONDS, ServiceProcess

DRAIN_SECONDS = 1
TIMEOUT_MS = 1000


@pytest.fixture(params=["refused", "silent"])
def unreachable_collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """A collector address where nothing answers: a port nobody listens on (connections refused),
    or a socket that takes connections and never speaks (every export waits for its deadline)."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def test_sigterm_with_the_collector_unreachable_exits_within_the_documented_bound(
    unreachable_collector: str, tmp_path: Path
) -> None:
    wallet = ServiceProcess(
        "wallet",
        f"sqlite:///{tmp_path}/wallet.db",
        {
            "GIFTCOIN_TRACE_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": unreachable_collector,
            "GIFTCOIN_TELEMETRY_TIMEOUT_MS": str(TIMEOUT_MS),
            "GIFTCOIN_SHUTDOWN_GRACE_SECONDS": str(DRAIN_SECONDS),
            "GIFTCOIN_METRICS_PORT": str(free_port()),  # as deployed: metrics are scraped, not pushed
        },
        log_dir=tmp_path,
    ).start()
    try:
        stub = wallet_pb2_grpc.WalletServiceStub(wallet.channel())
        for name in ("ana", "ben", "cara"):  # spans waiting in the exporter's queue at SIGTERM
            stub.OpenWallet(
                wallet_pb2.OpenWalletRequest(
                    request_id=str(uuid.uuid4()),
                    date_of_birth=common_pb2.Date(year=1990, month=1, day=1),
                    country_code="US",
                ),
                metadata=as_caller(user(name)),
            )
        bound = DRAIN_SECONDS + STOP_ALLOWANCE_SECONDS + TIMEOUT_MS / 1000
        signalled = time.monotonic()
        assert wallet.terminate(timeout=bound + 30) == 0
        took = time.monotonic() - signalled
        assert took <= bound, f"stopped in {took:.1f}s, over the documented {bound:.1f}s"
    finally:
        wallet.kill()
