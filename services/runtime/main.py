"""The entry point every service shares: `python -m services.<name> [serve|migrate]`.

A service that cannot start says why in one line on stderr, naming the variable to fix, and exits
with status 2: a configuration error, a database it cannot reach or use, a TLS file it cannot
use, a port it cannot listen on. Never a traceback: an operator reads the line in `kubectl logs`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.engine import make_url

from services.runtime.config import ConfigError, Env, ServiceSettings, TlsSettings
from services.runtime.db import migrate
from services.runtime.logs import setup_logging
from services.runtime.server import RunningServer, ServiceApp, create_server, serve

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)  # a service's own settings class
NOT_STARTED = 2  # the exit status of a service that could not start


class StartupError(Exception):
    """Why the service cannot start, in one line that names what to fix."""


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
    except ConfigError as error:
        print(f"{name}: configuration error: {error}", file=sys.stderr)
        return NOT_STARTED
    setup_logging(name, settings.log_level)
    try:
        running = _start(name, args.command, settings, migrate_on_start, build, migrations_dir)
    except StartupError as error:
        print(f"{name}: cannot start: {error}", file=sys.stderr)
        return NOT_STARTED
    if running is None:
        return 0
    # What start-up made (modules, tables, compiled statements) lives as long as the process: kept out
    # of the collector's full passes, which would otherwise traverse it all again and again under load,
    # each pass stopping every call in flight.
    gc.collect()
    gc.freeze()
    serve(running, settings.shutdown_grace_seconds)
    return 0


def _start(
    name: str,
    command: str,
    settings: S,
    migrate_on_start: bool,
    build: Callable[[S], ServiceApp],
    migrations_dir: Path,
) -> RunningServer | None:
    """Migrate (`migrate`: only that, then None), build and start the server; StartupError if it cannot."""
    check_tls_files(settings.tls)
    check_ports(name, settings)
    with database_errors(name, settings.database_url):
        if command == "migrate" or migrate_on_start:
            migrate(migrations_dir, settings.database_url)
            log.info("%s database migrated", name)
        if command == "migrate":
            return None
        try:
            app = build(settings)
        except ConfigError as error:  # what a service reads to build itself: gifting's signing key
            raise StartupError(str(error)) from error
    try:
        return create_server(app, settings)
    except ConfigError as error:  # the token keys it verifies callers with (GIFTCOIN_JWT_KEYS)
        app.close()
        raise StartupError(str(error)) from error
    except (RuntimeError, OSError) as error:  # a port taken since check_ports
        app.close()
        raise StartupError(f"cannot listen: {_one_line(error)}") from error


def check_ports(name: str, settings: ServiceSettings) -> None:
    """Each port the service listens on is free (gRPC would say only that it failed to bind)."""
    upper = name.upper()
    for variable, port in (
        (f"GIFTCOIN_{upper}_PORT", settings.port),
        ("GIFTCOIN_HEALTH_PORT", settings.health_port),
        ("GIFTCOIN_METRICS_PORT", settings.metrics_port),
    ):
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind((settings.host, port))
            except OSError as error:
                raise StartupError(
                    f"{variable}: cannot listen on {settings.host}:{port} ({error.strerror}; "
                    f"GIFTCOIN_{upper}_HOST is {settings.host})"
                ) from error


def check_tls_files(tls: TlsSettings) -> None:
    """Each TLS file set must be readable PEM, and the key must be the certificate's."""
    files = {
        "GIFTCOIN_TLS_CERT_FILE": tls.cert_file,
        "GIFTCOIN_TLS_KEY_FILE": tls.key_file,
        "GIFTCOIN_TLS_CA_FILE": tls.ca_file,
    }
    given = [variable for variable, path in files.items() if path]
    if given and len(given) < len(files):
        missing = ", ".join(variable for variable in files if variable not in given)
        raise StartupError(f"mTLS needs all three files: {', '.join(given)} set, {missing} not")
    for variable, path in files.items():
        if path and not Path(path).is_file():
            raise StartupError(f"{variable}: no file {path}")
    if not given:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as error:
        raise StartupError(
            f"GIFTCOIN_TLS_CA_FILE: {tls.ca_file} is not a PEM CA certificate ({_one_line(error)})"
        ) from error
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as error:
        raise StartupError(
            f"GIFTCOIN_TLS_CERT_FILE / GIFTCOIN_TLS_KEY_FILE: {tls.cert_file} and {tls.key_file} are not a PEM "
            f"certificate and its private key ({_one_line(error)})"
        ) from error


@contextmanager
def database_errors(name: str, url: str) -> Iterator[None]:
    """What goes wrong with the configured database, as a StartupError naming its variable."""
    variable = f"GIFTCOIN_{name.upper()}_DATABASE_URL"
    try:
        yield
    except exc.NoSuchModuleError as error:
        scheme = url.partition(":")[0]
        raise StartupError(
            f"{variable}: unknown database scheme {scheme!r}: use sqlite:///<file> or postgresql://user:password@host/db"
        ) from error
    except exc.ArgumentError as error:  # not a URL at all
        raise StartupError(f"{variable}: not a database URL ({_one_line(error)})") from error
    except ImportError as error:
        raise StartupError(
            f"{variable}: the driver for {url.partition(':')[0]!r} is not installed ({error.name}): "
            "use sqlite:///<file> or postgresql://user:password@host/db"
        ) from error
    except (exc.ProgrammingError, exc.OperationalError) as error:
        if _missing_table(error):
            raise StartupError(
                f"{variable}: the database at {_safe(url)} has no giftcoin tables: migrate it first "
                f"(`python -m services.{name} migrate`, or GIFTCOIN_MIGRATE_ON_START=true)"
            ) from error
        raise StartupError(f"{variable}: cannot use the database at {_safe(url)}: {_one_line(error.orig)}") from error
    except exc.DBAPIError as error:
        raise StartupError(f"{variable}: cannot use the database at {_safe(url)}: {_one_line(error.orig)}") from error


def _missing_table(error: exc.DBAPIError) -> bool:
    text = str(error.orig)
    return "no such table" in text or getattr(error.orig, "sqlstate", None) == "42P01"  # undefined_table


def _safe(url: str) -> str:
    """The URL without its password."""
    return make_url(url).render_as_string(hide_password=True)


def _one_line(error: object) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
