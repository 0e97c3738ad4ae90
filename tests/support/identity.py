"""Call metadata for test callers: a real signed token, as the edge (or a service) would pass it."""

from __future__ import annotations

from services.runtime.auth import Caller, dev_token, operator, service, user

__all__ = ["as_caller", "operator", "service", "user"]


def as_caller(caller: Caller, ttl_seconds: int = 3600) -> tuple[tuple[str, str], ...]:
    """Metadata for a call made by `caller`, with a token signed by its dev key (the issuer's for users
    and operators, the service's own for a service): pass as `metadata=` to a stub method. It lives as
    long as the services accept (an hour): some modules make their callers' metadata once, at import."""
    return (("authorization", f"Bearer {dev_token(caller, ttl_seconds)}"),)
