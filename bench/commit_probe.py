"""How long a commit waits for the disk, measured beside the half phase (PostgreSQL).

A gift waits for five commits in a row (its record, the hold, the credit, the capture, its
completion), each flushed to the disk before it is answered (synchronous_commit, as money needs). A
commit stalled on the disk stalls every gift in flight with it, so the disk's slowest flushes show in
the suite's p99, whatever the suite does. The probe commits a one-row transaction in a database of
its own every `interval` seconds while the phase runs; the table prints how long those took, and how
many took over 50 ms (the p99 target).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg

from bench.load import percentile

STALL_MS = 50.0


@dataclass(frozen=True)
class CommitLatency:
    commits: int
    p50_ms: float
    p999_ms: float
    max_ms: float
    stalls: int  # commits over STALL_MS
    interval_ms: float

    def describe(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} ms, p99.9 {self.p999_ms:.1f} ms, max {self.max_ms:.0f} ms; "
            f"{self.stalls} of {self.commits} over {STALL_MS:.0f} ms (a one-row commit every "
            f"{self.interval_ms:.0f} ms, beside the suite)"
        )


class CommitProbe:
    """Commits a row every `interval` seconds in the database `dsn` (libpq), from a thread, until stopped."""

    def __init__(self, dsn: str, interval: float = 0.02) -> None:
        self.dsn = dsn
        self.interval = interval
        self._stop = threading.Event()
        self._latencies_ms: list[float] = []
        self._thread = threading.Thread(target=self._run, name="bench-commit-probe", daemon=True)
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("CREATE TABLE IF NOT EXISTS commit_probe (id bigserial PRIMARY KEY, at timestamptz)")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> CommitLatency:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()
        latencies = self._latencies_ms
        return CommitLatency(
            commits=len(latencies),
            p50_ms=percentile(latencies, 50),
            p999_ms=percentile(latencies, 99.9),
            max_ms=max(latencies, default=0.0),
            stalls=sum(1 for ms in latencies if ms > STALL_MS),
            interval_ms=self.interval * 1000,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            self._conn.execute("INSERT INTO commit_probe (at) VALUES (now())")
            self._latencies_ms.append((time.perf_counter() - started) * 1000)
