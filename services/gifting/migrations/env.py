"""Alembic environment of the gifting database."""

from services.gifting import storage
from services.runtime.migrations_env import run_migrations

run_migrations(storage.metadata)
