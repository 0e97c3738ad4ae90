"""Call metadata for test callers: a real signed token, as the edge would pass it."""

from __future__ import annotations

from services.runtime.auth import Caller, mint_token, operator, service, user
from services.runtime.config import DEV_JWT_SECRET

__all__ = ["as_caller", "operator", "service", "user"]


def as_caller(caller: Caller, secret: str = DEV_JWT_SECRET) -> tuple[tuple[str, str], ...]:
    """Metadata for a call made by `caller`: pass as `metadata=` to a stub method."""
    return (("authorization", f"Bearer {mint_token(caller, secret)}"),)
