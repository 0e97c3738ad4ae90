"""Opaque page tokens (AIP-158): a cursor the server understands and the client only echoes."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.message import Message

from services.runtime.db import Selection
from services.runtime.errors import FieldViolation, invalid_argument
from services.runtime.validation import Validator, clamp_page_size


def encode_page_token(cursor: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, sort_keys=True).encode()).decode()


def decode_page_token(token: str, field: str = "page_token") -> dict[str, Any] | None:
    """The cursor in a token; None for the first page; INVALID_ARGUMENT for a token we did not make."""
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_argument([FieldViolation(field, "not a page token from a previous response")]) from exc
    if not isinstance(cursor, dict):
        raise invalid_argument([FieldViolation(field, "not a page token from a previous response")])
    return cursor


# --- keyset positions: where a page ended, in the listing's order ----------------------------------


def filters_key(*filters: object) -> str:
    """A short digest of a listing's filters: a page token is good only for the query that made it."""
    text = json.dumps([f.isoformat() if isinstance(f, datetime) else f for f in filters], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_position(listing: str, filters: str, position: Sequence[datetime | int | str]) -> str:
    """The token of the page after the row at `position` (its sort key) of `listing` under `filters`."""
    after = [value.isoformat() if isinstance(value, datetime) else value for value in position]
    return encode_page_token({"list": listing, "filters": filters, "after": after})


def decode_position(token: str, listing: str, filters: str, types: Sequence[type]) -> list[Any] | None:
    """The position a token names (None for the first page), each value of the type given; INVALID_ARGUMENT
    for a token of another listing, of other filters, or tampered with."""
    cursor = decode_page_token(token)
    if cursor is None:
        return None
    bad = invalid_argument(
        [FieldViolation("page_token", "not a page token from a previous response of this list, with these filters")]
    )
    after = cursor.get("after")
    if cursor.get("list") != listing or cursor.get("filters") != filters:
        raise bad
    if not isinstance(after, list) or len(after) != len(types):
        raise bad
    position: list[Any] = []
    for value, kind in zip(after, types, strict=True):
        if kind is datetime:
            value = _moment(value)
        if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise bad
        position.append(value)
    return position


def _moment(value: object) -> datetime | None:
    """An aware datetime from its ISO 8601 text; None for anything else."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


class Listing:
    """A request's page of a listing in (create time, id) order: its `selection` (a window or ids, from
    the request's start_time, end_time and `ids_field`, after its page token) and its page `size`; the
    token of the next page is bound to the listing's name and all its filters (`filters` and these).

    Validates the request with `v` (the caller's violations first), raising INVALID_ARGUMENT for all."""

    def __init__(self, name: str, request: Message, ids_field: str, v: Validator, *filters: object) -> None:
        start, end, ids = v.selection(request, ids_field)
        page_size: int = getattr(request, "page_size")  # noqa: B009 (every listing has one)
        v.page_size(page_size)
        v.check()
        self.name = name
        self.size = clamp_page_size(page_size)
        self.filters = filters_key(*filters, start, end, sorted(ids))
        after = decode_position(getattr(request, "page_token"), name, self.filters, (datetime, str))  # noqa: B009
        self.selection = Selection(start, end, ids, None if after is None else (after[0], after[1]))

    def next_token(self, more: bool, created_at: datetime, key: str) -> str:
        """The token of the page after the one that ended at (created_at, key); "" on the last page."""
        return encode_position(self.name, self.filters, [created_at, key]) if more else ""
