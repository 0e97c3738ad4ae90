"""The reconciler: proves, through their RPCs, that wallet, gifting and payout agree (reconcile.py).

`check(...)` is the one call: the CLI (`giftctl reconcile`) and the CronJob (`python -m
services.reconciler`, which also exports the report's metrics) use it, and so can a benchmark. It reads
the three services with the tokens `token()` gives (runtime.auth.TokenSource: an operator's, or
`service:reconciler`'s, signed with its own key) and returns the `Report`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from services.reconciler.books import ReadFailed, RpcBooks, Window
from services.reconciler.reconcile import DEFAULT_IN_FLIGHT, Discrepancy, Report, reconcile, to_json
from services.runtime.auth import service
from services.runtime.config import TlsSettings

RECONCILER = service("reconciler")

__all__ = ["RECONCILER", "Discrepancy", "ReadFailed", "Report", "Window", "check", "reconcile", "to_json"]


def check(
    targets: dict[str, str],
    window: Window,
    now: datetime,
    token: Callable[[], str],
    tls: TlsSettings | None = None,
    in_flight: timedelta = DEFAULT_IN_FLIGHT,
) -> Report:
    """Reconcile the services at `targets` (wallet, gifting, payout: host:port) over `window`; raises
    ReadFailed when a service cannot be read."""
    with RpcBooks.connect(targets, token, tls) as books:
        return reconcile(books, window, now, in_flight)
