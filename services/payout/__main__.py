"""`python -m services.payout [serve|migrate]`."""

from __future__ import annotations

import sys

from services.payout.app import build
from services.payout.settings import load_settings
from services.payout.storage import MIGRATIONS_DIR
from services.runtime.main import run

if __name__ == "__main__":
    sys.exit(run("payout", load_settings, build, MIGRATIONS_DIR))
