"""Fresh, migrated databases for tests, on SQLite and (when GIFTCOIN_TEST_POSTGRES is set) PostgreSQL.

The databases are runtime.scratch's (the benchmark's too): the first of a service in a session is
migrated and kept as a template, each test gets a copy of it. Dropped at the session's end.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

from services.runtime.scratch import ScratchDatabases

POSTGRES_ENV = "GIFTCOIN_TEST_POSTGRES"
_lock = threading.Lock()
_by_backend: dict[str, ScratchDatabases] = {}


def postgres_dsn() -> str:
    return os.environ.get(POSTGRES_ENV, "")


def migrations_dir(service: str) -> Path:
    module = importlib.import_module(f"services.{service}.storage")
    return Path(module.MIGRATIONS_DIR)


def _databases(backend: str) -> ScratchDatabases:
    """The session's databases on `backend` (sqlite | postgres); the SQLite templates in a directory of their own."""
    with _lock:
        if backend not in _by_backend:
            dsn = postgres_dsn() if backend == "postgres" else ""
            workdir = Path(tempfile.mkdtemp(prefix=f"giftcoin-test-{backend}-"))
            _by_backend[backend] = ScratchDatabases(dsn, workdir, prefix="gc_test")
        return _by_backend[backend]


def fresh_database(backend: str, service: str, workdir: Path) -> str:
    """A new database with `service`'s schema (a SQLite file in `workdir`); returns its SQLAlchemy URL."""
    return _databases(backend).migrated(service, migrations_dir(service), workdir)


def empty_database(backend: str, workdir: Path) -> str:
    """A new database with no tables, for tests that create their own (the runtime's) or migrate it."""
    return _databases(backend).new(f"empty-{secrets.token_hex(4)}" if backend == "sqlite" else "empty", workdir)


def drop_created_databases() -> None:
    with _lock:
        for databases in _by_backend.values():
            databases.drop_all()
            shutil.rmtree(databases.workdir, ignore_errors=True)
        _by_backend.clear()
