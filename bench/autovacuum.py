"""What PostgreSQL's autovacuum would do for the suite's databases, when the server has it off.

The benchmark's databases start empty and grow by thousands of rows a second. Without statistics,
PostgreSQL plans a lookup in a table that was tiny when the statement was prepared as a scan of the
whole table, and keeps that plan as the table grows: nothing invalidates it until the table is
analyzed. A production server runs autovacuum (on by default); this machine's CI server has it off
(`autovacuum = off`), which would make the suite's figures degrade with the length of the run for a
reason no deployment has. So the benchmark applies autovacuum's own rules, with its default settings,
to its databases: once right after the warm-up (a production database has statistics), then every
`autovacuum_naptime` (a minute): ANALYZE a table once `50 + 10 %` of its rows changed, VACUUM it once
`50 + 20 %` are dead. Their CPU is the PostgreSQL backends' and counts in the table.
"""

from __future__ import annotations

import threading

import psycopg

# PostgreSQL's defaults: autovacuum_{analyze,vacuum}_{threshold,scale_factor}.
ANALYZE_THRESHOLD, ANALYZE_SCALE = 50, 0.1
VACUUM_THRESHOLD, VACUUM_SCALE = 50, 0.2
NAP_SECONDS = 60.0  # autovacuum_naptime

_DUE = """
SELECT s.relname,
       s.n_mod_since_analyze > %(at)s + %(asf)s * greatest(c.reltuples, 0) AS analyze,
       s.n_dead_tup > %(vt)s + %(vsf)s * greatest(c.reltuples, 0) AS vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
"""


def server_autovacuums(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return row is not None and row[0] == "on"


class Autovacuum:
    """Autovacuum's analyze and vacuum rules, run on `dsns` (libpq connection strings) until stopped."""

    def __init__(self, dsns: list[str]) -> None:
        self.dsns = dsns
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-autovacuum", daemon=True)
        self.runs = 0  # ANALYZE and VACUUM statements run

    def start(self) -> None:
        """Apply the rules now, then every NAP_SECONDS in the background."""
        for dsn in self.dsns:
            with psycopg.connect(dsn, autocommit=True) as conn:
                self.run_once(conn)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def run_once(self, conn: psycopg.Connection) -> None:
        due = conn.execute(
            _DUE, {"at": ANALYZE_THRESHOLD, "asf": ANALYZE_SCALE, "vt": VACUUM_THRESHOLD, "vsf": VACUUM_SCALE}
        ).fetchall()
        for table, analyze, vacuum in due:
            if vacuum:
                conn.execute(f'VACUUM (ANALYZE) "{table}"')
            elif analyze:
                conn.execute(f'ANALYZE "{table}"')
            else:
                continue
            self.runs += 1

    def _run(self) -> None:
        connections = [psycopg.connect(dsn, autocommit=True) for dsn in self.dsns]
        try:
            while not self._stop.wait(NAP_SECONDS):
                for conn in connections:
                    self.run_once(conn)
        finally:
            for conn in connections:
                conn.close()
