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
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from google.protobuf.message import Message

from services.runtime.db import Selection
from services.runtime.errors import DomainError, FieldViolation, invalid_argument
from services.runtime.validation import INT64_MAX, Validator, clamp_page_size, is_identifier

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
    IDENTIFIER = "identifier"  # a user's, creator's or promotion's id, as validation.is_identifier says


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
    if kind is CursorValue.IDENTIFIER:
        return raw if is_identifier(raw) else None
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


def filtered(list_name: str, *filters: object) -> str:
    """The name of `list_name` under these filters (a digest of them): a token of the list read with
    other filters is one of another list, so a page token is good only for the query that made it."""
    text = json.dumps([f.isoformat() if isinstance(f, datetime) else f for f in filters], sort_keys=True)
    return f"{list_name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class Listing:
    """A request's page of a listing in (create time, id) order: its `selection` (a window or ids, from
    the request's start_time, end_time and `ids_field`, after its page token) and its page `size`; the
    token of the next page is bound to the listing's name and all its filters (`filters` and these).

    Validates the request with `v` (the caller's violations first), raising INVALID_ARGUMENT for all."""

    _CURSOR = {"at": CursorValue.INSTANT, "id": CursorValue.ID}

    def __init__(self, name: str, request: Message, ids_field: str, v: Validator, *filters: object) -> None:
        start, end, ids = v.selection(request, ids_field)
        page_size: int = getattr(request, "page_size")  # noqa: B009 (every listing has one)
        v.page_size(page_size)
        v.check()
        self.name = filtered(name, *filters, start, end, sorted(ids))
        self.size = clamp_page_size(page_size)
        cursor = decode_page_token(getattr(request, "page_token"), self.name, self._CURSOR)  # noqa: B009
        self.selection = Selection(start, end, ids, None if cursor is None else (cursor["at"], cursor["id"]))

    def next_token(self, more: bool, created_at: datetime, key: str) -> str:
        """The token of the page after the one that ended at (created_at, key); "" on the last page."""
        return encode_page_token(self.name, {"at": created_at, "id": key}) if more else ""
