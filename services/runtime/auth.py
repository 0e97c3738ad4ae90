"""Caller identity: signed bearer tokens (JWT, HS256) whose subject names who is calling.

Subjects are `user:<id>`, `operator:<id>` or `service:<name>`. Each RPC declares who may call it
(an `Access`), and the server checks that before the handler runs; handlers then read the caller
with `current_caller()` and act only on that caller's own resources.
"""

from __future__ import annotations

import contextvars
import functools
import time
from dataclasses import dataclass
from enum import Enum

import jwt

from services.runtime.errors import permission_denied, unauthenticated

ISSUER = "giftcoin"
_ALGORITHM = "HS256"


class CallerKind(Enum):
    USER = "user"
    OPERATOR = "operator"
    SERVICE = "service"


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    id: str

    @property
    def subject(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @classmethod
    def parse(cls, subject: str) -> Caller:
        kind, _, ident = subject.partition(":")
        try:
            caller_kind = CallerKind(kind)
        except ValueError as exc:
            raise unauthenticated(f"token subject {subject!r} is not user:, operator: or service:") from exc
        if not ident:
            raise unauthenticated(f"token subject {subject!r} has no id")
        return cls(caller_kind, ident)


def user(user_id: str) -> Caller:
    return Caller(CallerKind.USER, user_id)


def operator(operator_id: str) -> Caller:
    return Caller(CallerKind.OPERATOR, operator_id)


def service(name: str) -> Caller:
    return Caller(CallerKind.SERVICE, name)


def mint_token(caller: Caller, secret: str, ttl_seconds: int = 3600) -> str:
    """A signed token for `caller`, for development, tests and service-to-service calls."""
    now = int(time.time())
    claims = {"sub": caller.subject, "iss": ISSUER, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_token(token: str, secret: str) -> Caller:
    """The caller a token names, once its signature, issuer and expiry are checked.

    A caller sends the same token with every call until it expires: its verification (signature
    and all) is remembered by the token's exact text, and only its expiry is checked again.
    """
    subject, expires = _verified(token, secret)
    if time.time() >= expires:
        raise unauthenticated("bearer token expired")
    return Caller.parse(subject)


@functools.lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> tuple[str, float]:
    """(subject, expiry) of a token whose signature and claims check out; raises (and remembers nothing) if not."""
    try:
        claims = jwt.decode(token, secret, algorithms=[_ALGORITHM], issuer=ISSUER, options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise unauthenticated("bearer token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise unauthenticated(f"bearer token invalid: {exc}") from exc
    return str(claims["sub"]), float(claims["exp"])


def caller_from_metadata(metadata: tuple[tuple[str, str | bytes], ...] | None, secret: str) -> Caller:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise unauthenticated("authorization metadata must be 'Bearer <token>'")
            return verify_token(token.strip(), secret)
    raise unauthenticated("missing authorization metadata ('Bearer <token>')")


@dataclass(frozen=True)
class Access:
    """Who may call an RPC."""

    kinds: frozenset[CallerKind]
    service_name: str = ""  # for service callers: the only service allowed

    def check(self, caller: Caller) -> None:
        if caller.kind not in self.kinds:
            raise permission_denied(f"{caller.subject} may not call this method", caller=caller.subject)
        if caller.kind is CallerKind.SERVICE and self.service_name and caller.id != self.service_name:
            raise permission_denied(f"only service:{self.service_name} may call this method", caller=caller.subject)


ANYONE = Access(frozenset(CallerKind))
USER = Access(frozenset({CallerKind.USER}))
OPERATOR = Access(frozenset({CallerKind.OPERATOR}))
# The reads that prove the services' books agree: an operator, or the reconciliation job's own identity
# (service:reconciler), which may call these and nothing else (services/reconciler).
RECONCILER = Access(frozenset({CallerKind.OPERATOR, CallerKind.SERVICE}), "reconciler")


def internal(service_name: str) -> Access:
    return Access(frozenset({CallerKind.SERVICE}), service_name)


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("giftcoin_caller")


def set_current_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current.set(caller)


def reset_current_caller(token: contextvars.Token[Caller]) -> None:
    _current.reset(token)


def current_caller() -> Caller:
    try:
        return _current.get()
    except LookupError as exc:  # a handler ran without the auth interceptor: a wiring bug
        raise RuntimeError("no caller: the server's auth interceptor did not run") from exc


def current_caller_or_none() -> Caller | None:
    """The caller, if the server has identified one (for logs: None before it has)."""
    return _current.get(None)


def require_user(caller: Caller) -> str:
    """The caller's user id; refuses anyone else."""
    if caller.kind is not CallerKind.USER:
        raise permission_denied(f"{caller.subject} is not a user", caller=caller.subject)
    return caller.id


def calling_user_id() -> str:
    """The calling user's id, checked like any id (it becomes a wallet's, a sender's, a creator's id)."""
    from services.runtime.validation import Validator

    user_id = require_user(current_caller())
    v = Validator()
    v.identifier(user_id, "authorization")
    v.check()
    return user_id
