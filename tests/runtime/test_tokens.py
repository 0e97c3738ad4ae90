"""Bearer tokens a service cannot forge: signed asymmetrically, verified against a JWKS that rotates
without a restart, with bounded lifetime, clock-skew leeway, issuer and audience."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.runtime import auth
from services.runtime.auth import JwksKeys, TokenSigner, TokenVerifier, keygen
from services.runtime.clock import FakeClock
from services.runtime.config import ConfigError, IdentitySettings
from services.runtime.errors import DomainError
from services.runtime.server import create_server
from services.wallet.app import build as build_wallet
from tests.wallet.conftest import wallet_settings

ALICE = auth.user("alice")
GIFTING = auth.service("gifting")


def _key(directory: Path, kid: str, algorithm: str = "EdDSA") -> tuple[TokenSigner, dict[str, str]]:
    """A new key: its signer (the private half, kept by the test) and its public JWK."""
    private = directory / f"{kid.replace('/', '_').replace(':', '_')}.private.json"
    public = keygen(kid, str(private), algorithm)
    return TokenSigner.from_jwk_file(str(private)), public


def _publish(jwks: Path, name: str, *keys: dict[str, str]) -> None:
    (jwks / f"{name}.json").write_text(json.dumps({"keys": list(keys)}))


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a folder for private keys, the JWKS folder the verifier reads)."""
    private, jwks = tmp_path / "private", tmp_path / "jwks"
    private.mkdir()
    jwks.mkdir()
    yield private, jwks


def _verifier(jwks: Path, **settings: object) -> TokenVerifier:
    return TokenVerifier(IdentitySettings(keys_path=str(jwks), **settings), JwksKeys(str(jwks), check_interval=0))  # type: ignore[arg-type]


def _refused(verify: Callable[[], object], match: str = "") -> DomainError:
    with pytest.raises(DomainError, match=match) as refused:
        verify()
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    return refused.value


