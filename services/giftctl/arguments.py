"""argparse types: each turns a bad value into argparse's one-line usage error."""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from giftcoin.common.v1 import common_pb2

from services.runtime.auth import Caller, CallerKind

_HOST_PORT = re.compile(r"^[^\s:]+:\d{1,5}$")
_DURATION = re.compile(r"^(\d{1,9})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def identity(value: str) -> Caller:
    kind, _, ident = value.partition(":")
    if kind not in ("user", "operator") or not ident:
        raise argparse.ArgumentTypeError(f"expected user:<id> or operator:<id>, got {value!r}")
    return Caller(CallerKind(kind), ident)


def target(value: str) -> str:
    if not _HOST_PORT.match(value):
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return value


def request_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID, got {value!r}") from None


def birth_date(value: str) -> common_pb2.Date:
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from None
    return common_pb2.Date(year=parsed.year, month=parsed.month, day=parsed.day)


def country(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", value):
        raise argparse.ArgumentTypeError(f"expected a two-letter country code (US), got {value!r}")
    return value.upper()


def currency(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise argparse.ArgumentTypeError(f"expected a three-letter currency code (USD), got {value!r}")
    return value.upper()


def timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time (2026-01-31T12:00:00Z), got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def moment(value: str) -> datetime:
    """A point in time: ISO 8601 (2026-01-31T12:00:00Z), or a duration back from now (90m, 2h, 7d)."""
    match = _DURATION.match(value)
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        return timestamp(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (2026-01-31T12:00:00Z) or a duration back from now (90m, 2h, 7d), got {value!r}"
        ) from None


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected {bounds}, got {number}")
        return number

    parse.__name__ = "number"  # argparse names the type in its message
    return parse


@dataclass(frozen=True, eq=False)  # hashable by identity: argparse looks types up in a registry
class Choice:
    """A choice on the command line mapped to an enum value of the contracts."""

    values: dict[str, int]

    def __call__(self, value: str) -> int:
        if value not in self.values:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(self.values)}, got {value!r}")
        return self.values[value]

    @property
    def names(self) -> str:
        return "|".join(self.values)
