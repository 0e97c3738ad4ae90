"""The alert rules shipped in deploy/monitoring name the metrics the reconciliation job exports."""

from __future__ import annotations

import re

import yaml

from services.reconciler import metrics
from tests.deploy import kube

RULES = kube.DEPLOY / "monitoring" / "reconciliation-alerts.yaml"


def prometheus_name(name: str, unit: str = "") -> str:
    """An OpenTelemetry metric's name as Prometheus spells it (dots to underscores, a unit suffix)."""
    return name.replace(".", "_") + ("_seconds" if unit == "s" else "")


def test_the_alert_rules_are_well_formed_and_name_the_metrics_the_job_exports() -> None:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    for rule in rules.values():
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
    exported = {
        prometheus_name(metrics.DISCREPANCIES_METRIC),
        prometheus_name(metrics.IN_FLIGHT_METRIC),
        prometheus_name(metrics.LAST_COMPLETED_METRIC, "s"),
    }
    named = {name for rule in rules.values() for name in re.findall(r"giftcoin_[a-z_]+", rule["expr"])}
    assert named and named <= exported
    # Any discrepancy pages; runs that stop completing are noticed.
    assert re.search(r"giftcoin_reconciliation_discrepancies\)?\s*>\s*0", rules["GiftcoinBooksDisagree"]["expr"])
    assert prometheus_name(metrics.LAST_COMPLETED_METRIC, "s") in rules["GiftcoinReconciliationNotRunning"]["expr"]
