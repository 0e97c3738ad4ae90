"""`python -m services.payout [serve|migrate]`."""

from __future__ import annotations

import sys

from services.runtime.config import ServiceSettings
from services.runtime.main import run
from services.runtime.server import ServiceApp

from .app import build
from .settings import PayoutSettings, load_settings
from .storage import MIGRATIONS_DIR


def _build(settings: ServiceSettings) -> ServiceApp:
    if not isinstance(settings, PayoutSettings):  # run() passes back what load_settings made
        raise TypeError("payout needs PayoutSettings")
    return build(settings)


if __name__ == "__main__":
    sys.exit(run("payout", load_settings, _build, MIGRATIONS_DIR))
