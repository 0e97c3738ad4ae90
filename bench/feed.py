"""The live feed under load: viewers held by one gifting replica, and what they see.

`feed`: the hot-creator load at a fixed rate, first without viewers, then with viewers connected
(`--hot-viewers` on the hot stream, `--quiet-viewers` spread over quiet streams of other creators):
viewers held, events delivered per second, fan-out lag (gift completed -> received by a viewer),
events missed or repeated (checked per viewer by sequence, must be 0), gifting's memory per thousand
viewers, and SendGift's p99 with and without the viewers.

`idle`: `--idle-viewers` viewers of streams that receive no gifts, to see that one replica holds
them, and what each costs it in memory.

Viewers run in processes of their own (bench/viewers.py), at most VIEWERS_PER_PROCESS each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from bench.suite import ROOT, Suite, cpu_seconds
from services.runtime.db import Database, make_engine

VIEWERS_PER_PROCESS = 1000
CHANNELS_PER_PROCESS = 10
EVENTS_PER_RESPONSE = 500
HOT_STREAM = "live-hot"
FEED_PHASE = "feed: SendGift hot"


def resident_kib(pid: int) -> int:
    """The process's resident memory now (VmRSS), in KiB; 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Audience:
    """Viewer processes connected to one gifting replica, and what they saw."""

    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    held: int = 0
    events: int = 0
    events_in_window: int = 0
    missed: int = 0
    repeated: int = 0
    lags_ms: dict[int, int] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        """CPU seconds the viewer processes used so far (a counter of the phase they watch)."""
        return {"cpu viewers": sum(cpu_seconds(p.pid) for p in self.processes)}

    def lag_percentile(self, p: float) -> float:
        total = sum(self.lags_ms.values())
        if not total:
            return 0.0
        rank, seen = p / 100 * total, 0
        for ms in sorted(self.lags_ms):
            seen += self.lags_ms[ms]
            if seen >= rank:
                return float(ms)
        return float(max(self.lags_ms))


def connect(suite: Suite, plan: list[tuple[str, int]], logdir: Path, after: dict[str, int] | None = None) -> Audience:
    """Start viewer processes for `plan` (stream, viewers), each viewer following its stream from
    `after[stream]` (default: from now on), and wait until every viewer is live."""
    audience = Audience()
    chunks: list[list[tuple[str, int]]] = [[]]
    room = VIEWERS_PER_PROCESS
    for stream, count in plan:
        while count:
            if room == 0:
                chunks.append([])
                room = VIEWERS_PER_PROCESS
            take = min(count, room)
            chunks[-1].append((stream, take))
            count, room = count - take, room - take
    for i, chunk in enumerate(chunks):
        spec = ",".join(f"{stream}:{count}" for stream, count in chunk)
        starts = json.dumps({stream: (after or {}).get(stream, 0) for stream, _ in chunk})
        args = [suite.target("gifting"), spec, str(EVENTS_PER_RESPONSE), str(CHANNELS_PER_PROCESS), starts]
        with (logdir / f"viewers-{i}.log").open("a") as log:
            audience.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.viewers", *args],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
    for process in audience.processes:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError(f"a viewer process did not get its viewers live (exit {process.poll()})")
        audience.held += int(line[1])
    return audience


def collect(audience: Audience, heads: dict[str, int], window: tuple[float, float]) -> Audience:
    """Tell the viewer processes the streams' heads and the measured window; read what they saw."""
    order = json.dumps({"heads": heads, "window": list(window)}) + "\n"
    for process in audience.processes:
        assert process.stdin is not None
        process.stdin.write(order)
        process.stdin.flush()
    for process in audience.processes:
        assert process.stdout is not None
        summary = json.loads(process.stdout.readline())
        audience.events += summary["events"]
        audience.events_in_window += summary["events_in_window"]
        audience.missed += summary["missed"]
        audience.repeated += summary["repeated"]
        for ms, n in summary["lags_ms"].items():
            audience.lags_ms[int(ms)] = audience.lags_ms.get(int(ms), 0) + n
        process.wait(30)
    return audience


def disconnect(audience: Audience) -> None:
    for process in audience.processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def feed_heads(gifting_url: str, streams: list[str]) -> dict[str, int]:
    """The last sequence of each live stream's feed, read from gifting's outbox."""
    db = Database(make_engine(gifting_url, pool_size=1))
    try:
        with db.transaction() as conn:
            rows = conn.execute(text("SELECT target_key, last_sequence FROM feed_counters")).all()
    finally:
        db.dispose()
    found = {key.removeprefix("live_stream:"): int(n) for key, n in rows}
    return {stream: found.get(stream, 0) for stream in streams}


def wait_for_quiet(seconds: float = 2.0) -> None:
    """Let the last gifts of a phase complete before the heads are read."""
    time.sleep(seconds)
