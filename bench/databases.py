"""The benchmark's databases: SQLite files in a temporary directory, or fresh PostgreSQL databases.

PostgreSQL databases are created under unique names and dropped at the end (unless kept).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url


class Databases:
    def __init__(self, postgres_dsn: str, workdir: Path) -> None:
        self.dsn = postgres_dsn
        self.workdir = workdir
        self.run_tag = secrets.token_hex(4)
        self.created: list[str] = []

    @property
    def backend(self) -> str:
        return "postgresql" if self.dsn else "sqlite"

    def new(self, name: str) -> str:
        """An empty database for `name`; returns its SQLAlchemy URL."""
        if not self.dsn:
            return f"sqlite:///{self.workdir / f'{name}.db'}"
        database = f"gc_bench_{name}_{self.run_tag}"
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        self.created.append(database)
        return self.url(database)

    def url(self, database: str) -> str:
        url = make_url(self.dsn).set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def libpq(self, url: str) -> str:
        """A SQLAlchemy URL of one of these databases as a libpq connection string (for psycopg)."""
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.created:
            return
        with self._admin() as admin:
            for database in reversed(self.created):
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.created.clear()

    def _admin(self) -> psycopg.Connection:
        url = make_url(self.dsn)
        return psycopg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password or None,
            dbname=url.database or "postgres",
            autocommit=True,
        )

    def server_version(self) -> str:
        if not self.dsn:
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        with self._admin() as admin:
            row = admin.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"
