"""`giftctl up`: the three services as local processes, in dev mode, on embedded SQLite.

Each service runs as `python -m services.<name>` with its database, logs and span file under one
data directory. Stopping sends SIGTERM (the services drain in-flight calls) and waits; a service
that does not stop within the grace period is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.giftctl.session import SERVICES, CliError

ROOT = Path(__file__).resolve().parents[2]
# Start order: gifting calls the other two.
START_ORDER = ("wallet", "payout", "gifting")
STOP_GRACE_SECONDS = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, never one this process handed out before: the kernel may give the
    same free port to two binds in a row, and services started on a port each would then race for
    it (the second fails to bind, and a health check of its port answers from the first)."""
    with _handing_out:
        while True:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


_handed_out: set[int] = set()
_handing_out = threading.Lock()


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens there. SO_REUSEADDR as the servers bind: connections of a suite that just
    stopped, lingering in TIME_WAIT, do not make the port busy."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class ServiceProcess:
    name: str
    target: str
    log_file: Path
    trace_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Suite:
    """wallet, payout and gifting as child processes sharing one data directory."""

    def __init__(
        self,
        data_dir: Path,
        targets: dict[str, str],
        extra_env: dict[str, str] | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """`extra_env` is every service's, `service_env[name]` one service's (applied last)."""
        self.data_dir = data_dir.resolve()
        self.targets = targets
        self.extra_env = extra_env or {}
        self.service_env = service_env or {}
        self.services = {
            name: ServiceProcess(
                name,
                targets[name],
                self.data_dir / f"{name}.log",
                self.data_dir / f"traces-{name}.jsonl",
            )
            for name in SERVICES
        }

    def environment(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}  # each names itself
        upper = name.upper()
        host, port = split_target(self.targets[name])
        env.update(
            {
                "GIFTCOIN_DEV_MODE": "true",
                f"GIFTCOIN_{upper}_HOST": host,
                f"GIFTCOIN_{upper}_PORT": str(port),
                f"GIFTCOIN_{upper}_DATABASE_URL": f"sqlite:///{self.data_dir / (name + '.db')}",
                "GIFTCOIN_TRACE_EXPORTER": "file",
                "GIFTCOIN_TRACE_FILE": str(self.services[name].trace_file),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH", "")]).rstrip(
                    os.pathsep
                ),
            }
        )
        # Where gifting finds its peers.
        for peer in ("wallet", "payout"):
            env[f"GIFTCOIN_GIFTING_{peer.upper()}_TARGET"] = self.targets[peer]
        env.update(self.extra_env)
        env.update(self.service_env.get(name, {}))
        return env

    def start(self, timeout: float = 60.0, stopping: threading.Event | None = None) -> None:
        """Start all three and wait until each reports SERVING; on failure stop what started."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in START_ORDER:
            host, port = split_target(self.targets[name])
            if not port_is_free(host, port):
                raise CliError(f"{name}: {host}:{port} is already in use (is the suite already up?)")
        try:
            for name in START_ORDER:
                service = self.services[name]
                with service.log_file.open("ab") as log:
                    # A session of their own: a terminal's Ctrl-C reaches giftctl, which stops them in order.
                    service.process = subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}"],
                        cwd=ROOT,
                        env=self.environment(name),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            deadline = time.monotonic() + timeout
            for name in START_ORDER:
                self._wait_serving(self.services[name], deadline, stopping)
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, service: ServiceProcess, deadline: float, stopping: threading.Event | None) -> None:
        with grpc.insecure_channel(service.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if stopping is not None and stopping.is_set():
                    raise CliError("interrupted while starting", exit_status=0)
                status = service.exit_status()
                if status is not None:
                    raise CliError(
                        f"{service.name} exited with status {status} while starting; its log "
                        f"({service.log_file}) ends:\n{service.log_tail()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise CliError(
                        f"{service.name} at {service.target} was not SERVING in time; see {service.log_file}"
                    )
                time.sleep(0.1)

    def exited(self) -> list[ServiceProcess]:
        return [s for s in self.services.values() if s.process is not None and s.exit_status() is not None]

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> dict[str, int]:
        """SIGTERM to each running service (gifting first, its callers' peers last), wait, kill on timeout."""
        for name in reversed(START_ORDER):
            service = self.services[name]
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        statuses = {}
        for name in reversed(START_ORDER):
            process = self.services[name].process
            if process is None:
                continue
            try:
                statuses[name] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[name] = process.wait()
        return statuses


def describe(suite: Suite) -> str:
    width = max(len(name) for name in SERVICES)
    lines = [
        f"  {name.ljust(width)}  {s.target:<21}  pid {s.pid:<7}  log {s.log_file}"
        for name, s in ((n, suite.services[n]) for n in SERVICES)
    ]
    return "\n".join(lines)


def run_until_signalled(
    suite: Suite,
    announce: Callable[[str], None] = print,
    poll_interval: float = 0.5,
) -> int:
    """`giftctl up`: start, report, wait for SIGINT/SIGTERM, stop. 0 on a requested stop."""
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        announce(f"starting wallet, payout and gifting (dev mode, data in {suite.data_dir}) ...")
        try:
            suite.start(stopping=stopping)
        except CliError as error:
            if error.exit_status == 0:  # a signal while starting: a requested stop
                announce("stopped")
                return 0
            raise
        announce("giftcoin is up:\n" + describe(suite))
        announce(f"traces: {suite.data_dir}/traces-<service>.jsonl (giftctl trace <gift-id>). Ctrl-C stops.")
        while not stopping.wait(poll_interval):
            dead = suite.exited()
            if dead:
                service = dead[0]
                suite.stop()
                raise CliError(
                    f"{service.name} exited unexpectedly with status {service.exit_status()}; its log "
                    f"({service.log_file}) ends:\n{service.log_tail()}"
                )
        announce("stopping ...")
        statuses = suite.stop()
        announce("stopped: " + ", ".join(f"{name} exit {code}" for name, code in statuses.items()))
        return 0
    finally:
        suite.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
