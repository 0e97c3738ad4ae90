"""`giftctl trace`: a gift's trace read back from span files and printed as a tree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.giftctl import cli

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "00f067aa0ba902b7a3ce929d0e0e4736"
GIFT = "gift-0001"


def span(
    span_id: str,
    parent: str,
    name: str,
    service: str,
    start_ms: int,
    end_ms: int,
    trace_id: str = TRACE,
    status: str = "UNSET",
    **attributes: object,
) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": "SERVER",
        "service": service,
        "start_ns": start_ms * 1_000_000,
        "end_ns": end_ms * 1_000_000,
        "status": status,
        "attributes": attributes,
        "links": [],
    }


def write_spans(path: Path, spans: list[dict[str, object]]) -> None:
    with path.open("a", encoding="utf-8") as out:
        for item in spans:
            out.write(json.dumps(item) + "\n")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    # As three services write them: each its own file, spans in the order they end.
    write_spans(
        tmp_path / "traces-wallet.jsonl",
        [
            span(
                "00000000000000b1",
                "00000000000000a2",
                "/giftcoin.wallet.v1.WalletService/HoldCoins",
                "giftcoin-wallet",
                3,
                5,
            ),
            span("00000000000000d1", "00000000000000b1", "INSERT", "giftcoin-wallet", 4, 5, **{"db.system": "sqlite"}),
            span(
                "00000000000000b2",
                "00000000000000a4",
                "/giftcoin.wallet.v1.WalletService/CaptureHold",
                "giftcoin-wallet",
                9,
                10,
            ),
        ],
    )
    write_spans(
        tmp_path / "traces-payout.jsonl",
        [
            span(
                "00000000000000c1",
                "00000000000000a3",
                "/giftcoin.payout.v1.PayoutService/CreditDiamonds",
                "giftcoin-payout",
                6,
                8,
            )
        ],
    )
    write_spans(
        tmp_path / "traces-gifting.jsonl",
        [
            span("00000000000000a2", "00000000000000a1", "HoldCoins", "giftcoin-gifting", 2, 5),
            span("00000000000000a3", "00000000000000a1", "CreditDiamonds", "giftcoin-gifting", 5, 8),
            span("00000000000000a4", "00000000000000a1", "CaptureHold", "giftcoin-gifting", 8, 10),
            span(
                "00000000000000a1",
                "00000000000000f0",  # the caller's span, which no file holds
                "/giftcoin.gifting.v1.GiftingService/SendGift",
                "giftcoin-gifting",
                1,
                12,
                **{"giftcoin.gift_id": GIFT},
            ),
            # Another gift's trace, which must not show.
            span(
                "00000000000000e1",
                "",
                "/giftcoin.gifting.v1.GiftingService/SendGift",
                "giftcoin-gifting",
                20,
                21,
                trace_id=OTHER_TRACE,
                status="ERROR",
                **{"giftcoin.gift_id": "gift-0002"},
            ),
        ],
    )
    with (tmp_path / "traces-gifting.jsonl").open("a") as out:
        out.write('{"trace_id": "cut sho')  # a line still being written
    return tmp_path


def test_the_gifts_trace_prints_as_a_tree_across_services(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", GIFT, "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"trace {TRACE} (gift {GIFT}, 8 spans)"
    tree = [re.match(r"^(.*?giftcoin-\w+)", line).group(1) for line in lines[1:]]  # type: ignore[union-attr]
    assert tree == [
        "giftcoin-gifting",
        "├─ giftcoin-gifting",
        "│  └─ giftcoin-wallet",
        "│     └─ giftcoin-wallet",
        "├─ giftcoin-gifting",
        "│  └─ giftcoin-payout",
        "└─ giftcoin-gifting",
        "   └─ giftcoin-wallet",
    ]
    root = lines[1].split()
    assert root[1:] == ["/giftcoin.gifting.v1.GiftingService/SendGift", "11.000", "ms", "ok"]
    assert "CreditDiamonds" in lines[6] and lines[6].rstrip().endswith("2.000 ms  ok")
    assert "gift-0002" not in "".join(lines)


def test_brief_folds_database_spans_into_a_count(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", GIFT, "--data-dir", str(data_dir), "--brief"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 7
    assert "HoldCoins  (+1 db)" in lines[3]


def test_json_nests_children_under_their_parents(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", GIFT, "--data-dir", str(data_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trace_id"] == TRACE
    (root,) = printed["spans"]
    assert root["duration_ns"] == 11_000_000
    assert [child["name"] for child in root["children"]] == ["HoldCoins", "CreditDiamonds", "CaptureHold"]
    assert root["children"][1]["children"][0]["service"] == "giftcoin-payout"


def test_errors_show_their_reason(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spans(
        data_dir / "traces-gifting-2.jsonl",
        [span("00000000000000e9", "", "SendGift", "giftcoin-gifting", 30, 31, trace_id="ab" * 16, status="ERROR",
              **{"giftcoin.gift_id": "gift-0003", "giftcoin.error.reason": "INSUFFICIENT_FUNDS"})],
    )  # fmt: skip
    assert cli.main(["trace", "gift-0003", "--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("ERROR INSUFFICIENT_FUNDS")


def test_an_unknown_gift_or_missing_files_is_one_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", "gift-9999", "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().err == f"giftctl: no trace of gift gift-9999 in {data_dir}/traces-*.jsonl\n"
    empty = data_dir / "empty"
    empty.mkdir()
    assert cli.main(["trace", GIFT, "--data-dir", str(empty)]) == 1
    assert capsys.readouterr().err.startswith(f"giftctl: no span files in {empty}/")
