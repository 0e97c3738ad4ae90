"""wallet, payout and gifting as separate processes (`python -m services.<name>`), on this test's backend."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from services.gifting.ports import FAILPOINT_EXIT_CODE
from services.reconciler import RECONCILER, Report, Window, check
from services.runtime.auth import dev_token
from tests.gifting.harness import Clients, value_problems
from tests.support.processes import ServiceProcess, free_port

# Short leases and retries, so that recovery after a crash takes seconds, not the production minute.
FAST_GIFTING = {
    "GIFTCOIN_GIFTING_LEASE_SECONDS": "1",
    "GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "450",
    "GIFTCOIN_GIFTING_RECOVERY_INTERVAL_MS": "200",
    "GIFTCOIN_GIFTING_RETRY_MAX_SECONDS": "1",
}


@dataclass
class Processes:
    """The three services as processes; gifting may run as several replicas on one database."""

    wallet: ServiceProcess
    payout: ServiceProcess
    gifting_url: str
    log_dir: Path
    gifting_port: int = field(default_factory=free_port)
    replicas: list[ServiceProcess] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def gifting(self, port: int | None = None, **env: str) -> ServiceProcess:
        """A gifting replica (not started) on the shared database, calling this wallet and payout."""
        replica = ServiceProcess(
            "gifting",
            self.gifting_url,
            env={
                "GIFTCOIN_GIFTING_WALLET_TARGET": self.wallet.target,
                "GIFTCOIN_GIFTING_PAYOUT_TARGET": self.payout.target,
                **FAST_GIFTING,
                **env,
            },
            port=port or self.gifting_port,
            log_dir=self.log_dir,
        )
        self.replicas.append(replica)
        return replica

    def clients(self, gifting: ServiceProcess) -> Clients:
        return Clients(self.wallet.target, self.payout.target, gifting.target)

    def problems(self) -> list[str]:
        return value_problems(self.wallet.database_url, self.payout.database_url, self.gifting_url)

    def reconcile(self) -> Report:
        """The reconciler's view of everything since the processes started, through the services' RPCs."""
        targets = {
            "wallet": self.wallet.target,
            "payout": self.payout.target,
            "gifting": f"127.0.0.1:{self.gifting_port}",
        }
        now = datetime.now(UTC)
        return check(targets, Window(self.started - timedelta(seconds=1), now), now, partial(dev_token, RECONCILER))

    def stop(self) -> None:
        for process in [*self.replicas, self.payout, self.wallet]:
            process.kill()


def die_at_failpoint(replica: ServiceProcess, timeout: float = 60) -> None:
    """Run a replica armed with a failpoint until it exits there (it may do so while starting up)."""
    with contextlib.suppress(RuntimeError):  # it may die while starting up, recovering a gift: the point
        replica.start()
    assert replica.proc is not None
    assert replica.proc.wait(timeout) == FAILPOINT_EXIT_CODE


@pytest.fixture
def processes(make_database: Callable[[str], str], tmp_path: Path) -> Iterator[Processes]:
    wallet = ServiceProcess("wallet", make_database("wallet"), log_dir=tmp_path)
    payout = ServiceProcess("payout", make_database("payout"), log_dir=tmp_path)
    running = Processes(wallet.start(), payout.start(), make_database("gifting"), tmp_path)
    try:
        yield running
    finally:
        running.stop()
