"""Alembic environment of the wallet database."""

from services.runtime.migrations_env import run_migrations
from services.wallet import storage

run_migrations(storage.metadata)
