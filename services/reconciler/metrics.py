"""The reconciliation's metrics. A run of the CronJob ends before any scrape could find it, so the job
pushes them as it ends (GIFTCOIN_TRACE_EXPORTER=otlp: to the collector, which forwards them to
Prometheus), where deploy/monitoring/prometheus/giftcoin-rules.yaml alerts on any discrepancy and on
runs that stop completing (docs/observability.md)."""

from __future__ import annotations

from collections import Counter

from opentelemetry import metrics

from services.reconciler.reconcile import ACTIONS, Report

# The alert rules and dashboards name these as Prometheus spells them: `_` for `.`, `_seconds` for unit s
# (giftcoin_reconcile_discrepancies, giftcoin_reconcile_last_completed_seconds).
DISCREPANCIES_METRIC = "giftcoin.reconcile.discrepancies"
IN_FLIGHT_METRIC = "giftcoin.reconcile.in_flight"
LAST_COMPLETED_METRIC = "giftcoin.reconcile.last_completed"  # unit s
PROMETHEUS_NAMES = (
    "giftcoin_reconcile_discrepancies",
    "giftcoin_reconcile_in_flight",
    "giftcoin_reconcile_last_completed_seconds",
)

_meter = metrics.get_meter("giftcoin.reconciler")
DISCREPANCIES = _meter.create_gauge(
    DISCREPANCIES_METRIC,
    unit="{discrepancy}",
    description="Discrepancies the last reconciliation found between the services' books, by kind",
)
IN_FLIGHT = _meter.create_gauge(
    IN_FLIGHT_METRIC, unit="{gift}", description="Gifts of the last reconciliation's window in flight"
)
LAST_COMPLETED = _meter.create_gauge(
    LAST_COMPLETED_METRIC, unit="s", description="When the last reconciliation completed (Unix time)"
)


def record(report: Report) -> None:
    """The report's figures: every kind's count (zeros included, so a kind that clears reads 0)."""
    found = Counter(d.kind for d in report.discrepancies)
    for kind in ACTIONS:
        DISCREPANCIES.set(found[kind], {"kind": kind})
    IN_FLIGHT.set(report.in_flight)
    LAST_COMPLETED.set(int(report.as_of.timestamp()))
