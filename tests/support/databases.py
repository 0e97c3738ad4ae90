"""Fresh, migrated databases for tests, on SQLite and (when GIFTCOIN_TEST_POSTGRES is set) PostgreSQL.

The first database of a service in a session is migrated with Alembic and kept as a template; each
test then gets a copy (a file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL), so every
test starts from exactly what the migrations make, quickly.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import threading
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from services.runtime.db import migrate

POSTGRES_ENV = "GIFTCOIN_TEST_POSTGRES"
_lock = threading.Lock()
_templates: dict[tuple[str, str], str] = {}
_created_pg: list[str] = []


def postgres_dsn() -> str:
    return os.environ.get(POSTGRES_ENV, "")


def migrations_dir(service: str) -> Path:
    module = importlib.import_module(f"services.{service}.storage")
    return Path(module.MIGRATIONS_DIR)


def _pg_admin() -> psycopg.Connection:
    url = make_url(postgres_dsn())
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or None,
        dbname=url.database or "postgres",
        autocommit=True,
    )


def _pg_url(name: str) -> str:
    url = make_url(postgres_dsn()).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def fresh_database(backend: str, service: str, workdir: Path) -> str:
    """A new database with `service`'s schema; returns its SQLAlchemy URL."""
    with _lock:
        template = _templates.get((backend, service))
        if template is None:
            template = _make_template(backend, service, workdir)
            _templates[(backend, service)] = template
    if backend == "sqlite":
        target = workdir / f"{service}-{secrets.token_hex(4)}.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    name = f"gc_test_{service}_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    _created_pg.append(name)
    return _pg_url(name)


def empty_database(backend: str, workdir: Path) -> str:
    """A new database with no tables, for tests that create their own (the runtime's)."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'empty-{secrets.token_hex(4)}.db'}"
    name = f"gc_test_empty_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    _created_pg.append(name)
    return _pg_url(name)


def _make_template(backend: str, service: str, workdir: Path) -> str:
    if backend == "sqlite":
        path = workdir.parent / f"template-{service}-{secrets.token_hex(4)}.db"
        path.unlink(missing_ok=True)
        migrate(migrations_dir(service), f"sqlite:///{path}")
        return str(path)
    name = f"gc_template_{service}_{secrets.token_hex(4)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    _created_pg.append(name)
    migrate(migrations_dir(service), _pg_url(name))
    return name


def drop_created_databases() -> None:
    if not _created_pg or not postgres_dsn():
        return
    with _pg_admin() as admin:
        for name in reversed(_created_pg):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _created_pg.clear()
