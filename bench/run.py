"""The benchmark's run: ceilings first, then the suite under load, then the conservation check.

Phases (each `--warmup` unmeasured seconds, then `--duration` measured ones, at `--concurrency`):
  transport  bare gRPC echo between this process and a server process (bench/echo.py)
  storage    the gift as one database transaction: Python threads, and pgbench on PostgreSQL
  spread     SendGift from random viewers to random creators, closed loop (the most it completes)
  hot        the same, with --hot-share % of gifts to one creator on one live stream
  half       SendGift at half the spread phase's throughput (fixed rate): latency under normal load
  feed       the hot phase at that rate without viewers, then with thousands connected (bench/feed.py)
  idle       thousands of viewers of streams without gifts: held by one replica, at what memory
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc

from bench import conservation, echo, feed, storage_ceiling
from bench.autovacuum import Autovacuum, server_autovacuums
from bench.commit_probe import CommitProbe
from bench.load import OK, PENDING, LoadResult, drive
from bench.options import Options, parse
from bench.report import FeedFigures, IdleFigures, Report, Row
from bench.suite import Population, Suite, cpu_seconds, free_port, metadata_for, populate, start_process
from services.runtime.errors import from_rpc_error
from services.runtime.scratch import ScratchDatabases

CEILING_COINS_PER_VIEWER = 10**12  # the ceilings' viewers never run out
# The set-up (wallets, purchases, creators) is not measured: a few calls at a time keep each service
# within a handful of database connections.
SETUP_CONCURRENCY = 16
SUITE_PHASES = {"spread", "hot", "half", "feed", "idle"}


def error_key(err: grpc.RpcError) -> str:
    """An error as "CODE REASON" (the ErrorInfo reason, when the status carries one)."""
    refusal = from_rpc_error(err)
    return f"{err.code().name} {refusal.reason}" if refusal else err.code().name


# --- transport ceiling ------------------------------------------------------------------------------


def transport_ceiling(options: Options, logdir: Path) -> LoadResult:
    port = free_port()
    proc = start_process("echo", "bench.echo", [str(port)], {}, logdir / "echo.log")
    request = gifting_pb2.SendGiftRequest(
        request_id=str(uuid.uuid4()),
        gift_id=options.gift_id,
        quantity=options.quantity,
        recipient_id="creator-0000",
        target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="live-creator-0000"),
    ).SerializeToString()
    metadata = metadata_for("viewer-00000")

    async def measure() -> LoadResult:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(echo.METHOD)
            await call(request, timeout=30, wait_for_ready=True)

            async def one() -> str:
                try:
                    await call(request, metadata=metadata, timeout=30)
                except grpc.RpcError as err:
                    return error_key(err)
                return OK

            def counters() -> dict[str, float]:
                return {"cpu echo server": cpu_seconds(proc.pid), "cpu load generator": cpu_seconds(os.getpid())}

            return await drive(one, options.concurrency, options.duration, options.warmup, counters=counters)

    try:
        return asyncio.run(measure())
    finally:
        proc.terminate()
        proc.wait(10)


# --- storage ceiling --------------------------------------------------------------------------------


def gift_amounts(options: Options) -> tuple[int, int]:
    """(coins, diamonds) of one send of the configured gift, at the default catalogue and share."""
    from services.gifting.model import DEFAULT_CATALOGUE, creator_diamonds

    prices = {gift_id: price for gift_id, _name, price in DEFAULT_CATALOGUE}
    if options.gift_id not in prices:
        raise SystemExit(f"--gift {options.gift_id}: not in the default catalogue ({', '.join(prices)})")
    coins = prices[options.gift_id] * options.quantity
    return coins, creator_diamonds(coins, 5000)


def storage_ceilings(
    options: Options, databases: ScratchDatabases, workdir: Path
) -> list[tuple[str, LoadResult | str]]:
    coins, diamonds = gift_amounts(options)
    clients = options.storage_clients
    rows: list[tuple[str, LoadResult | str]] = []
    url = databases.new("storage")
    db = storage_ceiling.prepare(url, options.viewers, options.creators, CEILING_COINS_PER_VIEWER, pool_size=clients)
    try:
        if databases.backend == "postgresql":
            pgbench = storage_ceiling.pgbench_path()
            if pgbench:
                result = storage_ceiling.run_pgbench(
                    pgbench,
                    url,
                    workdir,
                    clients,
                    options.duration,
                    options.viewers,
                    options.creators,
                    coins,
                    diamonds,
                )
                rows.append(("storage ceiling (pgbench)", result))
            else:
                rows.append(("storage ceiling (pgbench)", "pgbench not installed (postgresql-client): not measured"))
        python = storage_ceiling.run_python(
            db,
            clients,
            options.duration,
            options.warmup,
            options.viewers,
            options.creators,
            coins,
            diamonds,
        )
        rows.append(("storage ceiling (python)", python))
        broken = storage_ceiling.problems(db)
        if broken:
            raise RuntimeError(f"storage ceiling left a broken ledger: {broken[:3]}")
    finally:
        db.dispose()
    return rows


# --- the suite --------------------------------------------------------------------------------------


def suite_phase(
    options: Options,
    suite: Suite,
    population: Population,
    hot: bool = False,
    rate: float = 0.0,
    also_count: Callable[[], dict[str, float]] = dict,
) -> LoadResult:
    """SendGift from the population's viewers; `also_count` adds counters of other processes (viewers)."""
    rng = random.Random(7 if hot else 3)
    viewers = [metadata_for(v) for v in population.viewers]
    hot_creator = population.creators[0]
    live = gifting_pb2.TARGET_KIND_LIVE_STREAM

    def next_request() -> tuple[gifting_pb2.SendGiftRequest, tuple[tuple[str, str], ...]]:
        metadata = rng.choice(viewers)
        if hot and rng.randrange(100) < options.hot_share_percent:
            creator, stream = hot_creator, "live-hot"
        else:
            creator = rng.choice(population.creators[1:] if hot else population.creators)
            stream = f"live-{creator}"
        request = gifting_pb2.SendGiftRequest(
            request_id=str(uuid.uuid4()),
            gift_id=options.gift_id,
            quantity=options.quantity,
            recipient_id=creator,
            target=gifting_pb2.Target(kind=live, id=stream),
        )
        return request, metadata

    async def measure() -> LoadResult:
        async with grpc.aio.insecure_channel(suite.target("gifting")) as channel:
            stub = gifting_pb2_grpc.GiftingServiceStub(channel)

            async def one() -> str:
                request, metadata = next_request()
                try:
                    reply = await stub.SendGift(request, metadata=metadata, timeout=30)
                except grpc.RpcError as err:
                    return error_key(err)
                return OK if reply.transfer.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED else PENDING

            def counters() -> dict[str, float]:
                return {**suite.counters(), **also_count()}

            return await drive(one, options.concurrency, options.duration, options.warmup, rate, counters)

    return asyncio.run(measure())


