"""The shape of one RPC subcommand: what it calls, who may call it, and how it builds the request."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from services.giftctl.arguments import integer, moment
from services.giftctl.session import Session


class Who(Enum):
    """Which identity a subcommand needs (`--as`), checked before any call is made."""

    USER = "user"
    OPERATOR = "operator"
    ANYONE = "anyone"


@dataclass(frozen=True)
class RpcCommand:
    service: str  # wallet | gifting | payout: named when it is unreachable
    method: str  # the RPC, e.g. "PurchaseCoins"
    who: Who
    run: Callable[[Session, argparse.Namespace], Message]


def paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=integer(0, 500), default=0, help="at most this many (default 50)")
    parser.add_argument("--page-token", default="", help="the 'more:' token of the previous page")


OPERATOR_NOTE = "[operator] needs --as operator:<id>. "


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value.astimezone(UTC))
    return result


def window(parser: argparse.ArgumentParser, what: str) -> None:
    """--since / --until: the window of create times a listing or summary covers."""
    parser.add_argument("--since", type=moment, metavar="TIME", help=f"{what} made at or after: ISO 8601, or 2h ago")
    parser.add_argument("--until", type=moment, metavar="TIME", help=f"{what} made before (default: now)")


def summary_window(parser: argparse.ArgumentParser) -> None:
    """--since (required) / --until: the window a summary of the books covers."""
    parser.add_argument("--since", type=moment, required=True, metavar="TIME", help="ISO 8601, or 24h ago")
    parser.add_argument("--until", type=moment, metavar="TIME", help="default: now")


def summary_request(request: Any, args: argparse.Namespace) -> Any:
    """A SummarizeBooksRequest of --since and --until (default now)."""
    request.start_time.CopyFrom(stamp(args.since))
    request.end_time.CopyFrom(stamp(args.until or datetime.now(UTC)))
    return request


def set_window(request: Any, args: argparse.Namespace) -> None:
    """The request's start_time / end_time from --since / --until."""
    if args.since is not None:
        request.start_time.CopyFrom(stamp(args.since))
    if args.until is not None:
        request.end_time.CopyFrom(stamp(args.until))


def operator_leaf(
    commands: Any,
    parents: list[argparse.ArgumentParser],
    name: str,
    summary: str,
    command: RpcCommand,
    details: str = "",
) -> argparse.ArgumentParser:
    """An operator's subcommand in a group of them (wallet promotion create, payout creator list, ...)."""
    parser = commands.add_parser(name, parents=parents, help=summary, description=OPERATOR_NOTE + (details or summary))
    parser.set_defaults(rpc=command, prog=parser.prog)
    return parser
