"""`giftctl reconcile`'s check of a window through the services' RPCs, for the command and the demo."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from services.giftctl.parser import targets
from services.giftctl.session import CliError, describe_rpc_error, token_source
from services.reconciler import RECONCILER, ReadFailed, Window, check
from services.reconciler.reconcile import Report
from services.runtime.auth import CallerKind


def reconciliation(args: argparse.Namespace) -> Report:
    """`giftctl reconcile`'s report (the demo's too, under the demo's tracing); CliError when a service
    cannot be read."""
    caller = args.identity or RECONCILER
    if caller.kind is CallerKind.USER:
        raise CliError("reconcile reads every service's books: pass --as operator:<id> (or no --as)", exit_status=2)
    now = datetime.now(UTC)
    window = Window(args.since or now - timedelta(hours=24), args.until or now)
    if window.end <= window.start:
        raise CliError("reconcile: --until must come after --since", exit_status=2)
    try:
        token = token_source(caller)
        return check(targets(args), window, now, token, in_flight=timedelta(seconds=args.in_flight))
    except ReadFailed as failed:
        raise CliError(describe_rpc_error(failed.service, targets(args)[failed.service], failed.error)) from None