def start_profilers(options: Options, suite: Suite) -> list[subprocess.Popen[bytes]]:
    """py-spy on every service for the phase about to run (CPU samples, collapsed stacks)."""
    if not options.profile_dir:
        return []
    py_spy = shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    out = Path(options.profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = str(max(1, round(options.warmup + options.duration)))
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(process.proc.pid),
                "--duration",
                seconds,
                "--rate",
                "200",
                "--gil",
                "--format",
                "raw",
                "--output",
                str(out / f"{name}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, process in suite.processes.items()
    ]


def run(options: Options) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="giftcoin-bench-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    databases = ScratchDatabases(options.postgres, workdir, prefix="gc_bench")
    try:
        version = databases.server_version()
    except Exception as error:
        print(f"bench: cannot reach the database: {error}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    report = Report(options, version, datetime.now(UTC))
    suite: Suite | None = None
    autovacuum: Autovacuum | None = None
    started = time.monotonic()
    try:
        if "transport" in options.phases:
            report.status("transport ceiling: gRPC echo ...")
            report.rows.append(Row.of("transport ceiling (gRPC echo)", transport_ceiling(options, logdir)))
        if "storage" in options.phases:
            report.status("storage ceiling: the gift as one transaction ...")
            for name, result in storage_ceilings(options, databases, workdir):
                report.rows.append(Row.of(name, result))
        if not SUITE_PHASES & set(options.phases):
            return _finish(report, options, workdir, databases, started)
        report.status("starting wallet, payout, gifting and adding viewers and creators ...")
        urls = {name: databases.new(name) for name in ("wallet", "payout", "gifting")}
        suite = Suite(urls, logdir, {})
        suite.start()
        population = asyncio.run(populate(suite, options.viewers, options.creators, options.packs, SETUP_CONCURRENCY))
        if options.warmup:
            # Fill the services' connection pools, statement caches and prepared statements first, so
            # that the first phase measured is not the only one to pay for them.
            report.status("suite: warming up ...")
            suite_phase(replace(options, duration=options.warmup, warmup=0), suite, population)
        if databases.backend == "postgresql" and not server_autovacuums(databases.dsn):
            autovacuum = Autovacuum([databases.libpq(url) for url in urls.values()])
            autovacuum.start()
            report.autovacuum = "off on the server: the bench applies its rules (after the warm-up, then each minute)"
        spread: LoadResult | None = None
        if "spread" in options.phases:
            report.status("suite: SendGift, gifts spread over creators ...")
            profilers = start_profilers(options, suite)
            spread = suite_phase(options, suite, population)
            for profiler in profilers:
                profiler.wait(60)
            report.rows.append(Row.of("suite: SendGift spread", spread, suite=True))
        if "hot" in options.phases:
            report.status(f"suite: SendGift, {options.hot_share_percent}% to one hot creator ...")
            hot = suite_phase(options, suite, population, hot=True)
            report.rows.append(Row.of(f"suite: SendGift hot creator {options.hot_share_percent}%", hot, suite=True))
        if "half" in options.phases and (options.half_rate or spread is not None):
            if options.half_rate:
                rate, label, why = options.half_rate, "fixed", "--half-rate"
            else:
                assert spread is not None
                rate, label, why = max(1.0, spread.per_second / 2), "half", "half the spread throughput"
            report.status(f"suite: SendGift at {rate:.0f}/s ({why}) ...")
            probe = CommitProbe(databases.libpq(databases.new("probe"))) if databases.backend == "postgresql" else None
            if probe is not None:
                probe.start()
            try:
                half = suite_phase(options, suite, population, rate=rate)
            finally:
                if probe is not None:
                    report.commits = probe.stop()
            report.rows.append(Row.of(f"suite: SendGift at {rate:.0f}/s ({label})", half, suite=True, rate=rate))
        if "feed" in options.phases and (options.half_rate or spread is not None):
            rate = options.half_rate or (spread.per_second / 2 if spread else 1.0)
            report.feed = feed_phase(options, suite, population, max(1.0, rate), report, logdir)
        if "idle" in options.phases and options.idle_viewers:
            report.status(f"suite: {options.idle_viewers} idle viewers ...")
            report.idle = idle_phase(options, suite, logdir)
        report.status("conservation check ...")
        report.memory_kib = suite.peak_memory_kib()
        report.alive = suite.alive()
        report.conservation = conservation.check(suite, population, since=report.started)
    except Exception as error:
        # The services' logs say why; keep them (the databases are dropped unless --keep).
        report.status(f"failed: {type(error).__name__}: {error}; the services' logs are in {logdir}")
        return 2
    finally:
        if autovacuum is not None:
            autovacuum.stop()
            report.autovacuum += f" ({autovacuum.runs} runs)"
        if suite is not None:
            suite.stop()
        if not options.keep:
            databases.drop_all()
    return _finish(report, options, workdir, databases, started)


def feed_phase(
    options: Options, suite: Suite, population: Population, rate: float, report: Report, logdir: Path
) -> FeedFigures:
    """The hot phase at `rate` without viewers, then with the viewers connected."""
    report.status(f"suite: SendGift hot at {rate:.0f}/s, no viewers ...")
    alone = suite_phase(options, suite, population, hot=True, rate=rate)
    report.rows.append(Row.of(f"{feed.FEED_PHASE} {rate:.0f}/s, no viewers", alone, suite=True, rate=rate))
    quiet_streams = [f"live-{creator}" for creator in population.creators[1:]]
    plan = [(feed.HOT_STREAM, options.hot_viewers)]
    plan += [
        (s, options.quiet_viewers // len(quiet_streams) + (i < options.quiet_viewers % len(quiet_streams)))
        for i, s in enumerate(quiet_streams)
    ]
    viewers = sum(count for _, count in plan)
    report.status(f"suite: connecting {viewers} viewers ...")
    gifting_pid = suite.processes["gifting"].proc.pid
    before = feed.resident_kib(gifting_pid)
    # Viewers start from the heads read now: one whose stream gets no gift is still checked against it.
    starts = feed.feed_heads(suite.urls["gifting"], [s for s, _ in plan])
    audience = feed.connect(suite, [(s, n) for s, n in plan if n], logdir, starts)
    try:
        grown = feed.resident_kib(gifting_pid) - before
        report.status(f"suite: SendGift hot at {rate:.0f}/s, {audience.held} viewers ...")
        window_start = time.time() + options.warmup
        watched = suite_phase(options, suite, population, hot=True, rate=rate, also_count=audience.cpu)
        window = (window_start, window_start + options.duration)
        report.rows.append(
            Row.of(f"{feed.FEED_PHASE} {rate:.0f}/s, {audience.held} viewers", watched, suite=True, rate=rate)
        )
        feed.wait_for_quiet()
        feed.collect(audience, feed.feed_heads(suite.urls["gifting"], [s for s, _ in plan]), window)
    finally:
        feed.disconnect(audience)
    return FeedFigures(
        viewers=audience.held,
        hot_viewers=options.hot_viewers,
        events_per_second=audience.events_in_window / options.duration,
        lag_p50_ms=audience.lag_percentile(50),
        lag_p99_ms=audience.lag_percentile(99),
        missed=audience.missed,
        repeated=audience.repeated,
        kib_per_thousand_viewers=grown * 1000 / max(1, audience.held),
        p99_without_ms=alone.percentile(99),
        p99_with_ms=watched.percentile(99),
    )


def idle_phase(options: Options, suite: Suite, logdir: Path) -> IdleFigures:
    """Viewers of streams that get no gifts, a hundred to a stream: how many one replica holds, at what memory."""
    gifting_pid = suite.processes["gifting"].proc.pid
    before = feed.resident_kib(gifting_pid)
    streams = max(1, options.idle_viewers // 100)
    plan = [
        (f"live-idle-{i:04d}", options.idle_viewers // streams + (i < options.idle_viewers % streams))
        for i in range(streams)
    ]
    audience = feed.connect(suite, plan, logdir)
    try:
        grown = feed.resident_kib(gifting_pid) - before
    finally:
        feed.disconnect(audience)
    return IdleFigures(viewers=audience.held, kib_per_viewer=grown / max(1, audience.held))


def _finish(report: Report, options: Options, workdir: Path, databases: ScratchDatabases, started: float) -> int:
    """Print the table (and the JSON), clean up; 0 unless conservation failed or a service died."""
    report.elapsed = time.monotonic() - started
    print(report.render(), flush=True)
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n")
    if options.keep:
        print(f"kept: {workdir} (logs, SQLite files); PostgreSQL databases: {', '.join(databases.created) or '-'}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    broken = report.conservation is not None and not report.conservation.ok
    return 1 if broken or not report.feed_sound or not all(report.alive.values()) else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))
