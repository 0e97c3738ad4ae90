"""The shape of one RPC subcommand: what it calls, who may call it, and how it builds the request."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from google.protobuf.message import Message

from services.giftctl.arguments import integer
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
