"""The entry point every service shares: `python -m services.<name> [serve|migrate]`."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from services.runtime.config import ConfigError, Env, ServiceSettings
from services.runtime.db import migrate
from services.runtime.logs import setup_logging
from services.runtime.server import ServiceApp, create_server, serve

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)  # a service's own settings class


def run(
    name: str,
    load_settings: Callable[[Env], S],
    build: Callable[[S], ServiceApp],
    migrations_dir: Path,
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"giftcoin {name} service")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate"],
        help="serve (default; migrates first unless GIFTCOIN_MIGRATE_ON_START=false) or migrate and exit",
    )
    args = parser.parse_args(argv)
    env = Env()
    try:
        settings = load_settings(env)
        migrate_on_start = env.flag("GIFTCOIN_MIGRATE_ON_START", True)
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(name, settings.log_level)
    if args.command == "migrate" or migrate_on_start:
        migrate(migrations_dir, settings.database_url)
        log.info("%s database migrated", name)
    if args.command == "migrate":
        return 0
    running = create_server(build(settings), settings)
    # What start-up made (modules, tables, compiled statements: ~95,000 objects) lives as long as the
    # process: kept out of the collector's full passes, which otherwise traversed it all again every
    # couple of seconds under load, ~50 ms each with every thread stopped (a gift's latency).
    gc.collect()
    gc.freeze()
    serve(running, settings.shutdown_grace_seconds)
    return 0
