"""The reconciliation's metrics, exported like the services' (GIFTCOIN_TRACE_EXPORTER: otlp to the
collector in deployment), so that an alert fires on any discrepancy, or when runs stop completing
(deploy/monitoring/reconciliation-alerts.yaml). The job exports them once per run, as it ends."""

from __future__ import annotations

from collections import Counter

from opentelemetry import metrics

from services.reconciler.reconcile import ACTIONS, Report

# The alert rules name these (as Prometheus spells them: `_` for `.`, `_seconds` for unit s).
DISCREPANCIES_METRIC = "giftcoin.reconciliation.discrepancies"
IN_FLIGHT_METRIC = "giftcoin.reconciliation.in_flight"
LAST_COMPLETED_METRIC = "giftcoin.reconciliation.last_completed"  # unit s

_meter = metrics.get_meter("giftcoin.reconciler")
DISCREPANCIES = _meter.create_gauge(
    DISCREPANCIES_METRIC, description="Discrepancies the last reconciliation found between the services' books, by kind"
)
IN_FLIGHT = _meter.create_gauge(IN_FLIGHT_METRIC, description="Gifts of the last reconciliation's window in flight")
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
