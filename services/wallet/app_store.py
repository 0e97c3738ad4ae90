"""Apple's App Store: StoreKit 2 signed transactions and App Store Server Notifications v2.

Both are JWS signed by Apple, with the certificate chain in the `x5c` header. Apple's own library
(`app-store-server-library`, its SignedDataVerifier) verifies them: the chain up to a configured root
(Apple Root CA - G3 in deployment; a test chain in the tests), the Apple extensions on the leaf and
the intermediate certificates, the ES256 signature, the bundle id, the app's Apple id (notifications)
and the environment. Online checks (OCSP, at Apple's responder) are a setting: off, the chain is
checked at the time the data was signed, which is what a wallet without a route to Apple can do.

What the wallet adds: the transaction is a consumable, its product maps to a coin package, it was not
revoked, it is bound to an account token, and it is one unit (StoreKit's quantity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import jwt
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import JWSTransactionDecodedPayload
from appstoreserverlibrary.models.NotificationTypeV2 import NotificationTypeV2
from appstoreserverlibrary.models.Type import Type
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier, VerificationException, VerificationStatus
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from services.wallet.model import REFUND, REVERSAL, ReceiptRejected, StoreNotice, StoreUnavailable, VerifiedReceipt
from services.wallet.settings import AppStoreSettings

log = logging.getLogger(__name__)

APP_STORE = "app_store"
MAX_ID_LENGTH = 256

# ISO 4217 currencies whose minor unit is not a hundredth (Apple reports prices in milliunits).
_MINOR_UNIT_DIGITS = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX"], 0),
    **dict.fromkeys(["UYI", "VND", "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}

# The notifications that move coins, and what each is to the wallet (Apple does not tell a chargeback
# from a refund). REVOKE (Family Sharing) never concerns a consumable, but is a refund if it arrives.
_NOTICE_KINDS = {
    NotificationTypeV2.REFUND: REFUND,
    NotificationTypeV2.REVOKE: REFUND,
    NotificationTypeV2.REFUND_REVERSED: REVERSAL,
}

T = TypeVar("T")


def load_certificate(path: str) -> bytes:
    """A certificate file, PEM or DER, as the DER bytes Apple's library takes."""
    raw = Path(path).read_bytes()
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)


