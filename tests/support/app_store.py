"""A private App Store: a certificate chain shaped like Apple's, and StoreKit 2 data signed with it.

Apple signs transactions and notifications (ES256 JWS) with a leaf certificate issued by its WWDR
intermediate, issued by Apple Root CA - G3, the three in the `x5c` header. Apple's library checks the
chain up to the configured roots and two Apple extensions: 1.2.840.113635.100.6.11.1 on the leaf and
1.2.840.113635.100.6.2.1 on the intermediate. This chain carries the same, made with `cryptography`
(as app-store-server-library-python's own tests make theirs), and its root is configured in place of
Apple's: the library then verifies this data exactly as it verifies Apple's.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
BUNDLE_ID = "com.example.giftcoin"
APP_APPLE_ID = 1234567890
PRODUCTS = {"com.example.giftcoin.coins700": "coins_700", "com.example.giftcoin.coins70": "coins_70"}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
    apple_oid: x509.ObjectIdentifier | None,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if apple_oid is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(apple_oid, b"\x05\x00"), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class AppleChain:
    """Root -> intermediate (WWDR's extension) -> leaf (the signing extension), and the leaf's key."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(
        cls,
        now: datetime,
        leaf_valid: tuple[timedelta, timedelta] = (timedelta(days=-1), timedelta(days=365)),
        apple_extensions: bool = True,
    ) -> AppleChain:
        """A chain valid around `now` (the leaf from now + leaf_valid[0] to now + leaf_valid[1])."""
        root_key, intermediate_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        start, end = now - timedelta(days=30), now + timedelta(days=3650)
        root = _certificate("Test Root CA - G3", root_key, None, True, None, start, end)
        intermediate = _certificate(
            "Test WWDR CA - G6",
            intermediate_key,
            ("Test Root CA - G3", root_key),
            True,
            INTERMEDIATE_OID if apple_extensions else None,
            start,
            end,
        )
        leaf = _certificate(
            "Test Prod ECC Mac App Store and iTunes Store Receipt Signing",
            leaf_key,
            ("Test WWDR CA - G6", intermediate_key),
            False,
            LEAF_OID if apple_extensions else None,
            now + leaf_valid[0],
            now + leaf_valid[1],
        )
        return cls(root, intermediate, leaf, leaf_key)

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(Encoding.PEM))
        return path

    def sign(self, payload: dict[str, Any]) -> str:
        """`payload` as a JWS the way the App Store signs: ES256, the chain in `x5c`."""
        x5c = [
            base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in (self.leaf, self.intermediate, self.root)
        ]
        return jwt.encode(payload, self.leaf_key, algorithm="ES256", headers={"x5c": x5c})


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass
class Transaction:
    """A StoreKit 2 transaction (JWSTransactionDecodedPayload's fields)."""

    signed_at: datetime
    account_token: str
    product_id: str = "com.example.giftcoin.coins700"
    transaction_id: str = field(default_factory=lambda: str(uuid.uuid4().int)[:16])
    bundle_id: str = BUNDLE_ID
    environment: str = "Production"
    type: str = "Consumable"
    price_milliunits: int = 9990
    currency: str = "USD"
    revoked_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "transactionId": self.transaction_id,
            "originalTransactionId": self.transaction_id,
            "bundleId": self.bundle_id,
            "productId": self.product_id,
            "purchaseDate": millis(self.signed_at),
            "originalPurchaseDate": millis(self.signed_at),
            "quantity": 1,
            "type": self.type,
            "appAccountToken": self.account_token,
            "inAppOwnershipType": "PURCHASED",
            "signedDate": millis(self.signed_at),
            "environment": self.environment,
            "transactionReason": "PURCHASE",
            "storefront": "USA",
            "storefrontId": "143441",
            "price": self.price_milliunits,
            "currency": self.currency,
        }
        if self.revoked_at is not None:
            payload |= {"revocationDate": millis(self.revoked_at), "revocationReason": 0}
        return payload | self.extra


def notification(
    chain: AppleChain,
    notification_type: str,
    transaction: Transaction,
    signed_at: datetime,
    notification_id: str = "",
    bundle_id: str = BUNDLE_ID,
    environment: str = "Production",
) -> bytes:
    """An App Store Server Notification v2 as Apple POSTs it: `{"signedPayload": <JWS>}`."""
    payload = {
        "notificationType": notification_type,
        "notificationUUID": notification_id or str(uuid.uuid4()),
        "data": {
            "appAppleId": APP_APPLE_ID,
            "bundleId": bundle_id,
            "bundleVersion": "1.0",
            "environment": environment,
            "signedTransactionInfo": chain.sign(transaction.payload()),
        },
        "version": "2.0",
        "signedDate": millis(signed_at),
    }
    return json.dumps({"signedPayload": chain.sign(payload)}).encode()


def app_store_env(root_file: Path, **overrides: str) -> dict[str, str]:
    """The wallet's App Store settings for this chain's root."""
    return {
        "GIFTCOIN_WALLET_APP_STORE_BUNDLE_ID": BUNDLE_ID,
        "GIFTCOIN_WALLET_APP_STORE_APP_APPLE_ID": str(APP_APPLE_ID),
        "GIFTCOIN_WALLET_APP_STORE_ENVIRONMENT": "Production",
        "GIFTCOIN_WALLET_APP_STORE_ROOT_CERTIFICATES": str(root_file),
        "GIFTCOIN_WALLET_APP_STORE_PRODUCTS": json.dumps(PRODUCTS),
        **overrides,
    }


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
