"""Opaque page tokens (AIP-158): a cursor the server understands and the client only echoes."""

from __future__ import annotations

import base64
import json
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
