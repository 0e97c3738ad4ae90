"""`giftctl demo` (`make demo`): start the suite and walk the story through the public RPCs.

Every step is a real giftctl command: the demo prints its command line, runs it through the same
code as the command line does, and prints what giftctl prints. The suite runs in a temporary
directory on free ports, so the demo never touches `.data/` or a suite already running.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from google.protobuf.message import Message

from services.giftctl import arguments, render, traces
from services.giftctl.feed import Follower
from services.giftctl.parser import build_parser
from services.giftctl.reconcile_cli import reconciliation
from services.giftctl.session import ANONYMOUS, SERVICES, CliError, Session
from services.giftctl.suite import Suite, describe, free_port
from services.reconciler import to_json
from services.runtime.auth import Caller
from services.runtime.telemetry import setup_tracing, shutdown_tracing

STREAM = "live-cara-1"
OPERATOR = "operator:ops"
WAIT_SECONDS = 30.0
# The demo's payout processor runs often, so that a payout is paid within a second or two.
SUITE_ENV = {"GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": "200"}


class Story:
    """Prints numbered steps and runs giftctl commands as the story's characters: as text, or (`as_json`)
    as one JSON object per line, each a step, a command and its response or refusal, or a note."""

    def __init__(self, targets: dict[str, str], out: Callable[[str], None], as_json: bool = False) -> None:
        self.targets = targets
        self.out = out
        self.as_json = as_json
        self.parser = build_parser()
        self.sessions: dict[Caller, Session] = {}
        self.number = 0

    def emit(self, text: str, **record: Any) -> None:
        """`text` for a reader, or `record` as a JSON line for a machine."""
        self.out(json.dumps(record, sort_keys=True) if self.as_json else text)

    def step(self, title: str) -> None:
        self.number += 1
        self.emit(f"\n== {self.number}. {title}", step=self.number, title=title)

    def note(self, text: str) -> None:
        self.emit(_indent(text), note=text)

    def session(self, caller: Caller) -> Session:
        if caller not in self.sessions:
            self.sessions[caller] = Session(caller, self.targets)
        return self.sessions[caller]

    def run(self, command_line: str) -> Any:
        """Run one giftctl RPC command (printed as typed) and print its output; returns the response."""
        argv = shlex.split(command_line)
        if not self.as_json:
            self.out(f"$ giftctl {command_line}")
        args = self.parser.parse_args(argv)
        session = self.session(args.identity or ANONYMOUS)
        try:
            response: Message = args.rpc.run(session, args)
        except grpc.RpcError as err:
            raise session.failure(args.rpc.service, err) from None
        self.emit(_indent(render.text(response)), command=f"giftctl {command_line}", response=render.to_dict(response))
        return response

    def reconcile(self, command_line: str) -> None:
        """Run `giftctl reconcile` (printed as typed) and print its report; CliError unless the books agree."""
        if not self.as_json:
            self.out(f"$ giftctl {command_line}")
        args = self.parser.parse_args(shlex.split(command_line))
        for service in SERVICES:
            setattr(args, f"{service}_target", self.targets[service])
        report = reconciliation(args)
        self.emit(
            _indent(render.reconciliation(report)), command=f"giftctl {command_line}", reconciliation=to_json(report)
        )
        if not report.ok:
            raise CliError(f"the reconciliation found {len(report.discrepancies)} discrepancies")

    def refused(self, command_line: str) -> str:
        """Run a command expected to be refused; print and return the refusal."""
        try:
            response = self.run(command_line)
        except CliError as error:
            self.emit(_indent(f"refused: {error.message}"), command=f"giftctl {command_line}", refused=error.details)
            return error.message
        raise CliError(f"expected `giftctl {command_line}` to be refused, got {response}")

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def _wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise CliError(f"demo: gave up waiting for {what}")
        time.sleep(0.1)


def _completed(story: Story, response: gifting_pb2.SendGiftResponse, sender: str) -> gifting_pb2.GiftTransfer:
    """A send's transfer once its saga has finished (SendGift may answer while it is still pending)."""
    transfer = response.transfer
    session = story.session(_caller(sender))
    while transfer.state == gifting_pb2.GIFT_TRANSFER_STATE_PENDING:
        time.sleep(0.1)
        request = gifting_pb2.GetGiftTransferRequest(transfer_id=transfer.transfer_id)
        try:
            transfer = session.gifting().GetGiftTransfer(request).transfer
        except grpc.RpcError as err:
            raise session.failure("gifting", err) from None
    return transfer


