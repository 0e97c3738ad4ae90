"""The system under test: wallet, payout and gifting as three processes, and the people who use them.

Each service runs as `python -m services.<name>` (migrating its database on start), in dev mode, on
a free port, logging to the run's directory. Viewers get a wallet and coins bought with sandbox
receipts, creators register with payout, all through the public RPCs, before anything is timed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from giftcoin.common.v1 import common_pb2
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from services.giftctl.suite import free_port
from services.runtime.auth import dev_token, user
from services.wallet.receipts import mint_receipt

ROOT = Path(__file__).resolve().parents[1]
START_ORDER = ("wallet", "payout", "gifting")  # gifting calls the other two
PACKAGE = "coins_17500"
PACKAGE_COINS = 17_500
ADULT = common_pb2.Date(year=1990, month=6, day=15)
TOKEN_TTL_SECONDS = 3600  # the longest life the services accept (GIFTCOIN_JWT_MAX_LIFETIME_SECONDS)


def metadata_for(user_id: str) -> tuple[tuple[str, str], ...]:
    """What the edge passes for a signed-in user: a bearer token for user:<id>."""
    return (("authorization", f"Bearer {dev_token(user(user_id), TOKEN_TTL_SECONDS)}"),)


def peak_memory_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB; 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def postgres_cpu_seconds(database_names: list[str]) -> float:
    """CPU time of the PostgreSQL backends serving these databases (found by their process titles)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and any(f" {name} " in title for name in database_names):
            total += cpu_seconds(int(entry.name))
    return total


def transactions(url: str, databases: dict[str, str]) -> dict[str, int]:
    """Transactions committed or rolled back so far in each database (PostgreSQL's statistics, which
    backends report about once a second under load: good over a window of several seconds)."""
    admin = make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = ANY(%s)",
            (list(databases.values()),),
        ).fetchall()
    count = {datname: int(n) for datname, n in rows}
    return {name: count.get(database, 0) for name, database in databases.items()}


@dataclass
class Process:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_file: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_process(
    name: str, module: str, args: list[str], env: dict[str, str], log_file: Path
) -> subprocess.Popen[bytes]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen")])
    environment.update(env)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{target} exited with {proc.returncode} while starting")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout}s")


class Suite:
    """The three services as processes, each on its own database, on their default settings (but
    where they listen and what they call)."""

    def __init__(self, urls: dict[str, str], logdir: Path, extra_env: dict[str, str]) -> None:
        self.urls = urls
        self.logdir = logdir
        self.extra_env = extra_env
        self.processes: dict[str, Process] = {}

    def start(self) -> None:
        ports = {name: free_port() for name in START_ORDER}
        for name in START_ORDER:
            upper = name.upper()
            env = {
                "GIFTCOIN_DEV_MODE": "true",
                f"GIFTCOIN_{upper}_PORT": str(ports[name]),
                f"GIFTCOIN_{upper}_DATABASE_URL": self.urls[name],
                "GIFTCOIN_SHUTDOWN_GRACE_SECONDS": "5",
                "GIFTCOIN_GIFTING_WALLET_TARGET": f"127.0.0.1:{ports['wallet']}",
                "GIFTCOIN_GIFTING_PAYOUT_TARGET": f"127.0.0.1:{ports['payout']}",
                **self.extra_env,
            }
            log_file = self.logdir / f"{name}.log"
            proc = start_process(name, f"services.{name}", [], env, log_file)
            self.processes[name] = Process(name, ports[name], proc, log_file)
            wait_serving(self.processes[name].target, proc)

    def target(self, name: str) -> str:
        return self.processes[name].target

    def peak_memory_kib(self) -> dict[str, int]:
        return {name: peak_memory_kib(p.proc.pid) for name, p in self.processes.items()}

    def counters(self) -> dict[str, float]:
        """CPU seconds used so far by each service, this process (the load generator) and the
        PostgreSQL backends of the suite's databases; and each PostgreSQL database's transactions."""
        used = {f"cpu {name}": cpu_seconds(p.proc.pid) for name, p in self.processes.items()}
        used["cpu load generator"] = cpu_seconds(os.getpid())
        databases = {
            name: make_url(url).database or "" for name, url in self.urls.items() if url.startswith("postgres")
        }
        if databases:
            used["cpu postgres"] = postgres_cpu_seconds(list(databases.values()))
            url = next(iter(self.urls.values()))
            used.update({f"tx {name}": float(n) for name, n in transactions(url, databases).items()})
        return used

    def alive(self) -> dict[str, bool]:
        return {name: p.proc.poll() is None for name, p in self.processes.items()}

    def stop(self) -> None:
        for name in reversed(START_ORDER):
            if name in self.processes:
                self.processes[name].stop()


@dataclass(frozen=True)
class Population:
    viewers: list[str]
    creators: list[str]
    coins_per_viewer: int

    @property
    def coins_bought(self) -> int:
        return len(self.viewers) * self.coins_per_viewer


def viewer_id(i: int) -> str:
    return f"viewer-{i:05d}"


def creator_id(i: int) -> str:
    return f"creator-{i:04d}"


async def populate(suite: Suite, viewers: int, creators: int, packs: int, concurrency: int) -> Population:
    """Open the viewers' wallets and buy their coins, register the creators: all through the public RPCs."""
    population = Population(
        [viewer_id(i) for i in range(viewers)], [creator_id(i) for i in range(creators)], packs * PACKAGE_COINS
    )
    async with (
        grpc.aio.insecure_channel(suite.target("wallet")) as wallet_channel,
        grpc.aio.insecure_channel(suite.target("payout")) as payout_channel,
    ):
        wallet = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        payout = payout_pb2_grpc.PayoutServiceStub(payout_channel)
        gate = asyncio.Semaphore(concurrency)

        async def viewer(user_id: str) -> None:
            async with gate:
                me = metadata_for(user_id)
                opened = wallet_pb2.OpenWalletRequest(
                    request_id=str(uuid.uuid4()), date_of_birth=ADULT, country_code="US"
                )
                await wallet.OpenWallet(opened, metadata=me, timeout=30)
                for _ in range(packs):
                    receipt = wallet_pb2.Receipt(store="sandbox", payload=mint_receipt(PACKAGE, user_id=user_id))
                    purchase = wallet_pb2.PurchaseCoinsRequest(
                        request_id=str(uuid.uuid4()), package_id=PACKAGE, receipt=receipt
                    )
                    await wallet.PurchaseCoins(purchase, metadata=me, timeout=30)

        async def creator(user_id: str) -> None:
            async with gate:
                request = payout_pb2.RegisterCreatorRequest(
                    request_id=str(uuid.uuid4()), date_of_birth=ADULT, country_code="US"
                )
                await payout.RegisterCreator(request, metadata=metadata_for(user_id), timeout=30)

        await asyncio.gather(*(viewer(v) for v in population.viewers), *(creator(c) for c in population.creators))
    return population
