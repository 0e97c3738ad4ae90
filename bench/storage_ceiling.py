"""The storage ceiling: the same gift as ONE database transaction, no gRPC, no saga.

A gift's minimum write set: the viewer's coins debited and the creator's diamonds credited, each a
double-entry transfer of the runtime's ledger (conditional balance UPDATE, transfer row, entry rows),
and the gift's record. Two ways to run it on the same schema (runtime.ledger's tables):
- `python`: the services' own stack (runtime Database + Ledger, SQLAlchemy, psycopg/sqlite3) from
  `concurrency` threads: what the database does for Python code that does nothing else;
- `pgbench` (PostgreSQL only): the same statements from PostgreSQL's own benchmark client, a custom
  script with `concurrency` clients: what the database itself can do on this machine.
"""

from __future__ import annotations

import random
import re
import secrets
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import BigInteger, Column, Connection, MetaData, String, Table
from sqlalchemy.engine import make_url

from bench.load import LoadResult
from services.runtime.db import Database
from services.runtime.ledger import Ledger, Posting, ledger_problems, ledger_tables
from services.runtime.tables import UtcDateTime

metadata = MetaData()
ledger = ledger_tables(metadata)
gifts = Table(
    "bench_gifts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("sender_id", String(64), nullable=False),
    Column("recipient_id", String(64), nullable=False),
    Column("coins", BigInteger(), nullable=False),
    Column("diamonds", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

COINS_SPENT = "platform.coins_spent"
DIAMONDS_ISSUED = "platform.diamonds_issued"
COINS_ISSUED = "platform.coins_issued"


def viewer_account(i: int) -> str:
    return f"viewer.{i}.coins"


def creator_account(i: int) -> str:
    return f"creator.{i}.diamonds"


def prepare(url: str, viewers: int, creators: int, coins_per_viewer: int, pool_size: int) -> Database:
    """The schema, the accounts, and every viewer's coins (one issuing transfer)."""
    db = Database.from_url(url, pool_size=pool_size)
    metadata.create_all(db.engine)
    now = datetime.now(UTC)

    def setup(conn: Connection) -> None:
        book = Ledger(ledger, conn)
        for code, unit in ((COINS_SPENT, "coin"), (COINS_ISSUED, "coin"), (DIAMONDS_ISSUED, "diamond")):
            book.open_account(code, unit, now, platform=True)
        for i in range(viewers):
            book.open_account(viewer_account(i), "coin", now)
        for j in range(creators):
            book.open_account(creator_account(j), "diamond", now)
        issue = [Posting(viewer_account(i), coins_per_viewer) for i in range(viewers)]
        book.post("issue", "bench", [*issue, Posting(COINS_ISSUED, -coins_per_viewer * viewers)], now)

    db.run(setup)
    return db


def gift_transaction(conn: Connection, viewer: int, creator: int, coins: int, diamonds: int) -> None:
    """One gift, whole: coins spent, diamonds credited, the gift recorded, in the caller's transaction."""
    now = datetime.now(UTC)
    gift_id = secrets.token_hex(12)
    book = Ledger(ledger, conn)
    book.post("gift", gift_id, [Posting(viewer_account(viewer), -coins), Posting(COINS_SPENT, coins)], now)
    book.post(
        "credit", gift_id, [Posting(DIAMONDS_ISSUED, -diamonds), Posting(creator_account(creator), diamonds)], now
    )
    conn.execute(
        gifts.insert().values(
            id=gift_id,
            sender_id=str(viewer),
            recipient_id=str(creator),
            coins=coins,
            diamonds=diamonds,
            created_at=now,
        )
    )


def run_python(
    db: Database,
    concurrency: int,
    duration: float,
    warmup: float,
    viewers: int,
    creators: int,
    coins: int,
    diamonds: int,
) -> LoadResult:
    """`concurrency` threads, each running gift transactions back to back."""

    started = time.perf_counter()
    measure_from, end = started + warmup, started + warmup + duration
    result = LoadResult(duration)
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            began = time.perf_counter()
            if began >= end:
                return
            viewer, creator = rng.randrange(viewers), rng.randrange(creators)
            try:
                db.run(partial(gift_transaction, viewer=viewer, creator=creator, coins=coins, diamonds=diamonds))
                outcome = "OK"
            except Exception as error:  # counted, like the suite's errors
                outcome = type(error).__name__
            finished = time.perf_counter()
            if began < measure_from or finished > end:
                continue
            with lock:
                result.outcomes[outcome] += 1
                if outcome == "OK":
                    result.completed += 1
                    result.latencies_ms.append((finished - began) * 1000)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def problems(db: Database) -> list[str]:
    with db.transaction() as conn:
        return ledger_problems(ledger, conn)


# --- pgbench ----------------------------------------------------------------------------------------

# The statements of gift_transaction, as PostgreSQL runs them for the runtime's Ledger.post (less its
# read of the accounts' units, which pgbench knows). Variables are bound as parameters (-M prepared);
# pgbench takes every `:name` for a variable, even inside quotes: so the account codes here have no colons.
PGBENCH_SCRIPT = """\
\\set viewer random(0, :nviewers - 1)
\\set creator random(0, :ncreators - 1)
\\set gift random(1, 9000000000000000000)
BEGIN;
UPDATE ledger_accounts SET balance = balance - :price::bigint
  WHERE code = 'viewer.' || :viewer::text || '.coins' AND balance - :price::bigint >= 0;
INSERT INTO ledger_transfers (id, kind, reference, created_at)
  VALUES ('g' || :gift::text, 'gift', :gift::text, now()), ('c' || :gift::text, 'credit', :gift::text, now());
INSERT INTO ledger_entries (transfer_id, account, unit, amount, created_at) VALUES
  ('g' || :gift::text, 'viewer.' || :viewer::text || '.coins', 'coin', -:price::bigint, now()),
  ('g' || :gift::text, 'platform.coins_spent', 'coin', :price::bigint, now());
UPDATE ledger_accounts SET balance = balance + :share::bigint WHERE code = 'creator.' || :creator::text || '.diamonds';
INSERT INTO ledger_entries (transfer_id, account, unit, amount, created_at) VALUES
  ('c' || :gift::text, 'platform.diamonds_issued', 'diamond', -:share::bigint, now()),
  ('c' || :gift::text, 'creator.' || :creator::text || '.diamonds', 'diamond', :share::bigint, now());
INSERT INTO bench_gifts (id, sender_id, recipient_id, coins, diamonds, created_at)
  VALUES (:gift::text, :viewer::text, :creator::text, :price::bigint, :share::bigint, now());
END;
"""


def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    return str(candidates[-1]) if candidates else ""


def run_pgbench(
    pgbench: str,
    url: str,
    workdir: Path,
    concurrency: int,
    duration: float,
    viewers: int,
    creators: int,
    coins: int,
    diamonds: int,
) -> LoadResult:
    """pgbench with the gift script for `duration` whole seconds; latencies from its per-transaction log."""
    parsed = make_url(url)
    script = workdir / "gift.pgbench.sql"
    script.write_text(PGBENCH_SCRIPT)
    logs = workdir / "pgbench-log"
    logs.mkdir(exist_ok=True)
    seconds = max(1, round(duration))
    variables = {"nviewers": viewers, "ncreators": creators, "price": coins, "share": diamonds}
    command = [
        pgbench,
        "--no-vacuum",  # pgbench's own tables do not exist here
        "--protocol=prepared",
        f"--host={parsed.host or '127.0.0.1'}",
        f"--port={parsed.port or 5432}",
        f"--username={parsed.username or 'postgres'}",
        f"--client={concurrency}",
        "--jobs=2",
        f"--time={seconds}",
        *(f"--define={name}={value}" for name, value in variables.items()),
        f"--file={script}",
        "--log",
        f"--log-prefix={logs / 'tx'}",
        parsed.database or "postgres",
    ]
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": parsed.password or ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise RuntimeError(f"pgbench failed ({done.returncode}): " + " | ".join(output[:3]))
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    result = LoadResult(float(seconds))
    result.completed = int(processed.group(1)) if processed else 0
    result.outcomes["OK"] = result.completed
    if failed and int(failed.group(1)):
        result.outcomes["pgbench failed transactions"] = int(failed.group(1))
    # Per-transaction log lines: client_id transaction_no latency_us script_no epoch_s epoch_us.
    for log in logs.glob("tx*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                result.latencies_ms.append(int(fields[2]) / 1000)
    return result