def test_only_keys_in_the_jwks_verify_and_a_rotated_in_key_verifies_at_once(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    issuer, issuer_public = _key(private, "issuer/2026-11")
    _publish(jwks, "issuer-2026-11", issuer_public)
    verifier = _verifier(jwks)
    assert verifier.caller(issuer.mint(ALICE)) == ALICE
    # A key the service does not hold (an attacker's, or one not yet published) verifies nothing.
    successor, successor_public = _key(private, "issuer/2026-12")
    token = successor.mint(ALICE)
    _refused(lambda: verifier.caller(token), "does not trust")
    # Published beside the old one: verified by the same verifier, no restart.
    _publish(jwks, "issuer-2026-12", successor_public)
    assert verifier.caller(token) == ALICE
    # The old key retired: its tokens are refused, even one this verifier remembered as verified.
    old = issuer.mint(ALICE)
    assert verifier.caller(old) == ALICE
    (jwks / "issuer-2026-11.json").unlink()
    _refused(lambda: verifier.caller(old), "does not trust")
    assert verifier.caller(token) == ALICE


def test_a_half_written_key_set_keeps_the_keys_before_it(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    issuer, public = _key(private, "issuer/1")
    _publish(jwks, "issuer", public)
    verifier = _verifier(jwks)
    (jwks / "issuer.json").write_text('{"keys": [')
    assert verifier.caller(issuer.mint(ALICE)) == ALICE


def test_a_key_set_must_hold_public_keys_only(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    _key(private, "issuer/1")
    (jwks / "leaked.json").write_text((private / "issuer_1.private.json").read_text())
    with pytest.raises(ConfigError, match="private key"):
        JwksKeys(str(jwks))


def test_lifetime_skew_issuer_and_audience(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    issuer, public = _key(private, "issuer/1", "ES256")
    _publish(jwks, "issuer", public)
    verifier = _verifier(jwks, max_lifetime_seconds=3600, leeway_seconds=30)
    assert verifier.caller(issuer.mint(ALICE, ttl_seconds=3600)) == ALICE
    _refused(lambda: verifier.caller(issuer.mint(ALICE, ttl_seconds=3601)), "longer than the 3600s allowed")
    _refused(lambda: verifier.caller(issuer.mint(ALICE, ttl_seconds=10 * 365 * 86400)), "longer than")
    # A minter whose clock runs ahead: a second is skew, a minute is not.
    assert verifier.caller(issuer.mint(ALICE, now=time.time() + 1)) == ALICE
    _refused(lambda: verifier.caller(issuer.mint(ALICE, now=time.time() + 60)), "not yet valid")
    # Expired, within and past the leeway.
    assert verifier.caller(issuer.mint(ALICE, ttl_seconds=60, now=time.time() - 80)) == ALICE
    _refused(lambda: verifier.caller(issuer.mint(ALICE, ttl_seconds=60, now=time.time() - 100)), "expired")
    # Another issuer's token, though signed with a trusted key.
    stranger = TokenSigner(issuer.private_key, issuer.kid, issuer="someone-else")
    _refused(lambda: verifier.caller(stranger.mint(ALICE)), "issuer")
    # An aud claim is accepted when no audience is configured; when one is, it is required and must match.
    aimed = TokenSigner(issuer.private_key, issuer.kid, audience="giftcoin-wallet")
    assert verifier.caller(aimed.mint(ALICE)) == ALICE
    strict = _verifier(jwks, audience="giftcoin-wallet")
    assert strict.caller(aimed.mint(ALICE)) == ALICE
    _refused(lambda: strict.caller(issuer.mint(ALICE)), "aud")
    other = TokenSigner(issuer.private_key, issuer.kid, audience="giftcoin-payout")
    _refused(lambda: strict.caller(other.mint(ALICE)), "Audience")


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    clock = [time.time()]
    verifier = TokenVerifier(IdentitySettings(dev_mode=True, leeway_seconds=0), auth.DevKeys(), lambda: clock[0])
    token = auth.dev_token(ALICE, ttl_seconds=60)
    assert verifier.caller(token) == ALICE
    assert verifier.caller(token) == ALICE  # remembered
    clock[0] += 61
    _refused(lambda: verifier.caller(token), "expired")


def test_a_service_s_key_makes_only_that_service_and_the_issuer_s_no_service(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    issuer, issuer_public = _key(private, "issuer/1")
    gifting, gifting_public = _key(private, auth.service_key_id("gifting", "2026-12"))
    _publish(jwks, "keys", issuer_public, gifting_public)
    verifier = _verifier(jwks)
    assert verifier.caller(gifting.mint(GIFTING)) == GIFTING
    for forged in (auth.operator("root"), ALICE, auth.service("payout")):
        token = gifting.mint(forged)
        _refused(partial(verifier.caller, token), "signs only service:gifting")
    _refused(lambda: verifier.caller(issuer.mint(GIFTING)), "that service's own key")


def test_unsigned_and_symmetric_tokens_are_refused(keys: tuple[Path, Path]) -> None:
    private, jwks = keys
    _, public = _key(private, "issuer/1")
    _publish(jwks, "issuer", public)
    verifier = _verifier(jwks)
    now = int(time.time())
    claims = {"sub": "operator:root", "iss": "giftcoin", "iat": now, "exp": now + 60}
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "issuer/1"})
    _refused(lambda: verifier.caller(unsigned), "only EdDSA, ES256")
    # The public key used as an HMAC secret (the classic algorithm confusion).
    hs256 = jwt.encode(claims, public["x"], algorithm="HS256", headers={"kid": "issuer/1"})
    _refused(lambda: verifier.caller(hs256), "only EdDSA, ES256")
    _refused(lambda: verifier.caller("not.a.token"), "invalid")


def test_dev_mode_needs_no_set_up_and_trusts_only_dev_keys() -> None:
    verifier = TokenVerifier.from_settings(IdentitySettings(dev_mode=True))
    assert verifier.caller(auth.dev_token(ALICE)) == ALICE
    assert verifier.caller(auth.dev_token(GIFTING)) == GIFTING
    stranger = TokenSigner(Ed25519PrivateKey.generate(), auth.DEV_ISSUER_KEY_ID)
    _refused(lambda: verifier.caller(stranger.mint(ALICE)), "Signature")


def test_a_server_verifies_with_its_jwks_and_takes_a_rotated_in_key_without_a_restart(
    keys: tuple[Path, Path], make_database: Callable[[str], str]
) -> None:
    private, jwks = keys
    issuer, public = _key(private, "issuer/1")
    _publish(jwks, "issuer", public)
    settings = wallet_settings(make_database("wallet"), GIFTCOIN_JWT_KEYS=str(jwks))
    running = create_server(build_wallet(settings, FakeClock()), settings, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = wallet_pb2_grpc.WalletServiceStub(channel)

    def get_wallet(signer: TokenSigner) -> grpc.StatusCode:
        try:
            stub.GetWallet(wallet_pb2.GetWalletRequest(), metadata=(("authorization", f"Bearer {signer.mint(ALICE)}"),))
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    try:
        assert get_wallet(issuer) == grpc.StatusCode.NOT_FOUND  # verified: alice simply has no wallet
        dev = TokenSigner(auth.dev_private_key(auth.DEV_ISSUER_KEY_ID), auth.DEV_ISSUER_KEY_ID)
        assert get_wallet(dev) == grpc.StatusCode.UNAUTHENTICATED  # dev keys are not trusted here
        successor, successor_public = _key(private, "issuer/2")
        assert get_wallet(successor) == grpc.StatusCode.UNAUTHENTICATED
        _publish(jwks, "issuer-2", successor_public)
        deadline = time.monotonic() + 10  # the server looks at its key files once a second
        while get_wallet(successor) == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get_wallet(successor) == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        running.stop(None)
