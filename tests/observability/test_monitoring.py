"""The Grafana dashboards and Prometheus rules in deploy/monitoring load, their queries are valid
PromQL (`promtool`, from Debian's prometheus package), and every series they name is one the
services export after `make demo`'s story, or one the rules record."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.reconciler import metrics
from tests.deploy import kube
from tests.observability.conftest import StorySuite

MONITORING = kube.ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheus" / "giftcoin-rules.yaml"
RULE_TESTS = MONITORING / "prometheus" / "giftcoin-rules.test.yaml"
DASHBOARDS = sorted((MONITORING / "grafana").glob("*.json"))
# Exported by the reconciler (a CronJob of its own), not by the three services.
RECONCILER_SERIES = set(metrics.PROMETHEUS_NAMES)
# What PromQL spells with identifiers that are not series: operators, modifiers, and the label lists
# of by/without/on/ignoring/group_left/group_right (removed before this is used).
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed: the rules and dashboard queries are NOT checked as PromQL "
            "(apt-get install prometheus; `make test` does so when it runs as root with apt-get)"
        )
    return found


def rules() -> dict[str, Any]:
    loaded = yaml.safe_load(RULES.read_text())
    assert isinstance(loaded, dict)
    return loaded


def rule_list() -> list[dict[str, Any]]:
    return [rule for group in rules()["groups"] for rule in group["rules"]]


def dashboard_queries() -> dict[str, list[str]]:
    """Every panel query of each dashboard, by dashboard file name."""
    queries: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        queries[path.name] = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return queries


def series_named(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are neither functions, keywords, labels,
    nor inside a string, a selector's braces or a range."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name, rest = found.group(0), expr[found.end() :].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_WORDS or expr[found.start() - 1 : found.start()] == "$":
            continue
        names.add(name)
    return names


def test_the_dashboards_are_grafana_dashboards_with_queries_on_a_chosen_prometheus() -> None:
    assert {p.name for p in DASHBOARDS} == {"giftcoin-services.json", "giftcoin-money.json"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["title"].startswith("giftcoin / ")
        (variable,) = dashboard["templating"]["list"]
        assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)) >= 6, path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert len(uids) == len(DASHBOARDS)


def test_the_rules_and_every_dashboard_query_are_valid_promql(tmp_path: Path) -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The dashboards' queries, as recording rules: promtool parses each (Grafana's interval first).
    as_rules = {
        "groups": [
            {
                "name": name,
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "5m")}
                    for n, expr in enumerate(queries)
                ],
            }
            for name, queries in dashboard_queries().items()
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(as_rules))
    checked = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alerts_fire_on_what_they_watch_and_not_on_refusals() -> None:
    """promtool's unit tests of the rules: a 2 % INTERNAL rate pages, INSUFFICIENT_FUNDS refusals do
    not; a gift pending past 10 minutes pages after 5; a reconciliation discrepancy pages for the hour
    after its run; no reconciliation for three hours opens a ticket."""
    tool = promtool()
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alerts_cover_the_sendgift_slos_stuck_gifts_and_reconciliation() -> None:
    alerts = {rule["alert"]: rule for rule in rule_list() if "alert" in rule}
    for slo in ("Errors", "Latency"):
        for speed, severity in (("Fast", "page"), ("Slow", "ticket")):
            assert alerts[f"GiftcoinSendGift{slo}BudgetBurn{speed}"]["labels"]["severity"] == severity
    assert "giftcoin_gifting_gifts_oldest_unfinished_age_seconds" in alerts["GiftcoinGiftsStuck"]["expr"]
    assert series_named(alerts["GiftcoinReconciliationDiscrepancy"]["expr"]) == {"giftcoin_reconcile_discrepancies"}
    assert series_named(alerts["GiftcoinReconciliationNotRunning"]["expr"]) == {
        "giftcoin_reconcile_last_completed_seconds"
    }
    for alert in alerts.values():
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_the_series_finder_reads_names_not_functions_labels_or_ranges() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (rpc_method, le) (rate(rpc_server_call_duration_seconds_bucket"
        '{rpc_method!~".*/WatchGifts"}[$__rate_interval]))) / on (instance) group_left max(up) > bool 1'
        " and giftcoin:sendgift_error_ratio:rate5m"
    )
    assert series_named(expr) == {
        "rpc_server_call_duration_seconds_bucket",
        "up",
        "giftcoin:sendgift_error_ratio:rate5m",
    }


def test_every_series_the_dashboards_and_rules_name_is_exported_or_recorded(story_suite: StorySuite) -> None:
    exported = set().union(*(s.names() for s in story_suite.scrape_all().values()))
    recorded = {rule["record"] for rule in rule_list() if "record" in rule}
    named: dict[str, set[str]] = {}
    for rule in rule_list():
        named.setdefault(RULES.name, set()).update(series_named(rule["expr"]))
    for name, queries in dashboard_queries().items():
        for expr in queries:
            named.setdefault(name, set()).update(series_named(expr))
    for where, names in named.items():
        unknown = names - exported - recorded - RECONCILER_SERIES
        assert not unknown, f"{where} names series that no service exports: {sorted(unknown)}"
    # Each recording rule is used, and reads only exported series.
    used = set().union(*named.values())
    assert recorded <= used
