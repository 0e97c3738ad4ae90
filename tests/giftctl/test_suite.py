"""`giftctl up` and `giftctl demo` as real processes: the whole suite started and stopped cleanly."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from services.giftctl import cli
from services.giftctl.suite import ROOT, free_port

UP_TIMEOUT = 60.0


class LineReader:
    """Collects a process's output lines on a thread, so the test can wait for one without blocking forever."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not printed; output so far:\n{''.join(self.seen)}")

    def rest(self) -> str:
        while True:
            try:
                self.seen.append(self.lines.get(timeout=1))
            except queue.Empty:
                return "".join(self.seen)


def giftctl_process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.giftctl", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_runs_the_suite_until_signalled_then_stops_every_service(
    stop_signal: signal.Signals, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = {name: free_port() for name in ("wallet", "gifting", "payout")}
    targets = [f"--{name}=127.0.0.1:{port}" for name, port in ports.items()]
    up = giftctl_process("up", "--data-dir", str(tmp_path), *targets)
    output = LineReader(up)
    try:
        output.wait_for("Ctrl-C stops", UP_TIMEOUT)
        printed = "".join(output.seen)
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", printed)]
        assert len(pids) == 3
        for name, port in ports.items():
            assert f"{name}" in printed and f"127.0.0.1:{port}" in printed

        # The suite answers: a call that crosses all three services' processes would, too.
        assert cli.main(["--as", "user:ana", "gifting", "gifts", "--json", *targets]) == 0
        assert '"gift_id": "rose"' in capsys.readouterr().out
        for name in ("wallet", "gifting", "payout"):
            assert (tmp_path / f"{name}.db").exists()
            assert (tmp_path / f"{name}.log").exists()

        up.send_signal(stop_signal)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    rest = output.rest()
    assert "stopped: gifting exit 0, payout exit 0, wallet exit 0" in rest
    assert "Traceback" not in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(refuses_connections(port) for port in ports.values())


def test_up_refuses_a_port_already_in_use_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli.main(["up", "--data-dir", str(tmp_path), f"--payout=127.0.0.1:{port}"])
    assert status == 1
    err = capsys.readouterr().err
    assert err == f"giftctl: payout: 127.0.0.1:{port} is already in use (is the suite already up?)\n"
    assert not list(tmp_path.glob("*.db"))


def test_demo_walks_the_story_end_to_end_and_exits_0() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "services.giftctl", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert "Traceback" not in out + demo.stderr
    for expected in (
        "RECEIPT_ALREADY_USED",  # a replayed receipt refused
        "granted 100 coins",  # the promotion
        "KYC verified",
        "ana sent Rose x10 to cara",  # the watcher's feed
        "ben sent Lion x1 to cara",
        "net is BELOW the minimum payout",
        "net meets the minimum payout",
        ": paid",  # the payout
        "INSUFFICIENT_FUNDS",  # the refused Universe
        "giftcoin-wallet",  # the trace tree reaches every service
        "giftcoin-payout",
        "stopped: gifting exit 0, payout exit 0, wallet exit 0",
    ):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"


def test_demo_with_json_prints_one_json_object_a_line() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "services.giftctl", "demo", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    records = [json.loads(line) for line in demo.stdout.splitlines()]
    assert records[0]["demo"] == "starting" and records[-1]["demo"] == "finished"
    assert [r["step"] for r in records if "step" in r] == list(range(1, 16))
    refused = [r["refused"]["reason"] for r in records if "refused" in r]
    assert refused == ["RECEIPT_ALREADY_USED", "INSUFFICIENT_FUNDS"]
    sent = [r["feed"]["transfer"]["gift_id"] for r in records if "feed" in r]
    assert sent == ["rose", "lion"]
    assert any(r.get("command") == "giftctl --as user:cara payout request" for r in records)
    assert {"stopped": {"gifting": 0, "payout": 0, "wallet": 0}} in records
    [reconciled] = [r["reconciliation"] for r in records if "reconciliation" in r]
    assert reconciled["ok"] is True and reconciled["discrepancies"] == []
    assert (reconciled["completed"], reconciled["failed"]) == (2, 1)


def test_free_ports_handed_out_one_after_another_are_never_the_same() -> None:
    # The kernel may give the same free port to two binds in a row; services started on a port each
    # would then race for it (the CI failure where gifting's health check answered from payout).
    # 2,000 random draws from ~28,000 ephemeral ports repeat one almost surely.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