def _expect_completed(transfer: gifting_pb2.GiftTransfer) -> gifting_pb2.GiftTransfer:
    if transfer.state != gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED:
        raise CliError(f"expected the gift to complete: {render.transfer(transfer)}")
    return transfer


def _caller(subject: str) -> Caller:
    return arguments.identity(subject)


def walk(story: Story, data_dir: Path) -> None:
    run, step = story.run, story.step
    started = datetime.now(UTC)  # the window the story ends by reconciling

    step("The catalogues: coin packages and gifts")
    run("wallet packages")
    run("gifting gifts")

    step("Ana, a viewer, opens her wallet and buys 700 coins with a (sandbox) store receipt")
    run("--as user:ana wallet open --birth-date 1994-05-17 --country US")
    run("--as user:ana wallet buy --package coins_700 --transaction-id demo-ana-0001")
    story.note("... the same receipt again credits nothing:")
    story.refused("--as user:ana wallet buy --package coins_700 --transaction-id demo-ana-0001")

    step("An operator creates a welcome promotion; Ana claims it (promotional coins are spent first)")
    run(f"--as {OPERATOR} wallet promotion create welcome --name 'Welcome gift' --coins 100 --budget 10000")
    run("--as user:ana wallet claim welcome")

    step("Cara registers as a creator, is KYC-verified by an operator, and sets a sandbox payout destination")
    run("--as user:cara payout register --birth-date 1991-02-03 --country US")
    run(f"--as {OPERATOR} payout creator verify cara --status verified")
    run("--as user:cara payout destination --kind sandbox --account succeed --currency USD")

    step(f"Dan watches Cara's live stream {STREAM} (a WatchGifts stream in the background)")
    story.note(f"$ giftctl watch {STREAM}")
    feed: list[gifting_pb2.WatchGiftsResponse] = []
    watcher = Follower(
        story.session(_caller("user:dan")),
        gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=STREAM),
        on_event=feed.append,
    )
    thread = threading.Thread(target=watcher.run, name="demo-watch", daemon=True)
    thread.start()
    _wait_for("the watcher to subscribe", watcher.subscribed.is_set)
    time.sleep(0.5)  # let the server register the subscription before the first gift completes

    step("Ana sends a Rose combo (10 Roses) to Cara on the stream")
    rose = run(f"--as user:ana gifting send rose --quantity 10 --to cara --stream {STREAM}")
    _expect_completed(_completed(story, rose, "user:ana"))

    step("Ben, a big fan, buys the two largest packages and sends a Lion")
    run("--as user:ben wallet open --birth-date 1987-11-30 --country GB")
    run("--as user:ben wallet buy --package coins_17500")
    run("--as user:ben wallet buy --package coins_17500")
    lion_response = run(f"--as user:ben gifting send lion --to cara --stream {STREAM}")
    lion = _expect_completed(_completed(story, lion_response, "user:ben"))

    step("What Dan saw on the live feed")
    _wait_for("the live feed to show both gifts", lambda: len(feed) >= 2, timeout=10)
    for event in feed:
        story.emit(_indent(render.feed_event(event)), feed=render.to_dict(event))

    step("The stream's leaderboard")
    run(f"gifting leaderboard --stream {STREAM}")

    step("Cara's earnings")
    run("--as user:cara payout earnings")
    run("--as user:cara gifting received")

    step("Payout quotes: 1,000 diamonds is below the minimum payout; the whole balance is above it")
    run("--as user:cara payout quote --diamonds 1000")
    run("--as user:cara payout quote")

    step("Cara requests a payout of her whole balance; the sandbox provider pays it")
    requested = run("--as user:cara payout request")
    payout_id = requested.payout.payout_id
    cara = story.session(_caller("user:cara"))

    def settled() -> bool:
        try:
            payout = cara.payout().GetPayout(payout_pb2.GetPayoutRequest(payout_id=payout_id)).payout
        except grpc.RpcError as err:
            raise cara.failure("payout", err) from None
        return payout.state in (payout_pb2.PAYOUT_STATE_PAID, payout_pb2.PAYOUT_STATE_FAILED)

    _wait_for("the payout to be paid", settled)
    paid = run(f"--as user:cara payout payout {payout_id}").payout
    if paid.state != payout_pb2.PAYOUT_STATE_PAID:
        raise CliError(f"expected the sandbox payout to be paid: {render.payout(paid)}")
    run("--as user:cara payout earnings")

    step("Ana tries to send a Universe (34,999 coins) with the coins she has left: refused, she loses nothing")
    _refused_gift(story, f"--as user:ana gifting send universe --to cara --stream {STREAM}")
    run("--as user:ana wallet get")

    step(f"The trace of Ben's Lion ({lion.transfer_id}) across the services")
    story.note(f"$ giftctl trace {lion.transfer_id} --brief")
    spans = _gift_trace(data_dir, lion.transfer_id)
    for trace in spans:
        roots = traces.build_tree(trace)
        story.emit(_indent(traces.render_tree(roots, brief=True)), trace=[r.to_dict() for r in roots])

    watcher.stop()
    thread.join(5)

    step("The reconciliation of the demo's window: the three services' books agree, gift by gift")
    story.reconcile(f"reconcile --since {started.isoformat()}")


