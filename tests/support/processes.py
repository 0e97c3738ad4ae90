"""Services as real processes (`python -m services.<name>`), for restart, crash and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.giftctl.suite import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a stopping service may take after its drain (the loops' last step, closing the batcher and the
# pools) before it exports its last spans: docs/deploy.md's figure, which the manifests' grace includes.
STOP_ALLOWANCE_SECONDS = 5


class ServiceProcess:
    """One service process; `start()` waits until its health check says SERVING."""

    def __init__(
        self,
        service: str,
        database_url: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.service = service
        self.port = port or free_port()
        self.database_url = database_url
        self.extra_env = env or {}
        self.log_dir = log_dir or Path("/tmp")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        upper = self.service.upper()
        env = dict(os.environ)
        env.update(
            {
                "GIFTCOIN_DEV_MODE": "true",
                f"GIFTCOIN_{upper}_PORT": str(self.port),
                f"GIFTCOIN_{upper}_DATABASE_URL": self.database_url,
                "GIFTCOIN_SHUTDOWN_GRACE_SECONDS": "5",
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        log = (self.log_dir / f"{self.service}-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}"],
            cwd=ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_serving(self.target, timeout, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM: the graceful shutdown Kubernetes asks for; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


def wait_serving(target: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service at {target} exited with {proc.returncode} while starting")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"service at {target} not SERVING after {timeout}s")
