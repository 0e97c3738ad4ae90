"""One SendGift is one trace across the three services (SPEC §8), with the services as processes.

Each service writes its spans to its own file (GIFTCOIN_TRACE_EXPORTER=file); the test joins them
by trace and parent ids. The caller's span is the root: the test sends its W3C traceparent.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.runtime.errors import from_rpc_error
from services.wallet.receipts import mint_receipt
from tests.observability.traced import read_spans, traced_suite
from tests.support.identity import as_caller, user
from tests.support.processes import ServiceProcess

DOB = common_pb2.Date(year=1990, month=1, day=1)


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    with traced_suite(tmp_path) as processes:
        yield {**processes, "dir": tmp_path}  # type: ignore[dict-item]


def test_one_send_is_one_trace_across_gifting_wallet_and_payout(suite) -> None:
    viewer, creator = user("viewer-t"), user("creator-t")
    wallet = wallet_pb2_grpc.WalletServiceStub(suite["wallet"].channel())
    payout = payout_pb2_grpc.PayoutServiceStub(suite["payout"].channel())
    gifting = gifting_pb2_grpc.GiftingServiceStub(suite["gifting"].channel())
    wallet.OpenWallet(
        wallet_pb2.OpenWalletRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
        metadata=as_caller(viewer),
    )
    wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(
            request_id=str(uuid.uuid4()),
            package_id="coins_70",
            receipt=wallet_pb2.Receipt(store="sandbox", payload=mint_receipt("coins_70")),
        ),
        metadata=as_caller(viewer),
    )
    payout.RegisterCreator(
        payout_pb2.RegisterCreatorRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
        metadata=as_caller(creator),
    )

    trace_id, root_span_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = ("traceparent", f"00-{trace_id}-{root_span_id}-01")
    sent = gifting.SendGift(
        gifting_pb2.SendGiftRequest(
            request_id=str(uuid.uuid4()),
            gift_id="rose",
            quantity=10,
            recipient_id="creator-t",
            target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="stream-1"),
        ),
        metadata=(*as_caller(viewer), traceparent),
    )
    assert sent.transfer.state == gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED

    # Spans are written when they end; the server spans end just after the response is sent.
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in read_spans(suite["dir"]) if s["trace_id"] == trace_id]
        names = {(s["service"], s["kind"], s["name"]) for s in spans}
        if ("giftcoin-gifting", "SERVER", "/giftcoin.gifting.v1.GiftingService/SendGift") in names or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    by_id = {s["span_id"]: s for s in spans}

    def server(service: str, method: str) -> dict:
        found = [
            s
            for s in spans
            if s["service"] == f"giftcoin-{service}" and s["kind"] == "SERVER" and s["name"].endswith("/" + method)
        ]
        assert len(found) == 1, f"{service} {method}: {len(found)} server spans in the trace"
        return found[0]

    send = server("gifting", "SendGift")
    assert send["parent_span_id"] == root_span_id  # gifting's server span is the caller's child
    for service, method in (
        ("wallet", "BatchHoldCoins"),
        ("payout", "BatchCreditDiamonds"),
        ("wallet", "BatchCaptureHolds"),
    ):
        span = server(service, method)
        parent = by_id[span["parent_span_id"]]  # a gifting client span of the same trace
        assert (parent["service"], parent["kind"]) == ("giftcoin-gifting", "CLIENT")
        assert parent["name"].endswith("/" + method)
        # ... which descends from gifting's server span for the send
        ancestor = parent
        while ancestor["span_id"] != send["span_id"]:
            ancestor = by_id[ancestor["parent_span_id"]]
        # database spans under each service's server span
        children = [
            s
            for s in spans
            if s["parent_span_id"] == span["span_id"]
            or by_id.get(s["parent_span_id"], {}).get("parent_span_id") == span["span_id"]
        ]
        assert any(s["kind"] == "CLIENT" and "db.system" in s["attributes"] for s in children), (
            f"no database span under {service} {method}"
        )
    assert {s["service"] for s in spans} == {"giftcoin-gifting", "giftcoin-wallet", "giftcoin-payout"}
    assert any(s["attributes"].get("giftcoin.gift_id") == sent.transfer.transfer_id for s in spans)


def metric_points(path: Path, name: str) -> list[dict]:
    """The data points of metric `name` in the last export of a metrics file (one export per line;
    cumulative temporality, so the last export holds the totals)."""
    points = []
    last = path.read_text().splitlines()[-1]
    for resource in json.loads(last)["resource_metrics"]:
        for scope in resource["scope_metrics"]:
            for metric in scope["metrics"]:
                if metric["name"] == name:
                    points += metric["data"]["data_points"]
    return points


def test_the_file_exporter_writes_the_metrics_beside_the_spans(suite) -> None:
    viewer, creator = user("viewer-m"), user("creator-m")
    wallet = wallet_pb2_grpc.WalletServiceStub(suite["wallet"].channel())
    payout = payout_pb2_grpc.PayoutServiceStub(suite["payout"].channel())
    gifting = gifting_pb2_grpc.GiftingServiceStub(suite["gifting"].channel())
    wallet.OpenWallet(
        wallet_pb2.OpenWalletRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
        metadata=as_caller(viewer),
    )
    payout.RegisterCreator(
        payout_pb2.RegisterCreatorRequest(request_id=str(uuid.uuid4()), date_of_birth=DOB, country_code="US"),
        metadata=as_caller(creator),
    )
    request = gifting_pb2.SendGiftRequest(
        request_id=str(uuid.uuid4()),
        gift_id="rose",
        quantity=10,
        recipient_id="creator-m",
        target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="stream-m"),
    )
    with pytest.raises(grpc.RpcError) as refused:  # no coins yet: a refusal, counted
        gifting.SendGift(request, metadata=as_caller(viewer))
    assert getattr(from_rpc_error(refused.value), "reason", "") == "INSUFFICIENT_FUNDS"
    wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(
            request_id=str(uuid.uuid4()),
            package_id="coins_70",
            receipt=wallet_pb2.Receipt(store="sandbox", payload=mint_receipt("coins_70")),
        ),
        metadata=as_caller(viewer),
    )
    request.request_id = str(uuid.uuid4())
    assert gifting.SendGift(request, metadata=as_caller(viewer)).transfer.state == (
        gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
    )
    assert suite["gifting"].terminate() == 0  # a graceful stop flushes the metrics

    path = suite["dir"] / "metrics-gifting.jsonl"
    outcomes = {
        (p["attributes"]["giftcoin.gift.state"], p["attributes"].get("error.type", "")): p["value"]
        for p in metric_points(path, "giftcoin.gifting.saga.outcomes")
    }
    assert outcomes == {("completed", ""): 1, ("failed", "INSUFFICIENT_FUNDS"): 1}
    assert [p["value"] for p in metric_points(path, "giftcoin.coins.moved")] == [10]
    assert [p["value"] for p in metric_points(path, "giftcoin.diamonds.moved")] == [5]
    send = "giftcoin.gifting.v1.GiftingService/SendGift"
    calls = {
        (p["attributes"]["rpc.response.status_code"], p["attributes"].get("error.type", "")): p["count"]
        for p in metric_points(path, "rpc.server.call.duration")
        if p["attributes"]["rpc.method"] == send
    }
    assert calls == {("OK", ""): 1, ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"): 1}
