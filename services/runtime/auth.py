"""Caller identity: bearer tokens (JWT) signed asymmetrically, whose subject names who is calling.

Subjects are `user:<id>`, `operator:<id>` or `service:<name>`. Each RPC declares who may call it
(an `Access`), and the server checks that before the handler runs; handlers then read the caller
with `current_caller()` and act only on that caller's own resources.

Tokens are signed with EdDSA (Ed25519) or ES256 and name their key in the header (`kid`). A service
holds only public keys (a JWKS: `JwksKeys`, reloaded when its files change, so keys rotate without a
restart), so no service can mint a token. The private keys stay with whoever issues tokens:

- the issuer (the edge, back-office tooling) signs `user:` and `operator:` tokens with its keys;
- each service signs the `service:<name>` tokens it sends with its own key, whose kid is
  `service:<name>/<version>`; a key of that kid verifies only the subject `service:<name>`, and
  the issuer's keys never verify a `service:` subject. So gifting's key cannot make an operator,
  and the issuer cannot make gifting.

A token must carry `sub`, `iss` (the configured issuer), `iat` and `exp`, live no longer than the
configured maximum, and, when an audience is configured, name it in `aud`. Times are checked with a
leeway for clock skew (a minter whose clock runs a second ahead is accepted).

Dev mode needs no set-up: its keys are derived deterministically from their kid (`dev_private_key`),
so every process of a local suite, the tests and giftctl agree on them without a file. Anyone can
derive them: dev mode is for one machine, never a deployment.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.runtime.config import ConfigError, IdentitySettings
from services.runtime.errors import permission_denied, unauthenticated
from services.runtime.validation import MAX_ID_LENGTH, is_identifier

log = logging.getLogger(__name__)

ISSUER = "giftcoin"
ALGORITHMS = ("EdDSA", "ES256")
SERVICE_KEY_PREFIX = "service:"  # kid `service:<name>/<version>`: verifies only `service:<name>`
DEV_ISSUER_KEY_ID = "dev-issuer"
_DEV_SERVICE_KEY_ID = re.compile(r"service:[a-z][a-z0-9-]*/dev")
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub"]


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
        if not is_identifier(ident):
            raise unauthenticated(
                f"token subject {subject!r}: its id must be 1 to {MAX_ID_LENGTH} letters, digits and . _ : -"
            )
        return cls(caller_kind, ident)


def user(user_id: str) -> Caller:
    return Caller(CallerKind.USER, user_id)


def operator(operator_id: str) -> Caller:
    return Caller(CallerKind.OPERATOR, operator_id)


def service(name: str) -> Caller:
    return Caller(CallerKind.SERVICE, name)


# --- keys ------------------------------------------------------------------------------------------


def service_key_id(name: str, version: str) -> str:
    """The kid of service `name`'s signing key (`service:gifting/2026-12`)."""
    return f"{SERVICE_KEY_PREFIX}{name}/{version}"


def dev_key_id(caller: Caller) -> str:
    """The dev key that signs `caller`'s dev tokens: its service's own, else the dev issuer's."""
    return service_key_id(caller.id, "dev") if caller.kind is CallerKind.SERVICE else DEV_ISSUER_KEY_ID


