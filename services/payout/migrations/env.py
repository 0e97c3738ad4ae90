"""Alembic environment of the payout database."""

from services.payout import storage
from services.runtime.migrations_env import run_migrations

run_migrations(storage.metadata)
