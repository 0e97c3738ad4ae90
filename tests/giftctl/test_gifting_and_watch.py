"""Gifting commands and `giftctl watch` against the three services as real processes, including a
restart of gifting while a viewer watches: the feed resumes after the last gift shown."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from giftcoin.gifting.v1 import gifting_pb2

from services.giftctl import cli
from services.giftctl.feed import Follower
from services.giftctl.session import ANONYMOUS, Session
from tests.support.processes import ServiceProcess

STREAM = "live-test-1"


class Suite:
    def __init__(self, tmp_path: Path) -> None:
        self.wallet = ServiceProcess("wallet", f"sqlite:///{tmp_path / 'wallet.db'}", log_dir=tmp_path)
        self.payout = ServiceProcess("payout", f"sqlite:///{tmp_path / 'payout.db'}", log_dir=tmp_path)
        self.gifting = ServiceProcess(
            "gifting",
            f"sqlite:///{tmp_path / 'gifting.db'}",
            env={
                "GIFTCOIN_GIFTING_WALLET_TARGET": self.wallet.target,
                "GIFTCOIN_GIFTING_PAYOUT_TARGET": self.payout.target,
            },
            log_dir=tmp_path,
        )
        self.targets = {"wallet": self.wallet.target, "gifting": self.gifting.target, "payout": self.payout.target}
        self.options = [f"--{name}={target}" for name, target in self.targets.items()]

    def processes(self) -> list[ServiceProcess]:
        return [self.wallet, self.payout, self.gifting]


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    running = Suite(tmp_path)
    try:
        for process in running.processes():
            process.start()
        yield running
    finally:
        for process in running.processes():
            if process.proc is not None and process.proc.poll() is None:
                process.terminate()


def giftctl_json(suite: Suite, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status = cli.main([*argv, "--json", *suite.options])
    out, err = capsys.readouterr()
    assert (status, err) == (0, ""), err
    return json.loads(out)


def send_rose(suite: Suite, capsys: pytest.CaptureFixture[str], quantity: int) -> dict[str, Any]:
    argv = ["--as", "user:ana", "gifting", "send", "rose", "--quantity", str(quantity), "--to", "cara"]
    transfer: dict[str, Any] = giftctl_json(suite, capsys, *argv, "--stream", STREAM)["transfer"]
    assert transfer["state"] == "GIFT_TRANSFER_STATE_COMPLETED"
    return transfer


def wait_until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_gifts_sent_reach_the_watcher_once_each_in_order_across_a_gifting_restart(
    suite: Suite, capsys: pytest.CaptureFixture[str]
) -> None:
    giftctl_json(suite, capsys, "--as", "user:ana", "wallet", "open", "--birth-date", "1994-05-17", "--country", "US")
    giftctl_json(suite, capsys, "--as", "user:ana", "wallet", "buy", "--package", "coins_70")
    giftctl_json(
        suite, capsys, "--as", "user:cara", "payout", "register", "--birth-date", "1991-02-03", "--country", "US"
    )

    seen: list[gifting_pb2.WatchGiftsResponse] = []
    reconnects: list[str] = []
    session = Session(ANONYMOUS, suite.targets)
    follower = Follower(
        session,
        gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=STREAM),
        on_event=seen.append,
        on_reconnect=lambda why, _delay: reconnects.append(why),
    )
    watching = threading.Thread(target=follower.run, daemon=True)
    watching.start()
    try:
        wait_until(follower.subscribed.is_set)
        time.sleep(0.5)  # the server registers the subscription ("from now on") before the first gift
        first = send_rose(suite, capsys, 3)
        wait_until(lambda: len(seen) == 1)

        assert suite.gifting.terminate() == 0
        suite.gifting.start()
        # Sent as soon as gifting is back, likely before the watcher has reconnected: it must not be missed.
        second = send_rose(suite, capsys, 1)
        third = send_rose(suite, capsys, 2)
        wait_until(lambda: len(seen) == 3)
        time.sleep(0.3)  # nothing more arrives: no gift twice
    finally:
        follower.stop()
        watching.join(10)
        session.close()

    assert not watching.is_alive()
    assert reconnects, "the watcher never lost its stream"
    assert [e.sequence for e in seen] == [1, 2, 3]
    assert [e.transfer.transfer_id for e in seen] == [first["transfer_id"], second["transfer_id"], third["transfer_id"]]
    assert [e.combo_count for e in seen] == [1, 2, 3]

    # `watch --after N --count M --json`: one JSON object per line, resuming after N.
    status = cli.main(["watch", STREAM, "--after", "1", "--count", "2", "--json", *suite.options])
    out, _ = capsys.readouterr()
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["sequence"], line["transfer"]["quantity"]) for line in lines] == [(2, 1), (3, 2)]

    # The other gifting commands, as the two sides of the gifts see them.
    sent = giftctl_json(suite, capsys, "--as", "user:ana", "gifting", "sent")["transfers"]
    assert [t["transfer_id"] for t in sent] == [third["transfer_id"], second["transfer_id"], first["transfer_id"]]
    received = giftctl_json(suite, capsys, "--as", "user:cara", "gifting", "received", "--page-size", "2")
    assert len(received["transfers"]) == 2 and received["next_page_token"]
    one = giftctl_json(suite, capsys, "--as", "user:cara", "gifting", "transfer", first["transfer_id"])["transfer"]
    assert one == first
    board = giftctl_json(suite, capsys, "gifting", "leaderboard", "--stream", STREAM)["entries"]
    assert board == [{"rank": 1, "user_id": "ana", "coins": 6, "gifts": 6}]
    by_creator = giftctl_json(suite, capsys, "gifting", "leaderboard", "--creator", "cara")["entries"]
    assert by_creator == board

    status = cli.main(["--as", "user:bob", "gifting", "transfer", first["transfer_id"], *suite.options])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("giftctl: gifting refused: PERMISSION_DENIED PERMISSION_DENIED: user:bob is neither")
