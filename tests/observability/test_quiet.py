"""Traces a person can read: an idle suite emits no spans, background loops trace only the work they find,
a gift's log lines carry its trace id, and every RPC leaves one access-log line.

The services run as processes, their loops ticking every fraction of a second, each writing its spans to
a file of its own (GIFTCOIN_TRACE_EXPORTER=file) and its JSON logs to the process's log.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.wallet.receipts import mint_receipt
from tests.gifting.harness import wait_for
from tests.observability.traced import read_spans, traced_suite
from tests.support.identity import as_caller, user
from tests.support.processes import ServiceProcess

DOB = common_pb2.Date(year=1990, month=1, day=1)
TICKING = {  # every loop ticks several times a second
    "GIFTCOIN_WALLET_HOLD_EXPIRY_INTERVAL_SECONDS": "1",
    "GIFTCOIN_WALLET_REAPER_INTERVAL_SECONDS": "1",
    "GIFTCOIN_PAYOUT_PROCESSOR_INTERVAL_MS": "200",
    "GIFTCOIN_PAYOUT_REAPER_INTERVAL_SECONDS": "1",
    "GIFTCOIN_GIFTING_RECOVERY_INTERVAL_MS": "200",
    "GIFTCOIN_GIFTING_REAPER_INTERVAL_SECONDS": "1",
    "GIFTCOIN_GIFTING_FEED_POLL_MS": "100",
    "GIFTCOIN_GIFTING_STEP_DEADLINE_MS": "1000",
    "GIFTCOIN_GIFTING_LEASE_SECONDS": "3",
    "GIFTCOIN_GIFTING_RETRY_MAX_SECONDS": "1",
}


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    with traced_suite(tmp_path, TICKING, graceful=False) as processes:
        yield processes


def log_lines(process: ServiceProcess) -> list[dict]:
    path = process.log_dir / f"{process.service}-{process.port}.log"
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def send(suite: dict[str, ServiceProcess], trace_id: str) -> gifting_pb2.GiftTransfer:
    """A viewer with coins sends a rose to a creator, in the trace `trace_id`."""
    viewer, creator = user("viewer-q"), user("creator-q")
    wallet = wallet_pb2_grpc.WalletServiceStub(suite["wallet"].channel())
    wallet.OpenWallet(
        wallet_pb2.OpenWalletRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
        metadata=as_caller(viewer),
    )
    receipt = wallet_pb2.Receipt(store="sandbox", payload=mint_receipt("coins_70"))
    wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(request_id=str(uuid.uuid4()), package_id="coins_70", receipt=receipt),
        metadata=as_caller(viewer),
    )
    if suite["payout"].proc is not None and suite["payout"].proc.poll() is None:
        payout_pb2_grpc.PayoutServiceStub(suite["payout"].channel()).RegisterCreator(
            payout_pb2.RegisterCreatorRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
            metadata=as_caller(creator),
        )
    request = gifting_pb2.SendGiftRequest(
        request_id=str(uuid.uuid4()),
        gift_id="rose",
        quantity=2,
        recipient_id="creator-q",
        target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="stream-q"),
    )
    traceparent = ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    gifting = gifting_pb2_grpc.GiftingServiceStub(suite["gifting"].channel())
    return gifting.SendGift(request, metadata=(*as_caller(viewer), traceparent), timeout=30).transfer


def test_an_idle_suite_emits_no_spans_and_its_loops_trace_only_the_work_they_find(
    suite: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    time.sleep(5)  # a few dozen ticks of every loop, with nothing to do
    assert read_spans(tmp_path) == []
    trace_id = secrets.token_hex(16)
    gift = send(suite, trace_id)
    assert gift.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
    wait_for(lambda: any(s["trace_id"] == trace_id for s in read_spans(tmp_path)), what="the gift's spans")
    time.sleep(3)  # the loops tick on: still nothing of their own
    roots = [s for s in read_spans(tmp_path) if not s["parent_span_id"]]
    assert all(s["kind"] == "SERVER" for s in roots), [s["name"] for s in roots if s["kind"] != "SERVER"]


def test_a_gifts_log_lines_carry_its_trace_id_and_every_rpc_has_an_access_line(
    suite: dict[str, ServiceProcess],
) -> None:
    suite["payout"].kill()  # the gift's credit gets no answer: it is postponed, and says so in the log
    trace_id = secrets.token_hex(16)
    gift = send(suite, trace_id)
    assert gift.state == gifting_pb2.GIFT_TRANSFER_STATE_PENDING
    wait_for(
        lambda: any("postponed" in line["message"] for line in log_lines(suite["gifting"])),
        what="the postponement logged",
    )
    about_the_gift = [line for line in log_lines(suite["gifting"]) if gift.transfer_id in line["message"]]
    assert about_the_gift and {line.get("trace_id") for line in about_the_gift} == {trace_id}
    access = [line for line in log_lines(suite["gifting"]) if line["logger"] == "giftcoin.access"]
    sent = [line for line in access if line["rpc_method"] == "SendGift"]
    assert len(sent) == 1 and sent[0]["rpc_code"] == "OK" and sent[0]["caller_kind"] == "user"
    assert sent[0]["duration_ms"] > 0 and sent[0]["trace_id"] == trace_id
    assert any(line["rpc_method"] == "OpenWallet" for line in log_lines(suite["wallet"]) if "rpc_method" in line)
