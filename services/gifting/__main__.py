"""`python -m services.gifting [serve|migrate]`."""

from __future__ import annotations

import sys

from services.runtime.main import run

from .app import build
from .settings import load_settings
from .storage import MIGRATIONS_DIR

if __name__ == "__main__":
    sys.exit(run("gifting", load_settings, build, MIGRATIONS_DIR))
