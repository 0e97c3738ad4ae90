"""`python -m services.wallet [serve|migrate]`."""

from __future__ import annotations

import sys

from services.runtime.main import run
from services.wallet.app import build
from services.wallet.settings import load_settings
from services.wallet.storage import MIGRATIONS_DIR

if __name__ == "__main__":
    sys.exit(run("wallet", load_settings, build, MIGRATIONS_DIR))
