"""The benchmark's command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

POSTGRES_ENV = "GIFTCOIN_TEST_POSTGRES"
PHASES = ("transport", "storage", "spread", "hot", "half", "feed", "idle")
# The storage ceiling's clients (pgbench's, the Python variant's threads) at most: PostgreSQL's default
# of 100 connections is the limit, and on a small machine more clients only queue on its CPUs and the
# hot rows, which lowers the ceiling instead of raising it.
STORAGE_CLIENTS_MAX = 32


@dataclass(frozen=True)
class Options:
    postgres: str  # a DSN; empty means SQLite
    duration: float  # seconds measured per phase
    warmup: float  # seconds run, not measured, before each phase
    concurrency: int  # calls in flight at once, in every phase
    viewers: int
    creators: int
    hot_share_percent: int  # of the gifts, in the hot phase, to the one hot creator and stream
    gift_id: str
    quantity: int
    packs: int  # coins_17500 packages each viewer buys before the run
    phases: tuple[str, ...]
    json_path: str
    keep: bool
    profile_dir: str  # py-spy profiles of each service during the spread phase go here
    half_rate: float  # the half phase's gifts/s; 0: half the spread phase's throughput
    hot_viewers: int  # the feed phase's viewers of the hot stream
    quiet_viewers: int  # the feed phase's viewers of the other creators' streams
    idle_viewers: int  # the idle phase's viewers, of streams without gifts

    @property
    def storage_clients(self) -> int:
        return min(self.concurrency, STORAGE_CLIENTS_MAX)

    @property
    def backend(self) -> str:
        return "postgresql" if self.postgres else "sqlite"


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Drive wallet, payout and gifting (three processes) with concurrent SendGift calls and compare "
            "the throughput with two ceilings measured in the same run: a bare gRPC echo (transport) and the "
            "gift as one database transaction (storage). Ends with a conservation check."
        ),
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(POSTGRES_ENV, ""),
        metavar="DSN",
        help=f"run on PostgreSQL (fresh databases, dropped after); default ${POSTGRES_ENV}, else SQLite",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite even when a DSN is set in the environment")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each phase")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="calls in flight at once (default 128: enough to keep the suite's CPUs busy, so that the spread "
        "phase measures the most it completes; the transport ceiling runs at the same)",
    )
    parser.add_argument("--viewers", type=int, default=200, help="senders (default 200)")
    parser.add_argument("--creators", type=int, default=20, help="recipients (default 20)")
    parser.add_argument(
        "--hot-share",
        type=int,
        default=90,
        metavar="PERCENT",
        help="in the hot phase, this share of gifts goes to one creator on one live stream (default 90)",
    )
    parser.add_argument("--gift", default="doughnut", help="gift sent (default doughnut: 30 coins, 15 diamonds)")
    parser.add_argument("--quantity", type=int, default=1, help="gifts per send (a combo), default 1")
    parser.add_argument("--packs", type=int, default=1, help="17,500-coin packages each viewer buys (default 1)")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, in this order: {','.join(PHASES)} (default all); "
        "half and feed run at half the spread phase's throughput and need spread (or --half-rate)",
    )
    parser.add_argument(
        "--hot-viewers", type=int, default=2000, help="feed phase: viewers of the hot stream (default 2000)"
    )
    parser.add_argument(
        "--quiet-viewers",
        type=int,
        default=1000,
        help="feed phase: viewers spread over the other creators' streams (default 1000)",
    )
    parser.add_argument(
        "--idle-viewers", type=int, default=10_000, help="idle phase: viewers of streams without gifts (default 10000)"
    )
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs (printed at the end)")
    parser.add_argument(
        "--half-rate",
        type=float,
        default=0.0,
        metavar="PER_S",
        help="run the half phase at this many gifts/s instead of half the spread throughput, to compare "
        "latency at one rate across changes (no verdict on the 50 ms target then)",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="record each service with py-spy (on PATH) during the spread phase: DIR/<service>.txt, collapsed stacks",
    )
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    for needs_rate in ("half", "feed"):
        if needs_rate in phases and "spread" not in phases and not args.half_rate:
            parser.error(f"the {needs_rate} phase runs at half the spread phase's throughput: add spread")
    for name in ("duration", "concurrency", "viewers", "creators", "quantity", "packs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if min(args.hot_viewers, args.quiet_viewers, args.idle_viewers) < 0:
        parser.error("--hot-viewers, --quiet-viewers and --idle-viewers must not be negative")
    if args.warmup < 0 or not 0 <= args.hot_share <= 100:
        parser.error("--warmup must not be negative and --hot-share must be 0..100")
    if args.creators < 2 and "hot" in phases:
        parser.error("the hot phase needs at least 2 creators")
    return Options(
        postgres="" if args.sqlite else args.postgres,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        viewers=args.viewers,
        creators=args.creators,
        hot_share_percent=args.hot_share,
        gift_id=args.gift,
        quantity=args.quantity,
        packs=args.packs,
        phases=tuple(p for p in PHASES if p in phases),
        json_path=args.json,
        keep=args.keep,
        profile_dir=args.profile,
        half_rate=args.half_rate,
        hot_viewers=args.hot_viewers,
        quiet_viewers=args.quiet_viewers,
        idle_viewers=args.idle_viewers,
    )
