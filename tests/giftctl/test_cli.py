"""giftctl's command line without services: help, argument errors, services that are down."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2

from services.giftctl import cli
from services.giftctl.command import RpcCommand, Who
from services.giftctl.suite import ROOT, free_port
from services.gifting import app as gifting_app
from services.payout import app as payout_app
from services.runtime.auth import CallerKind
from services.wallet import app as wallet_app

DOCS = (ROOT / "docs" / "giftctl.md").read_text()

# Internal RPCs (only the gifting service may call them) have no command; WatchGifts is `giftctl watch`.
INTERNAL = {
    "HoldCoins",
    "CaptureHold",
    "ReleaseHold",
    "CreditDiamonds",
    "BatchHoldCoins",
    "BatchCaptureHolds",
    "BatchCreditDiamonds",
}
# The RPCs an operator may call and a user may not (operator-only, and the reconciler's reads): the
# services' own access tables say which.
OPERATOR_RPCS = {
    name
    for access_table in (wallet_app.ACCESS, gifting_app.ACCESS, payout_app.ACCESS)
    for name, access in access_table.items()
    if CallerKind.OPERATOR in access.kinds and CallerKind.USER not in access.kinds
}
SERVICE_DESCRIPTORS = {
    "wallet": wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
    "gifting": gifting_pb2.DESCRIPTOR.services_by_name["GiftingService"],
    "payout": payout_pb2.DESCRIPTOR.services_by_name["PayoutService"],
}


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that runs something (no further subcommands)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found.extend(leaf_parsers(child))
            return found
    return [parser]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse: --help and usage errors
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_top_level_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.giftctl", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    commands = ("wallet", "gifting", "payout", "up", "watch", "trace", "reconcile", "demo")
    for command in (*commands, "--as", "--json", "--request-id"):
        assert command in result.stdout


def test_every_user_facing_rpc_has_a_subcommand_with_help_and_operator_ones_are_marked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli.build_parser()
    commands: dict[tuple[str, str], tuple[RpcCommand, argparse.ArgumentParser]] = {}
    for leaf in leaf_parsers(parser):
        command = leaf.get_default("rpc")
        if command is not None:
            commands[(command.service, command.method)] = (command, leaf)

    expected = {
        (service, method.name)
        for service, descriptor in SERVICE_DESCRIPTORS.items()
        for method in descriptor.methods
        if method.name not in INTERNAL and method.name != "WatchGifts"
    }
    assert set(commands) == expected

    for (_service, method), (command, leaf) in commands.items():
        assert leaf.description, f"{leaf.prog} has no description"
        is_operator = method in OPERATOR_RPCS
        assert (command.who is Who.OPERATOR) == is_operator
        assert ("[operator]" in leaf.description) == is_operator, leaf.prog
        status, out, _ = run([*leaf.prog.split()[1:], "--help"], capsys)
        assert status == 0
        assert out.startswith(f"usage: {leaf.prog}")
        assert "--json" in out and "--as" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--as", "bob", "wallet", "get"], "argument --as: expected user:<id> or operator:<id>, got 'bob'"),
        (["wallet", "open", "--birth-date", "17/05/1994", "--country", "US"], "expected YYYY-MM-DD, got '17/05/1994'"),
        (["gifting", "send", "rose", "--to", "cara"], "one of the arguments --stream --video is required"),
        (["gifting", "send", "rose", "--to", "cara", "--stream", "s", "--quantity", "0"], "expected 1..9999, got 0"),
        (["payout", "quote", "--diamonds", "lots"], "expected a whole number, got 'lots'"),
        (["--request-id", "42", "wallet", "get"], "argument --request-id: expected a UUID, got '42'"),
        (["wallet", "get", "--wallet", "localhost"], "argument --wallet: expected host:port, got 'localhost'"),
        (["payout", "destination", "--kind", "cash", "--account", "x"], "expected one of sandbox, bank, paypal"),
        (["wallet", "mint"], "invalid choice: 'mint'"),
    ],
)
def test_a_wrong_argument_is_one_line_of_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(argv, capsys)
    assert (status, out) == (2, "")
    [line] = err.splitlines()  # the one line docs/giftctl.md shows, no usage block before it
    if argv[:2] == ["wallet", "open"]:
        assert f"{line}\n" in DOCS
    assert line.startswith("giftctl") and ": error: " in line
    assert message in line
    # --json: the same error as one JSON object.
    status, out, err = run([*argv, "--json"], capsys)
    assert (status, out) == (2, "")
    error = json.loads(err)["error"]
    assert message in error["message"] and error["exit_status"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wallet", "get"], "wallet get: acts for a user: pass --as user:<id>"),
        (["--as", "operator:ops", "payout", "earnings"], "payout earnings: acts for a user"),
        (["--as", "user:ana", "wallet", "refund", "tx-1"], "wallet refund: is an operator command"),
    ],
)
def test_the_wrong_identity_is_refused_before_calling(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(argv, capsys)
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith(f"giftctl: {message}")  # one prefix, not "giftctl: giftctl wallet get: ..."
    if argv == ["wallet", "get"]:
        assert f"{line}\n" in DOCS  # as docs/giftctl.md shows it


@pytest.mark.parametrize(
    ("service", "argv"),
    [
        ("wallet", ["--as", "user:ana", "wallet", "get"]),
        ("wallet", ["wallet", "packages", "--json"]),
        ("gifting", ["--as", "user:ana", "gifting", "send", "rose", "--to", "cara", "--stream", "s1"]),
        ("payout", ["--as", "operator:ops", "payout", "creator", "verify", "cara"]),
        ("gifting", ["watch", "s1"]),
    ],
)
def test_a_service_that_is_down_is_named_in_one_line(
    service: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    status, out, err = run([*argv, f"--{service}", target], capsys)
    assert (status, out) == (1, "")
    [line] = err.splitlines()
    if argv == ["watch", "s1"]:  # docs/giftctl.md shows it with gifting's default address
        assert f"{line.replace(target, '127.0.0.1:50052')}\n" in DOCS
    if "--json" in argv:
        assert json.loads(line)["error"]["message"].startswith(f"{service} at {target} is not reachable")
    else:
        assert line.startswith(f"giftctl: {service} at {target} is not reachable")


def test_options_work_before_and_after_the_subcommand() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--as", "user:ana", "--json", "--wallet", "10.0.0.1:1", "wallet", "get"])
    after = parser.parse_args(["wallet", "get", "--as", "user:ana", "--json", "--wallet", "10.0.0.1:1"])
    for args in (before, after):
        assert args.identity.subject == "user:ana"
        assert args.json is True
        assert args.wallet_target == "10.0.0.1:1"
        assert args.gifting_target == "127.0.0.1:50052"


def test_targets_and_identity_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIFTCOIN_PAYOUT_TARGET", "payout.internal:7000")
    monkeypatch.setenv("GIFTCTL_AS", "operator:ops")
    args = cli.build_parser().parse_args(["payout", "creator", "verify", "cara"])
    assert args.payout_target == "payout.internal:7000"
    assert args.identity.subject == "operator:ops"
