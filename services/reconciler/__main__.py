"""`python -m services.reconciler`: one reconciliation of the last GIFTCOIN_RECONCILER_WINDOW_SECONDS,
as the CronJob runs it. Prints the report as one JSON line; exits 0 when the books agree,
3 (DISCREPANCIES_EXIT) when they do not, 1 when a service could not be read, 2 on bad configuration."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime, timedelta

from services.reconciler import RECONCILER, ReadFailed, check, to_json
from services.reconciler.books import Window
from services.reconciler.metrics import record
from services.reconciler.settings import load_settings
from services.runtime.auth import TokenSource
from services.runtime.config import ConfigError, Env
from services.runtime.errors import from_rpc_error
from services.runtime.logs import setup_logging
from services.runtime.telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger("services.reconciler")
DISCREPANCIES_EXIT = 3


def main() -> int:
    try:
        settings = load_settings(Env())
        token = TokenSource.for_settings(settings.identity, RECONCILER)  # no key: a configuration error
    except ConfigError as error:
        print(f"reconciler: configuration error: {error}", file=sys.stderr)
        return 2
    setup_logging("reconciler", settings.log_level)
    setup_tracing("reconciler", settings.trace_exporter, settings.trace_file)
    now = datetime.now(UTC)
    window = Window(now - timedelta(seconds=settings.window_seconds), now)
    try:
        report = check(
            settings.targets,
            window,
            now,
            token,
            settings.tls,
            timedelta(seconds=settings.in_flight_seconds),
        )
    except ReadFailed as failed:
        refusal = from_rpc_error(failed.error)
        why = f"{refusal.code.name} {refusal.reason}: {refusal.message}" if refusal else str(failed.error)
        log.error("reconciliation failed: %s could not be read: %s", failed.service, why)
        shutdown_tracing()
        return 1
    record(report)
    print(json.dumps(to_json(report), sort_keys=True), flush=True)
    if not report.ok:
        log.error("reconciliation found %d discrepancies", len(report.discrepancies))
    shutdown_tracing()  # the metrics go out before the process ends
    return 0 if report.ok else DISCREPANCIES_EXIT


if __name__ == "__main__":
    sys.exit(main())