class AppStoreProvider:
    """Verifies App Store signed transactions (PurchaseCoins) and server notifications (refunds)."""

    store = APP_STORE

    def __init__(self, settings: AppStoreSettings, product_packages: dict[str, str] | None = None) -> None:
        roots = [load_certificate(path) for path in settings.root_certificate_files]
        environment = Environment(settings.environment)
        # Tried in order: a transaction from another environment is tried against the next one.
        self._verifiers = [
            SignedDataVerifier(roots, settings.online_checks, environment, settings.bundle_id, settings.app_apple_id)
        ]
        if environment == Environment.PRODUCTION and settings.accept_sandbox:
            self._verifiers.append(
                SignedDataVerifier(roots, settings.online_checks, Environment.SANDBOX, settings.bundle_id, None)
            )
        self._packages = dict(settings.products) if product_packages is None else product_packages

    # --- purchases ----------------------------------------------------------------------------

    def verify(self, payload: str) -> VerifiedReceipt:
        transaction = self._verified(lambda v: v.verify_and_decode_signed_transaction(payload.strip()))
        return self._receipt(transaction)

    def _receipt(self, t: JWSTransactionDecodedPayload) -> VerifiedReceipt:
        transaction_id = t.transactionId or ""
        if not transaction_id or len(transaction_id) > MAX_ID_LENGTH:
            raise ReceiptRejected("the transaction has no usable transactionId")
        if t.type != Type.CONSUMABLE:
            raise ReceiptRejected(
                f"transaction {transaction_id} is a {t.rawType}, not a consumable",
                "RECEIPT_NOT_CONSUMABLE",
                transaction_type=t.rawType,
            )
        package_id = self._packages.get(t.productId or "")
        if package_id is None:
            raise ReceiptRejected(
                f"product {t.productId!r} is no coin package here", "RECEIPT_PRODUCT_UNKNOWN", product_id=t.productId
            )
        if t.revocationDate is not None:
            raise ReceiptRejected(
                f"Apple revoked transaction {transaction_id} (refunded)",
                "RECEIPT_REVOKED",
                store_transaction_id=transaction_id,
            )
        if not t.appAccountToken:
            raise ReceiptRejected("the transaction carries no appAccountToken", "RECEIPT_ACCOUNT_MISMATCH")
        if (t.quantity or 1) != 1:
            raise ReceiptRejected(f"the transaction is for {t.quantity} units; one package per purchase")
        return VerifiedReceipt(
            store=self.store,
            store_transaction_id=transaction_id,
            package_id=package_id,
            amount_minor=_minor_units(t.price, t.currency),
            currency_code=t.currency,
            account_token=t.appAccountToken.lower(),
            original_transaction_id=t.originalTransactionId or transaction_id,
        )

    # --- notifications ------------------------------------------------------------------------

    def notice(self, signed_payload: str) -> StoreNotice | None:
        """The refund, revocation or refund reversal a verified notification reports; None for a
        notification that moves no coins (TEST, CONSUMPTION_REQUEST, REFUND_DECLINED, ...)."""
        notification = self._verified(lambda v: v.verify_and_decode_notification(signed_payload))
        kind = _NOTICE_KINDS.get(notification.notificationType) if notification.notificationType else None
        if kind is None:
            log.info("App Store notification %s moves no coins", notification.rawNotificationType)
            return None
        signed_transaction = notification.data.signedTransactionInfo if notification.data else None
        if not signed_transaction or not notification.notificationUUID or notification.signedDate is None:
            raise ReceiptRejected("the notification lacks its transaction, id or date")
        transaction = self._verified(lambda v: v.verify_and_decode_signed_transaction(signed_transaction))
        return StoreNotice(
            store=self.store,
            notification_id=notification.notificationUUID,
            kind=kind,
            store_transaction_id=transaction.transactionId or "",
            occurred_at=datetime.fromtimestamp(notification.signedDate / 1000, UTC),
        )

    # ------------------------------------------------------------------------------------------

    def _verified(self, decode: Callable[[SignedDataVerifier], T]) -> T:
        """`decode` with the first verifier whose environment the data is from; refusals with reasons."""
        for verifier in self._verifiers:
            try:
                return decode(verifier)
            except VerificationException as exc:
                if exc.status == VerificationStatus.INVALID_ENVIRONMENT and verifier is not self._verifiers[-1]:
                    continue
                raise _refusal(exc) from None
            except Exception as exc:  # the payload does not fit the library's models: not App Store data
                raise ReceiptRejected(f"not App Store signed data ({type(exc).__name__})") from None
        raise AssertionError("unreachable: the last verifier raises")


def _refusal(exc: VerificationException) -> Exception:
    """Apple's library's verdict as the wallet's reason.

    The library says VERIFICATION_FAILURE both for a signature that does not verify and for a chain
    that does not (OpenSSL's verdict, or Apple's extensions missing): the cause it chains tells which.
    """
    status, cause = exc.status, exc.__cause__
    if status == VerificationStatus.INVALID_APP_IDENTIFIER:
        return ReceiptRejected("signed for another app (bundle id or Apple id)", "STORE_APP_MISMATCH")
    if status == VerificationStatus.INVALID_ENVIRONMENT:
        return ReceiptRejected(
            "signed in another App Store environment than this wallet accepts", "STORE_ENVIRONMENT_MISMATCH"
        )
    if status == VerificationStatus.RETRYABLE_VERIFICATION_FAILURE:
        return StoreUnavailable("Apple's OCSP responder did not answer")
    if status in (
        VerificationStatus.INVALID_CERTIFICATE,
        VerificationStatus.INVALID_CHAIN_LENGTH,
        VerificationStatus.INVALID_CHAIN,
    ) or isinstance(cause, crypto.X509StoreContextError | x509.ExtensionNotFound):
        return ReceiptRejected(
            "its certificate chain does not lead to a configured App Store root", "STORE_CERTIFICATE_INVALID"
        )
    if isinstance(cause, jwt.InvalidSignatureError):
        return ReceiptRejected("its signature does not verify: altered after signing", "STORE_SIGNATURE_INVALID")
    return ReceiptRejected("not App Store signed data")


def _minor_units(price_milliunits: int | None, currency: str | None) -> int | None:
    """Apple's price (milliunits) in the currency's minor units, floored; None when Apple gives none."""
    if price_milliunits is None or not currency:
        return None
    digits = _MINOR_UNIT_DIGITS.get(currency, 2)
    return price_milliunits * 10**digits // 1000
