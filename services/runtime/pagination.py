"""Opaque page tokens (AIP-158): a cursor the server understands and the client only echoes."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.runtime.errors import FieldViolation, invalid_argument


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
