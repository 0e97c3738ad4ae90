"""Opaque page tokens (AIP-158): a cursor the server understands and the client only echoes.

A token is base64url JSON naming the list it pages and the cursor's values. A client cannot read it,
but it can change it, so every value decoded from one is checked before it reaches a query: of the
list it was made for, each value of its kind and within what the column holds (an integer position
within int64, a time within what both databases store, an id within its column's length). Anything
else is INVALID_ARGUMENT with a field violation on `page_token`, never an error of the database.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from services.runtime.errors import DomainError, FieldViolation, invalid_argument
from services.runtime.validation import INT64_MAX

# Far longer than any token this code makes (a list name, a time and an id), short enough to parse cheaply.
MAX_PAGE_TOKEN_LENGTH = 512
MAX_CURSOR_ID_LENGTH = 64  # transfer and payout ids (their columns: String(64))
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


class CursorValue(Enum):
    """The kinds of value a cursor holds."""

    POSITION = "position"  # a positive integer key (an autoincrement id), within int64
    INSTANT = "instant"  # an aware UTC time, ISO 8601 with offset +00:00, 1970..9999
    ID = "id"  # a printable id without spaces, at most MAX_CURSOR_ID_LENGTH characters


def encode_page_token(list_name: str, cursor: Mapping[str, int | str | datetime]) -> str:
    """A token for the page of `list_name` after `cursor` (datetimes as UTC ISO 8601)."""
    values = {k: v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v for k, v in cursor.items()}
    return base64.urlsafe_b64encode(json.dumps({"list": list_name, **values}, sort_keys=True).encode()).decode()


def decode_page_token(
    token: str, list_name: str, fields: Mapping[str, CursorValue], field: str = "page_token"
) -> dict[str, Any] | None:
    """The cursor in a token of `list_name`, each of `fields` checked and converted (POSITION -> int,
    INSTANT -> aware UTC datetime, ID -> str); None for the first page (an empty token);
    INVALID_ARGUMENT for anything this list did not make."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise _bad(field)
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError) as exc:
        raise _bad(field) from exc
    if not isinstance(cursor, dict) or cursor.get("list") != list_name or set(cursor) != {"list", *fields}:
        raise _bad(field)
    decoded: dict[str, Any] = {}
    for name, kind in fields.items():
        value = _value(cursor[name], kind)
        if value is None:
            raise _bad(field)
        decoded[name] = value
    return decoded


def _value(raw: object, kind: CursorValue) -> int | str | datetime | None:
    if kind is CursorValue.POSITION:
        ok = isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw <= INT64_MAX
        return raw if ok else None  # type: ignore[return-value]
    if not isinstance(raw, str):
        return None
    if kind is CursorValue.ID:
        ok = 0 < len(raw) <= MAX_CURSOR_ID_LENGTH and raw.isascii() and raw.isprintable() and " " not in raw
        return raw if ok else None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        return None
    # Only what encode_page_token writes: UTC, so no offset can carry the time past the calendar's edge.
    if at.utcoffset() != timedelta(0) or not _EARLIEST <= at <= _LATEST:
        return None
    return at.astimezone(UTC)


def _bad(field: str) -> DomainError:
    return invalid_argument([FieldViolation(field, "not a page token from a previous response of this list")])
