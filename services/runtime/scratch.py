"""Scratch databases for the tests and the benchmark: SQLite files, or PostgreSQL databases.

With a PostgreSQL DSN, each database is created on that server under a unique name and dropped by
`drop_all` (unless kept); without one, each is a SQLite file. A service's schema is migrated once: the
first database of a service is kept as a template, and each next one is a copy of it (a file copy on
SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL), so every one starts from exactly what the
migrations make, quickly.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import threading
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from services.runtime.db import migrate


class ScratchDatabases:
    def __init__(self, postgres_dsn: str, workdir: Path, prefix: str) -> None:
        """`workdir`: where SQLite files go by default (and the templates); `prefix`: of PostgreSQL names."""
        self.dsn = postgres_dsn
        self.workdir = workdir
        self.prefix = prefix
        self.created: list[str] = []  # PostgreSQL databases, dropped by drop_all
        self._templates: dict[str, str] = {}  # service -> its template (file or database)
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return "postgresql" if self.dsn else "sqlite"

    def new(self, name: str, directory: Path | None = None) -> str:
        """An empty database for `name`; its SQLAlchemy URL. SQLite: `<name>.db` in `directory`
        (default the workdir); PostgreSQL: `<prefix>_<name>_<random>`."""
        if not self.dsn:
            return f"sqlite:///{(directory or self.workdir) / f'{name}.db'}"
        return self.url(self._create(name))

    def migrated(self, service: str, migrations_dir: Path, directory: Path | None = None) -> str:
        """A new database with `service`'s schema (its migrations in `migrations_dir`); its URL. SQLite:
        `<service>-<random>.db` in `directory` (default the workdir)."""
        with self._lock:
            template = self._templates.get(service)
            if template is None:
                template = self._templates[service] = self._template(service, migrations_dir)
        if not self.dsn:
            target = (directory or self.workdir) / f"{service}-{secrets.token_hex(4)}.db"
            shutil.copyfile(template, target)
            return f"sqlite:///{target}"
        return self.url(self._create(service, template=template))

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of one of the server's databases."""
        url = make_url(self.dsn).set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def libpq(self, url: str) -> str:
        """A SQLAlchemy URL of one of these databases as a libpq connection string (for psycopg)."""
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop the PostgreSQL databases made so far (SQLite files stay with their directory)."""
        if not self.created:
            return
        with self._admin() as admin:
            for database in reversed(self.created):
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.created.clear()
        self._templates.clear()

    def server_version(self) -> str:
        if not self.dsn:
            return f"SQLite {sqlite3.sqlite_version}"
        with self._admin() as admin:
            row = admin.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def _template(self, service: str, migrations_dir: Path) -> str:
        if not self.dsn:
            path = self.workdir / f"template-{service}-{secrets.token_hex(4)}.db"
            migrate(migrations_dir, f"sqlite:///{path}")
            return str(path)
        database = self._create(f"template_{service}")
        migrate(migrations_dir, self.url(database))
        return database

    def _create(self, name: str, template: str = "") -> str:
        database = f"{self.prefix}_{name}_{secrets.token_hex(4)}"
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{database}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.created.append(database)
        return database

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
