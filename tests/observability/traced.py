"""The suite as three processes writing their spans to files of their own, for the trace tests."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import ServiceProcess


@contextmanager
def traced_suite(
    directory: Path, env: Mapping[str, str] | None = None, graceful: bool = True
) -> Iterator[dict[str, ServiceProcess]]:
    """wallet, payout and gifting on SQLite in `directory`, each exporting its spans to
    `directory/<service>.jsonl` (GIFTCOIN_TRACE_EXPORTER=file), with `env` added; stopped at the end
    with SIGTERM (`graceful`) or SIGKILL."""

    def traced(service: str) -> dict[str, str]:
        trace_file = str(directory / f"{service}.jsonl")
        return {"GIFTCOIN_TRACE_EXPORTER": "file", "GIFTCOIN_TRACE_FILE": trace_file, **(env or {})}

    wallet = ServiceProcess("wallet", f"sqlite:///{directory}/wallet.db", traced("wallet"), log_dir=directory)
    payout = ServiceProcess("payout", f"sqlite:///{directory}/payout.db", traced("payout"), log_dir=directory)
    gifting = ServiceProcess(
        "gifting",
        f"sqlite:///{directory}/gifting.db",
        {
            **traced("gifting"),
            "GIFTCOIN_GIFTING_WALLET_TARGET": wallet.target,
            "GIFTCOIN_GIFTING_PAYOUT_TARGET": payout.target,
        },
        log_dir=directory,
    )
    started = []
    try:
        for process in (wallet, payout, gifting):
            started.append(process.start())
        yield {"wallet": wallet, "payout": payout, "gifting": gifting}
    finally:
        for process in reversed(started):
            if graceful:
                process.terminate()
            else:
                process.kill()


def read_spans(directory: Path) -> list[dict]:
    """Every span the services in `directory` exported so far (not the metrics beside them)."""
    found = []
    for path in directory.glob("*.jsonl"):
        if not path.name.startswith("metrics-"):
            found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return found
