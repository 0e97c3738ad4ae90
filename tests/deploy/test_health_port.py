"""The plaintext health port the kubelet probes: with mTLS on the service port, a native gRPC probe
(which cannot present a client certificate) can only reach the health service there."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import eventloop
from services.runtime.auth import keygen
from services.runtime.config import Env, load_service_settings
from services.runtime.server import RunningServer, ServiceApp, create_server
from tests.support.processes import free_port

FULL_NAME = "giftcoin.wallet.v1.WalletService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(name: str, subject: str, extensions: str, cwd: Path) -> None:
    _openssl(*f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj {subject}".split(), cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    sign = f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile {name}.ext"
    _openssl(*sign.split(), "-out", f"{name}.crt", cwd=cwd)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot issue test certificates for mTLS")
    cwd = tmp_path_factory.mktemp("tls")
    authority = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=giftcoin-test-ca -keyout ca.key -out ca.crt"
    _openssl(*authority.split(), cwd=cwd)
    _issue("server", "/CN=wallet", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", cwd)
    _issue("client", "/CN=gifting", "extendedKeyUsage=clientAuth\n", cwd)
    return cwd


@pytest.fixture
def running(certificates: Path, tmp_path: Path) -> Iterator[RunningServer]:
    # The production shape: not dev mode, so mTLS is required on the service port, and a JWKS.
    public = keygen("issuer/1", str(tmp_path / "issuer.private.json"))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [public]}))
    env = Env(
        {
            "GIFTCOIN_JWT_KEYS": str(tmp_path / "jwks.json"),
            "GIFTCOIN_TLS_CERT_FILE": str(certificates / "server.crt"),
            "GIFTCOIN_TLS_KEY_FILE": str(certificates / "server.key"),
            "GIFTCOIN_TLS_CA_FILE": str(certificates / "ca.crt"),
            "GIFTCOIN_WALLET_HOST": "127.0.0.1",
            "GIFTCOIN_HEALTH_PORT": str(free_port()),
        }
    )
    settings = load_service_settings("wallet", env)
    app = ServiceApp(
        name="wallet",
        full_name=FULL_NAME,
        servicer=object(),
        add_to_server=lambda _s, _srv: None,
        access={},
        executor=ThreadPoolExecutor(1),
    )
    server = create_server(app, settings, "127.0.0.1:0")
    yield server
    server.stop(0)


def _check(channel: grpc.Channel, service: str = "") -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_the_kubelet_reaches_health_in_plaintext_while_the_service_port_requires_mtls(
    running: RunningServer, certificates: Path
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe:
        assert _check(probe) == SERVING
        assert _check(probe, FULL_NAME) == SERVING

    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plaintext, pytest.raises(grpc.RpcError) as refused:
        _check(plaintext)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certificates / "ca.crt").read_bytes(),
        private_key=(certificates / "client.key").read_bytes(),
        certificate_chain=(certificates / "client.crt").read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{running.port}", credentials) as peer:
        assert _check(peer, FULL_NAME) == SERVING


def test_the_health_port_only_serves_health(running: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe, pytest.raises(grpc.RpcError) as error:
        call = probe.unary_unary(
            f"/{FULL_NAME}/GetWallet",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        call(health_pb2.HealthCheckRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_health_port_reports_not_serving_once_shutdown_begins(running: RunningServer) -> None:
    # What `stop()` does first: readiness fails (the pod leaves the endpoints) while calls drain.
    eventloop.run(running.health.enter_graceful_shutdown())
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as probe:
        assert _check(probe, FULL_NAME) == NOT_SERVING
