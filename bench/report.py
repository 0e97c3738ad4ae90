"""The benchmark's one table, its ratios against the ceilings, and the same as JSON."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from bench.commit_probe import CommitLatency
from bench.conservation import Conservation
from bench.load import LoadResult
from bench.options import Options

# The targets (PostgreSQL, this 2-core machine, load generator included).
TRANSPORT_RATIO_TARGET = 0.15
TRANSPORT_RATIO_GOAL = 0.25
P99_AT_HALF_TARGET_MS = 50.0
HOT_DROP_LIMIT = 0.20
# Issue 17's feed targets.
IDLE_KIB_PER_VIEWER_GOAL = 30.0
FEED_LAG_P99_TARGET_MS = 1000.0
FEED_P99_GROWTH_LIMIT = 0.20  # SendGift p99 with the viewers, over the same phase without


@dataclass
class FeedFigures:
    """The feed phase: the hot-creator load with thousands of viewers connected."""

    viewers: int  # held, every one live
    hot_viewers: int
    events_per_second: float  # delivered to viewers, all of them together
    lag_p50_ms: float  # a completed gift's complete_time to its receipt by a viewer
    lag_p99_ms: float
    missed: int  # checked per viewer by sequence
    repeated: int
    kib_per_thousand_viewers: float  # gifting's resident memory grown by connecting them
    p99_without_ms: float  # SendGift, the same phase without viewers
    p99_with_ms: float

    @property
    def p99_growth(self) -> float:
        return self.p99_with_ms / self.p99_without_ms - 1 if self.p99_without_ms else 0.0


@dataclass
class IdleFigures:
    viewers: int
    kib_per_viewer: float


@dataclass
class Row:
    name: str
    per_second: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    note: str = ""
    suite: bool = False
    rate: float = 0.0
    used_per_op: dict[str, float] = field(default_factory=dict)  # see LoadResult.used

    @classmethod
    def of(cls, name: str, result: LoadResult | str, suite: bool = False, rate: float = 0.0) -> Row:
        if isinstance(result, str):
            return cls(name, note=result)
        return cls(
            name,
            result.per_second,
            result.percentile(50),
            result.percentile(95),
            result.percentile(99),
            result.completed,
            result.errors,
            suite=suite,
            rate=rate,
            used_per_op=result.used_per_op(),
        )


def _machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "? GiB"
    return f"{cpus} CPUs, {memory}"


class Report:
    def __init__(self, options: Options, database: str, started: datetime) -> None:
        self.options = options
        self.database = database
        self.started = started
        self.machine = _machine()
        self.rows: list[Row] = []
        self.memory_kib: dict[str, int] = {}
        self.alive: dict[str, bool] = {}
        self.conservation: Conservation | None = None
        self.autovacuum = ""  # how the suite's databases were kept analyzed, when the server does not
        self.commits: CommitLatency | None = None  # the disk's commit latency beside the half phase
        self.feed: FeedFigures | None = None
        self.idle: IdleFigures | None = None
        self.elapsed = 0.0

    def status(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    def _row(self, prefix: str) -> Row | None:
        return next((r for r in self.rows if r.name.startswith(prefix) and not r.note), None)

    def ratios(self) -> dict[str, float]:
        """The suite's spread throughput over each ceiling; the hot phase's drop; p99 at half load."""
        out: dict[str, float] = {}
        spread, hot, half = (
            self._row("suite: SendGift spread"),
            self._row("suite: SendGift hot"),
            self._row("suite: SendGift at"),
        )
        if half and not half.name.endswith("(half)"):
            half = None  # a rate of --half-rate: not the target's half of the maximum
        transport = self._row("transport ceiling")
        storage = self._row("storage ceiling (pgbench)") or self._row("storage ceiling (python)")
        if spread and transport and transport.per_second:
            out["transport"] = spread.per_second / transport.per_second
        if spread and storage and storage.per_second:
            out["storage"] = spread.per_second / storage.per_second
        if spread and hot and spread.per_second:
            out["hot_drop"] = 1 - hot.per_second / spread.per_second
        if half:
            out["p99_at_half_ms"] = half.p99
        return out

    def render(self) -> str:
        o = self.options
        lines = [
            "",
            f"giftcoin bench  {self.started:%Y-%m-%d %H:%M} UTC  {self.machine}  {self.database}",
            f"{o.duration:g} s per phase (+{o.warmup:g} s warm-up), concurrency {o.concurrency}"
            + (f" (storage ceiling: {o.storage_clients} clients), " if "storage" in o.phases else ", ")
            + f"{o.viewers} viewers, {o.creators} creators, gift {o.gift_id} x{o.quantity}, "
            "services on their default settings; load generator on the same machine",
            "",
        ]
        header = f"{'phase':<40} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'done':>8}  errors"
        lines += [header, "-" * len(header)]
        for r in self.rows:
            if r.note:
                lines.append(f"{r.name:<40} {r.note}")
                continue
            errors = ", ".join(f"{k} x{v}" for k, v in r.errors.items()) or "none"
            figures = f"{r.per_second:>8.0f} {r.p50:>8.1f} {r.p95:>8.1f} {r.p99:>8.1f} {r.completed:>8}"
            lines.append(f"{r.name:<40} {figures}  {errors}")
        lines.append("-" * len(header))
        for r in self.rows:
            phase = r.name.split(" (")[0].replace("suite: SendGift ", "")
            cpu = {k[4:]: v * 1000 for k, v in r.used_per_op.items() if k.startswith("cpu ")}
            transactions = {k[3:]: v for k, v in r.used_per_op.items() if k.startswith("tx ")}
            if cpu:
                used = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
                lines.append(f"{'CPU ms per call, ' + phase:<40} {used}")
            if transactions:
                used = ", ".join(f"{name} {n:.2f}" for name, n in transactions.items())
                lines.append(f"{'DB transactions per gift, ' + phase:<40} {used}")
        ratios = self.ratios()
        storage_name = "pgbench" if self._row("storage ceiling (pgbench)") else "python"
        if "transport" in ratios:
            verdict = "meets" if ratios["transport"] >= TRANSPORT_RATIO_TARGET else "BELOW"
            lines.append(
                f"{'suite / transport ceiling':<40} {ratios['transport']:>8.3f}  "
                f"({verdict} the {TRANSPORT_RATIO_TARGET} target; goal {TRANSPORT_RATIO_GOAL})"
            )
        if "storage" in ratios:
            lines.append(f"{f'suite / storage ceiling ({storage_name})':<40} {ratios['storage']:>8.3f}")
        if "hot_drop" in ratios:
            verdict = "within" if ratios["hot_drop"] <= HOT_DROP_LIMIT else "BEYOND"
            lines.append(
                f"{'hot-creator drop vs spread':<40} {ratios['hot_drop'] * 100:>7.0f}%  "
                f"({verdict} the {HOT_DROP_LIMIT * 100:.0f}% limit)"
            )
        if "p99_at_half_ms" in ratios:
            verdict = "under" if ratios["p99_at_half_ms"] < P99_AT_HALF_TARGET_MS else "OVER"
            lines.append(
                f"{'p99 at half the spread throughput':<40} {ratios['p99_at_half_ms']:>6.1f}ms  "
                f"({verdict} the {P99_AT_HALF_TARGET_MS:.0f} ms target)"
            )
        if self.commits is not None:
            lines.append(f"{'commits on the disk, half phase':<40} {self.commits.describe()}")
        lines += self._feed_lines()
        if self.memory_kib:
            memory = ", ".join(f"{name} {kib / 1024:.0f} MiB" for name, kib in self.memory_kib.items())
            lines.append(f"{'peak memory (VmHWM)':<40} {memory}")
        if self.autovacuum:
            lines.append(f"{'autovacuum':<40} {self.autovacuum}")
        down = [name for name, up in self.alive.items() if not up]
        if down:
            lines.append(f"{'services that died during the run':<40} {', '.join(down)}")
        c = self.conservation
        if c is not None:
            verdict = "PASS" if c.ok else "FAIL"
            lines.append(
                f"{'conservation':<40} {verdict}: {c.completed} gifts completed, {c.failed} failed; "
                f"coins spent {c.coins_spent} = completed {c.coins_of_completed} = captured {c.coins_captured}; "
                f"diamonds held {c.diamonds_held} = owed {c.diamonds_of_completed} = credited {c.diamonds_credited}; "
                f"no hold HELD, no gift pending, both ledgers sound; the reconciler checked {c.reconciled} gifts, "
                "holds and credits through the RPCs: no discrepancy"
                if c.ok
                else f"{'conservation':<40} FAIL: " + "; ".join(c.problems[:10])
            )
        lines.append(f"{'whole run':<40} {self.elapsed:.0f} s")
        return "\n".join(lines)

    def _feed_lines(self) -> list[str]:
        lines = []
        f = self.feed
        if f is not None:
            sound = f.missed == 0 and f.repeated == 0
            lag = "under" if f.lag_p99_ms < FEED_LAG_P99_TARGET_MS else "OVER"
            growth = "within" if f.p99_growth <= FEED_P99_GROWTH_LIMIT else "BEYOND"
            lines += [
                f"{'feed: viewers held':<40} {f.viewers} ({f.hot_viewers} on the hot stream)",
                f"{'feed: events delivered':<40} {f.events_per_second:>8.0f} /s, all viewers together",
                f"{'feed: fan-out lag':<40} p50 {f.lag_p50_ms:.0f} ms, p99 {f.lag_p99_ms:.0f} ms "
                f"({lag} the {FEED_LAG_P99_TARGET_MS:.0f} ms target)",
                f"{'feed: events missed / repeated':<40} {f.missed} / {f.repeated} "
                f"({'PASS' if sound else 'FAIL'}: checked per viewer by sequence)",
                f"{'feed: gifting memory per 1000 viewers':<40} {f.kib_per_thousand_viewers / 1024:.1f} MiB",
                f"{'feed: SendGift p99 without / with':<40} {f.p99_without_ms:.1f} / {f.p99_with_ms:.1f} ms "
                f"({f.p99_growth * 100:+.0f}%: {growth} the {FEED_P99_GROWTH_LIMIT * 100:.0f}% limit)",
            ]
        if self.idle is not None:
            i = self.idle
            verdict = "within" if i.kib_per_viewer <= IDLE_KIB_PER_VIEWER_GOAL else "OVER"
            lines.append(
                f"{'idle viewers held by one replica':<40} {i.viewers}, {i.kib_per_viewer:.1f} KiB each "
                f"({verdict} the {IDLE_KIB_PER_VIEWER_GOAL:.0f} KiB goal)"
            )
        return lines

    @property
    def feed_sound(self) -> bool:
        """No viewer missed or saw twice any event (True when the feed phase did not run)."""
        return self.feed is None or (self.feed.missed == 0 and self.feed.repeated == 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "started": self.started.isoformat(),
            "machine": self.machine,
            "database": self.database,
            "options": {k: v for k, v in asdict(self.options).items() if k != "postgres"},
            "rows": [asdict(r) for r in self.rows],
            "ratios": self.ratios(),
            "peak_memory_kib": self.memory_kib,
            "conservation": asdict(self.conservation) if self.conservation else None,
            "autovacuum": self.autovacuum,
            "commit_latency": asdict(self.commits) if self.commits else None,
            "feed": asdict(self.feed) if self.feed else None,
            "idle": asdict(self.idle) if self.idle else None,
            "elapsed_seconds": self.elapsed,
        }
