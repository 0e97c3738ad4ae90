"""The benchmark runs end to end, briefly, and its conservation check catches broken books.

Not a performance test: nothing here is timed or compared with a figure.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import pytest
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from sqlalchemy import update

from bench import conservation, options
from bench.commit_probe import CommitProbe
from bench.load import OK, drive, percentile
from bench.report import Report, Row
from bench.suite import Population, Suite, metadata_for, populate
from services.runtime.db import Database, make_engine
from services.runtime.scratch import ScratchDatabases
from services.wallet import storage as wallet_storage
from tests.support.databases import postgres_dsn

ROOT = Path(__file__).resolve().parents[2]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 99) == 0.0


def test_the_p99_verdict_is_given_only_at_half_the_spread_throughput_not_at_a_chosen_rate() -> None:
    with pytest.raises(SystemExit):
        options.parse(["--phases", "half"])  # half of nothing measured
    chosen = options.parse(["--phases", "half", "--half-rate", "450"])
    assert (chosen.phases, chosen.half_rate) == (("half",), 450.0)

    report = Report(options.parse([]), "SQLite", datetime.now(UTC))
    report.rows = [Row("suite: SendGift spread", per_second=900), Row("suite: SendGift at 450/s (half)", p99=80)]
    assert report.ratios()["p99_at_half_ms"] == 80
    report.rows[1] = Row("suite: SendGift at 300/s (fixed)", p99=40)
    assert "p99_at_half_ms" not in report.ratios()


def test_the_load_generator_counts_every_outcome_in_the_window() -> None:
    outcomes = iter([OK, "FAILED_PRECONDITION INSUFFICIENT_FUNDS"] * 10_000)

    async def call() -> str:
        await asyncio.sleep(0.001)
        return next(outcomes)

    result = asyncio.run(drive(call, concurrency=4, duration=0.3))
    assert result.completed == result.outcomes[OK] == len(result.latencies_ms) > 0
    assert result.errors == {
        "FAILED_PRECONDITION INSUFFICIENT_FUNDS": result.outcomes["FAILED_PRECONDITION INSUFFICIENT_FUNDS"]
    }


def test_a_short_run_prints_the_table_with_both_ratios_and_passes_conservation(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--sqlite", "--duration", "1", "--warmup", "0", "--concurrency", "4", "--viewers", "6", "--creators", "3",
            "--hot-viewers", "20", "--quiet-viewers", "4", "--idle-viewers", "30"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    for line in ("transport ceiling (gRPC echo)", "storage ceiling (python)", "suite: SendGift spread",
                 "suite: SendGift hot creator", "suite / transport ceiling", "suite / storage ceiling",
                 "peak memory (VmHWM)", "conservation                             PASS",
                 "feed: viewers held                       24 (20 on the hot stream)",
                 "feed: events missed / repeated           0 / 0 (PASS",
                 "idle viewers held by one replica         30,"):  # fmt: skip
        assert line in table, table
    report = json.loads(out.read_text())
    assert {"transport", "storage", "hot_drop", "p99_at_half_ms"} <= report["ratios"].keys()
    assert report["conservation"]["problems"] == []
    assert report["feed"]["viewers"] == 24 and report["feed"]["events_per_second"] > 0
    assert all(kib > 0 for kib in report["peak_memory_kib"].values())


@pytest.fixture(params=["sqlite", "postgres"])
def running_suite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Suite, Population]]:
    if request.param == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL not tested: GIFTCOIN_TEST_POSTGRES is not set")
    databases = ScratchDatabases(postgres_dsn() if request.param == "postgres" else "", tmp_path, prefix="gc_bench")
    suite = Suite({name: databases.new(name) for name in ("wallet", "payout", "gifting")}, tmp_path, {})
    try:
        suite.start()
        population = asyncio.run(populate(suite, viewers=3, creators=2, packs=1, concurrency=4))
        yield suite, population
    finally:
        suite.stop()
        databases.drop_all()


def _send_gifts(suite: Suite, population: Population, count: int) -> None:
    with grpc.insecure_channel(suite.target("gifting")) as channel:
        stub = gifting_pb2_grpc.GiftingServiceStub(channel)
        for i in range(count):
            request = gifting_pb2.SendGiftRequest(
                request_id=str(uuid.uuid4()),
                gift_id="doughnut",
                quantity=1,
                recipient_id=population.creators[i % 2],
                target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="live-1"),
            )
            sender = population.viewers[i % len(population.viewers)]
            reply = stub.SendGift(request, metadata=metadata_for(sender), timeout=30)
            assert reply.transfer.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED


def test_conservation_passes_after_gifts_and_fails_when_the_books_are_broken(
    running_suite: tuple[Suite, Population],
) -> None:
    suite, population = running_suite
    _send_gifts(suite, population, 4)
    sound = conservation.check(suite, population, settle_timeout=10)
    assert sound.ok, sound.problems
    assert (sound.completed, sound.coins_spent, sound.diamonds_held) == (4, 4 * 30, 4 * 15)

    # Coins appear from nowhere: a holder's stored balance no longer matches its entries.
    db = Database(make_engine(suite.urls["wallet"], pool_size=1))
    try:
        accounts = wallet_storage.ledger.accounts
        with db.transaction() as conn:
            conn.execute(
                update(accounts)
                .where(accounts.c.code.like(f"%{population.viewers[0]}%"), accounts.c.platform.is_(False))
                .where(accounts.c.balance > 0)
                .values(balance=accounts.c.balance + 7)
            )
    finally:
        db.dispose()
    broken = conservation.check(suite, population, settle_timeout=10)
    assert not broken.ok
    assert any(p.startswith("wallet ledger:") for p in broken.problems), broken.problems
    assert any(p.startswith("coins:") for p in broken.problems), broken.problems


def test_the_commit_probe_counts_the_commits_that_waited(tmp_path: Path) -> None:
    if not postgres_dsn():
        pytest.skip("PostgreSQL not tested: GIFTCOIN_TEST_POSTGRES is not set")
    databases = ScratchDatabases(postgres_dsn(), tmp_path, prefix="gc_bench")
    try:
        dsn = databases.libpq(databases.new("probe"))
        probe = CommitProbe(dsn, interval=0.005)
        probe.start()
        time.sleep(0.2)
        with psycopg.connect(dsn) as blocker:  # holds the table: the probe's next commit waits for it
            blocker.execute("LOCK TABLE commit_probe IN ACCESS EXCLUSIVE MODE")
            time.sleep(0.15)
            blocker.rollback()
        time.sleep(0.1)
        latency = probe.stop()
    finally:
        databases.drop_all()
    assert latency.commits > 10
    assert latency.stalls >= 1 and latency.max_ms >= 100
    assert latency.p50_ms < latency.max_ms