def _refused_gift(story: Story, command_line: str) -> None:
    """A refused send is either refused outright (an RPC error) or recorded as a failed transfer."""
    try:
        response = story.run(command_line)
    except CliError as error:
        story.emit(_indent(f"refused: {error.message}"), command=f"giftctl {command_line}", refused=error.details)
        return
    transfer = _completed(story, response, "user:ana")
    if transfer.state != gifting_pb2.GIFT_TRANSFER_STATE_FAILED:
        raise CliError(f"expected the Universe to be refused, but it is {render.transfer(transfer)}")
    story.note(f"failed: {transfer.failure_reason}")


def _gift_trace(data_dir: Path, gift_id: str) -> list[list[traces.Span]]:
    """The gift's trace(s), once spans from all three services have reached the span files."""
    wanted = {f"giftcoin-{name}" for name in SERVICES}
    found: list[list[traces.Span]] = []

    def complete() -> bool:
        nonlocal found
        found = traces.gift_traces(traces.read_spans(traces.span_files(data_dir)), gift_id)
        return wanted <= traces.services_in(span for trace in found for span in trace)

    try:
        _wait_for("the gift's spans from all three services", complete, timeout=5)
    except CliError:
        if not found:
            raise
    return found


def run_demo(data_dir: Path, keep_data: bool = False, out: Callable[[str], None] = print, as_json: bool = False) -> int:
    def say(text: str) -> None:
        out(text)
        sys.stdout.flush()

    targets = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    suite = Suite(data_dir, targets, SUITE_ENV)
    # giftctl's own calls are the root of each trace, next to the services' spans.
    setup_tracing("giftctl", "file", str(data_dir / "traces-giftctl.jsonl"))
    story = Story(targets, say, as_json)
    started = time.monotonic()
    try:
        story.emit(
            f"giftcoin demo: starting wallet, payout and gifting (dev mode, SQLite in {data_dir}) ...",
            demo="starting",
            data_dir=str(data_dir),
        )
        suite.start()
        story.emit("up:\n" + describe(suite), up=targets)
        walk(story, data_dir)
    except CliError as error:
        story.emit(f"\ndemo failed: {error.message}", demo="failed", error=error.details)
        return 1
    finally:
        story.close()
        shutdown_tracing()
        statuses = suite.stop()
        if statuses:
            stopped = ", ".join(f"{name} exit {code}" for name, code in statuses.items())
            story.emit(f"\nstopped: {stopped}", stopped=statuses)
        if keep_data:
            story.emit(f"data kept in {data_dir}", data_kept=str(data_dir))
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    seconds = int(time.monotonic() - started)
    story.emit(f"demo finished in {seconds}s", demo="finished", seconds=seconds)
    return 0
