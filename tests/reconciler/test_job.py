"""The reconciliation job as the CronJob runs it (`python -m services.reconciler`), against real services:
its report on stdout, its exit status, and its discrepancy count exported as a metric (here to the
`file` exporter; OTLP to the collector in deployment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.reconciler import metrics
from services.runtime.clock import FakeClock
from tests.gifting.harness import Suite, start_suite
from tests.reconciler.conftest import capture_behind_wallets_back, story, targets
from tests.support.processes import ROOT, free_port


@pytest.fixture
def live(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The suite on a clock that starts now: the job reconciles the last two hours of real time."""
    running = start_suite(make_database, clock=FakeClock(datetime.now(UTC)))
    try:
        yield running
    finally:
        running.close()


def run_job(where: dict[str, str], directory: Path) -> tuple[int, dict[str, Any], str]:
    """Run the job once: its exit status, its report (stdout's JSON), and its log (stderr)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "GIFTCOIN_DEV_MODE": "true",
        "GIFTCOIN_TRACE_EXPORTER": "file",
        "GIFTCOIN_TRACE_FILE": str(directory / "traces-reconciler.jsonl"),
        **{f"GIFTCOIN_RECONCILER_{name.upper()}_TARGET": target for name, target in where.items()},
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.reconciler"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


def exported(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The metrics the job exported (the `file` exporter's lines): each name's data points."""
    points: dict[str, list[dict[str, Any]]] = {}
    for line in (directory / "metrics-reconciler.jsonl").read_text().splitlines():
        for resource in json.loads(line)["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    points.setdefault(metric["name"], []).extend(metric["data"]["data_points"])
    return points


def discrepancy_metric(directory: Path) -> dict[str, int]:
    """giftcoin.reconcile.discrepancies as the job exported it, by kind."""
    return {p["attributes"]["kind"]: p["value"] for p in exported(directory)[metrics.DISCREPANCIES_METRIC]}


def test_the_alert_rules_name_the_metrics_as_prometheus_spells_them() -> None:
    """OpenTelemetry to Prometheus: dots become underscores, a gauge in seconds gains `_seconds`."""
    assert (
        metrics.DISCREPANCIES_METRIC.replace(".", "_"),
        metrics.IN_FLIGHT_METRIC.replace(".", "_"),
        metrics.LAST_COMPLETED_METRIC.replace(".", "_") + "_seconds",
    ) == metrics.PROMETHEUS_NAMES


def test_the_job_reports_exits_and_exports_its_discrepancy_count(live: Suite, tmp_path: Path) -> None:
    s = story(live)
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    for directory in (clean, broken):
        directory.mkdir()
    status, report, log = run_job(targets(live), clean)
    assert status == 0, log
    assert report["ok"] is True and report["discrepancies"] == []
    assert (report["completed"], report["failed"]) == (3, 2)
    metric = discrepancy_metric(clean)
    assert metric["FAILED_BUT_CAPTURED"] == 0 and sum(metric.values()) == 0
    names = {metrics.DISCREPANCIES_METRIC, metrics.IN_FLIGHT_METRIC, metrics.LAST_COMPLETED_METRIC}
    assert names <= set(exported(clean))
    [completed] = exported(clean)[metrics.LAST_COMPLETED_METRIC]
    assert abs(completed["value"] - datetime.now(UTC).timestamp()) < 120

    hold_id = capture_behind_wallets_back(live, s.failed_after_hold)
    status, report, log = run_job(targets(live), broken)
    assert status == 3, log
    [found] = report["discrepancies"]
    assert (found["kind"], found["gift_id"], found["hold_id"]) == ("FAILED_BUT_CAPTURED", s.failed_after_hold, hold_id)
    assert found["action"]
    metric = discrepancy_metric(broken)
    assert metric["FAILED_BUT_CAPTURED"] == 1 and sum(metric.values()) == 1


def test_the_job_fails_when_a_service_cannot_be_read(live: Suite, tmp_path: Path) -> None:
    where = {**targets(live), "payout": f"127.0.0.1:{free_port()}"}  # nothing listens there
    status, report, log = run_job(where, tmp_path)
    assert (status, report) == (1, {})
    assert "payout could not be read" in log
