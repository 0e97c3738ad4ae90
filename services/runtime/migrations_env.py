"""The body of every service's Alembic env.py: run migrations online against the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData

from services.runtime.db import make_engine


def run_migrations(target_metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("sqlalchemy.url is not set")
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # A batch migration rebuilds a table (copy, DROP, rename); with foreign keys on, the DROP
                # of a table other rows reference fails. SQLite's way: keys off (outside a transaction,
                # on the driver's connection), then a check of every key before the commit.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:10]}")
            connection.commit()
    finally:
        engine.dispose()