def dev_private_key(kid: str) -> Ed25519PrivateKey:
    """A dev key, derived from its kid: the same in every process, and known to anyone (dev only)."""
    seed = hashlib.sha256(f"giftcoin dev signing key, never for deployment: {kid}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _algorithm(key: Any) -> str:
    if isinstance(key, Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, EllipticCurvePrivateKey) and isinstance(key.curve, SECP256R1):
        return "ES256"
    raise ConfigError("a signing key must be Ed25519 (EdDSA) or EC P-256 (ES256)")


def public_jwk(private_key: Ed25519PrivateKey | EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    """The public JWK of a signing key, as a JWKS lists it."""
    algorithm = jwt.get_algorithm_by_name(_algorithm(private_key))
    jwk: dict[str, str] = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": _algorithm(private_key), "use": "sig"}


class KeySet(Protocol):
    """Where a verifier finds public keys by kid; `generation()` changes whenever the keys do."""

    def generation(self) -> int: ...

    def key(self, kid: str) -> jwt.PyJWK | None: ...


class DevKeys:
    """Dev mode's public keys: the dev issuer's and every service's dev key, derived on demand."""

    def __init__(self) -> None:
        self._keys: dict[str, jwt.PyJWK] = {}

    def generation(self) -> int:
        return 0

    def key(self, kid: str) -> jwt.PyJWK | None:
        if kid != DEV_ISSUER_KEY_ID and not _DEV_SERVICE_KEY_ID.fullmatch(kid):
            return None
        if kid not in self._keys:  # a race only derives it twice
            self._keys[kid] = jwt.PyJWK(public_jwk(dev_private_key(kid), kid))
        return self._keys[kid]


class JwksKeys:
    """Public keys from a JWKS file, or from every *.json file of a directory (each a JWKS or one JWK),
    read again when a file changes (looked at once a second at most): a key added to or removed from
    the set is used or refused without a restart. A set that does not parse keeps the keys before it
    (a file half-written during a rotation), with a warning."""

    def __init__(self, path: str, check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._generation = 0
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._checked = float("-inf")
        self._keys: dict[str, jwt.PyJWK] = {}
        self._refresh(force=True)
        if not self._keys:
            raise ConfigError(f"GIFTCOIN_JWT_KEYS: no usable public key in {path}")

    def generation(self) -> int:
        self._refresh()
        return self._generation

    def key(self, kid: str) -> jwt.PyJWK | None:
        self._refresh()
        return self._keys.get(kid)

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            # Kubernetes mounts a ConfigMap's files as links into a hidden ..data folder: skip dot files.
            return sorted(p for p in self.path.glob("*.json") if not p.name.startswith("."))
        return [self.path]

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval:
            return
        with self._lock:
            if not force and now - self._checked < self.check_interval:
                return
            self._checked = now
            try:
                files = self._files()
                stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
                if stamp == self._stamp:
                    return
                keys = {}
                for p in files:
                    keys.update(_parse_jwks(json.loads(p.read_text())))
            except (OSError, ValueError, jwt.PyJWKError) as exc:
                if force:
                    raise ConfigError(f"GIFTCOIN_JWT_KEYS: cannot read {self.path}: {exc}") from exc
                log.warning("public keys at %s not reloaded, keeping the previous set: %s", self.path, exc)
                return
            self._stamp, self._keys = stamp, keys
            self._generation += 1
            log.info("public keys loaded from %s: %s", self.path, sorted(keys))


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """{kid: key} of a JWKS ({"keys": [...]}) or of one JWK; a key without a kid or an allowed
    algorithm is refused, and so is a private key (a service holds public keys only)."""
    listed = document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
    if not isinstance(listed, list):
        raise ValueError("a JWKS's keys must be a list")
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in listed:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise ValueError("every key needs a kid")
        if "d" in jwk:
            raise ValueError(f"key {jwk['kid']} is a private key: a service holds public keys only")
        key = jwt.PyJWK(jwk)
        if key.algorithm_name not in ALGORITHMS:
            raise ValueError(f"key {jwk['kid']}: {key.algorithm_name} is not one of {ALGORITHMS}")
        keys[jwk["kid"]] = key
    return keys


# --- verifying --------------------------------------------------------------------------------------


class TokenVerifier:
    """Verifies bearer tokens against a key set, the configured issuer, audience, leeway and lifetime.

    A caller sends the same token with every call until it expires: its verification (signature and
    all) is remembered by the token's exact text while the key set stays the same, and only its
    expiry is checked again.
    """

    _REMEMBERED = 4096

    def __init__(self, settings: IdentitySettings, keys: KeySet, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self._verified: dict[str, tuple[Caller, float, int]] = {}

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> TokenVerifier:
        keys: KeySet = JwksKeys(settings.keys_path) if settings.keys_path else DevKeys()
        return cls(settings, keys)

    def caller(self, token: str) -> Caller:
        """The caller a token names, once its signature and claims are checked; UNAUTHENTICATED if not."""
        now = self.clock()
        generation = self.keys.generation()
        remembered = self._verified.get(token)
        if remembered is not None and remembered[2] == generation:
            caller, expires, _ = remembered
            if now >= expires + self.settings.leeway_seconds:
                raise unauthenticated("bearer token expired")
            return caller
        caller, expires = self._verify(token, now)
        if len(self._verified) >= self._REMEMBERED:
            self._verified.clear()
        self._verified[token] = (caller, expires, generation)
        return caller

    def _verify(self, token: str, now: float) -> tuple[Caller, float]:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise unauthenticated(f"bearer token invalid: {exc}") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise unauthenticated(f"bearer token signed with {algorithm!r}: only {', '.join(ALGORITHMS)} are accepted")
        if not isinstance(kid, str):
            raise unauthenticated("bearer token names no key (kid)")
        key = self.keys.key(kid)
        if key is None:
            raise unauthenticated(f"bearer token signed with key {kid!r}, which this service does not trust")
        if key.algorithm_name != algorithm:
            raise unauthenticated(f"bearer token says {algorithm}, its key {kid!r} is {key.algorithm_name}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                issuer=s.issuer,
                audience=s.audience or None,
                leeway=s.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS, "verify_aud": bool(s.audience)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthenticated("bearer token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthenticated(f"bearer token invalid: {exc}") from exc
        issued, expires = claims["iat"], claims["exp"]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (issued, expires)):
            raise unauthenticated("bearer token's iat and exp must be numbers")
        if expires - issued > s.max_lifetime_seconds:
            raise unauthenticated(
                f"bearer token lives {int(expires - issued)}s, longer than the {s.max_lifetime_seconds}s allowed"
            )
        if not isinstance(claims["sub"], str):
            raise unauthenticated("bearer token's sub must be a string")
        caller = Caller.parse(claims["sub"])
        if kid.startswith(SERVICE_KEY_PREFIX):
            signer = kid[len(SERVICE_KEY_PREFIX) :].partition("/")[0]
            if caller != service(signer):
                raise unauthenticated(f"key {kid!r} signs only service:{signer} tokens, not {caller.subject}")
        elif caller.kind is CallerKind.SERVICE:
            raise unauthenticated(f"a {caller.subject} token must be signed with that service's own key")
        return caller, float(expires)


def caller_from_metadata(metadata: tuple[tuple[str, str | bytes], ...] | None, verifier: TokenVerifier) -> Caller:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise unauthenticated("authorization metadata must be 'Bearer <token>'")
            return verifier.caller(token.strip())
    raise unauthenticated("missing authorization metadata ('Bearer <token>')")


# --- minting ----------------------------------------------------------------------------------------


class TokenSigner:
    """Mints tokens with one private key (the issuer's, or a service's own for its `service:` tokens)."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey | EllipticCurvePrivateKey,
        kid: str,
        issuer: str = ISSUER,
        audience: str = "",
    ) -> None:
        self.private_key = private_key
        self.kid = kid
        self.algorithm = _algorithm(private_key)
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_jwk_file(cls, path: str, issuer: str = ISSUER, audience: str = "") -> TokenSigner:
        """A signer with the private JWK in `path` (its kid included), as `keygen` writes it."""
        try:
            jwk = json.loads(Path(path).read_text())
            key = jwt.PyJWK(jwk).key
        except (OSError, ValueError, jwt.PyJWKError) as exc:
            raise ConfigError(f"signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey | EllipticCurvePrivateKey) or not jwk.get("kid"):
            raise ConfigError(f"signing key {path}: a private Ed25519 or P-256 JWK with a kid")
        return cls(key, jwk["kid"], issuer, audience)

    def mint(self, caller: Caller, ttl_seconds: int = 300, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {"sub": caller.subject, "iss": self.issuer, "iat": issued, "exp": issued + ttl_seconds}
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid})


def dev_signer(caller: Caller, issuer: str = ISSUER, audience: str = "") -> TokenSigner:
    """The signer of `caller`'s dev tokens (dev mode's key set verifies them)."""
    kid = dev_key_id(caller)
    return TokenSigner(dev_private_key(kid), kid, issuer, audience)


def dev_token(caller: Caller, ttl_seconds: int = 300) -> str:
    """A dev-mode token for `caller`, for tests and local tools."""
    return dev_signer(caller).mint(caller, ttl_seconds)


def signer_for(settings: IdentitySettings, caller: Caller) -> TokenSigner:
    """Who signs `caller`'s tokens here: the key in GIFTCOIN_JWT_SIGNING_KEY_FILE, else (dev mode) the dev key."""
    if settings.signing_key_file:
        try:
            return TokenSigner.from_jwk_file(settings.signing_key_file, settings.issuer, settings.audience)
        except ConfigError as error:
            raise ConfigError(f"GIFTCOIN_JWT_SIGNING_KEY_FILE: {error}") from error
    if settings.dev_mode:
        return dev_signer(caller, settings.issuer, settings.audience)
    raise ConfigError(f"GIFTCOIN_JWT_SIGNING_KEY_FILE is required to call other services as {caller.subject}")


class TokenSource:
    """The token an outbound channel sends for one caller: minted with `signer`, minted again at half
    its life; the signer is made again when its key file changes (a rotated key, without a restart)."""

    def __init__(self, make_signer: Callable[[], TokenSigner], caller: Caller, ttl_seconds: int = 300) -> None:
        self.make_signer = make_signer
        self.caller = caller
        self.ttl = ttl_seconds
        self._lock = threading.Lock()
        self._token = ""
        self._renew_at = 0.0

    @classmethod
    def for_settings(cls, settings: IdentitySettings, caller: Caller, ttl_seconds: int = 300) -> TokenSource:
        signer_for(settings, caller)  # a missing or broken key fails at start, not on the first call
        return cls(lambda: signer_for(settings, caller), caller, min(ttl_seconds, settings.max_lifetime_seconds))

    def __call__(self) -> str:
        with self._lock:
            if time.monotonic() >= self._renew_at:
                self._token = self.make_signer().mint(self.caller, self.ttl)
                self._renew_at = time.monotonic() + self.ttl / 2
            return self._token


# --- access -----------------------------------------------------------------------------------------


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
    """The calling user's id (checked like any id when its token was verified)."""
    return require_user(current_caller())


# --- keygen -----------------------------------------------------------------------------------------


def keygen(kid: str, private_path: str, algorithm: str = "EdDSA") -> dict[str, str]:
    """A new signing key: its private JWK written to `private_path` (mode 0600), its public JWK returned."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key: Ed25519PrivateKey | EllipticCurvePrivateKey = (
        Ed25519PrivateKey.generate() if algorithm == "EdDSA" else ec.generate_private_key(SECP256R1())
    )
    private = jwt.get_algorithm_by_name(algorithm).to_jwk(key, as_dict=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({**private, "kid": kid, "alg": algorithm, "use": "sig"}, out)
    return public_jwk(key, kid)
