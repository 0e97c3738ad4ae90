"""Google Play: purchase tokens verified with the Play Developer API, consumed once credited, and
refunds read from the Voided Purchases API (woken by Real-time Developer Notifications).

The API's documented REST shape (androidpublisher v3), over HTTPS with a service account's OAuth 2.0
token; its root URL and the token endpoint are configuration, so that the tests run a local server
that answers as the API does:
- `GET  {api}/androidpublisher/v3/applications/{package}/purchases/products/{product}/tokens/{token}`:
  the ProductPurchase (purchaseState 0 purchased / 1 cancelled / 2 pending, consumptionState,
  purchaseType 0 = a license tester's, obfuscatedExternalAccountId, orderId, quantity);
- `POST ...tokens/{token}:consume`: consumes (and so acknowledges) a consumable; a purchase not
  acknowledged within three days is refunded by Google;
- `GET  {api}/androidpublisher/v3/applications/{package}/purchases/voidedpurchases`: purchases refunded,
  charged back or revoked, paged by `token`.
The access token comes from the service account's JSON key by the JWT bearer grant (RFC 7523): an
RS256 assertion signed with the key, POSTed to the token endpoint (the key's token_uri, or
GIFTCOIN_WALLET_GOOGLE_PLAY_TOKEN_URL), answered with an access token kept until shortly before it
expires.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from services.runtime.clock import Clock
from services.runtime.guarded import Transactions
from services.wallet.domain import UnitOfWork, Wallets
from services.wallet.model import CHARGEBACK, REFUND, ReceiptRejected, StoreNotice, StoreUnavailable, VerifiedReceipt
from services.wallet.settings import GooglePlaySettings

log = logging.getLogger(__name__)

GOOGLE_PLAY = "google_play"
SCOPE = "https://www.googleapis.com/auth/androidpublisher"
MAX_ID_LENGTH = 256
PURCHASED, CANCELLED, PENDING = 0, 1, 2  # ProductPurchase.purchaseState
CONSUMED = 1  # ProductPurchase.consumptionState
TEST_PURCHASE = 0  # ProductPurchase.purchaseType (absent for a real purchase)
VOIDED_REASON_CHARGEBACK = 7  # VoidedPurchase.voidedReason
VOIDED_WINDOW = timedelta(days=30)  # how far back the Voided Purchases API keeps them
VOIDED_OVERLAP = timedelta(days=1)


class PlayApiError(Exception):
    """The API answered with an HTTP error about the request (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ServiceAccountTokens:
    """OAuth 2.0 access tokens for a service account, by the JWT bearer grant."""

    def __init__(self, key_file: str, token_url: str, timeout_seconds: float) -> None:
        key = json.loads(Path(key_file).read_text())
        self._email: str = key["client_email"]
        self._private_key: str = key["private_key"]
        self._token_url = token_url or key.get("token_uri") or "https://oauth2.googleapis.com/token"
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._token, self._expires = "", 0.0

    def token(self) -> str:
        with self._lock:
            if time.time() < self._expires - 60:
                return self._token
            now = int(time.time())
            assertion = jwt.encode(
                {"iss": self._email, "scope": SCOPE, "aud": self._token_url, "iat": now, "exp": now + 3600},
                self._private_key,
                algorithm="RS256",
            )
            form = urllib.parse.urlencode(
                {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
            ).encode()
            request = urllib.request.Request(
                self._token_url, form, {"Content-Type": "application/x-www-form-urlencoded"}
            )
            try:
                answer = _exchange(request, self._timeout)
            except PlayApiError as exc:  # our credentials, not the caller's receipt
                log.error("Google's token endpoint refused the service account: %s", exc)
                raise StoreUnavailable("Google refused the wallet's service account") from None
            if not isinstance(answer.get("access_token"), str):
                raise StoreUnavailable("the OAuth token endpoint gave no access token")
            self._token = answer["access_token"]
            self._expires = now + int(answer.get("expires_in", 3600))
            return self._token


class PlayDeveloperApi:
    """The few Play Developer API calls the wallet makes, for one app (package name)."""

    def __init__(self, api_url: str, package_name: str, tokens: ServiceAccountTokens, timeout_seconds: float) -> None:
        self._root = f"{api_url}/androidpublisher/v3/applications/{_quote(package_name)}/purchases"
        self._tokens = tokens
        self._timeout = timeout_seconds

    def product_purchase(self, product_id: str, token: str) -> dict[str, Any]:
        return self._call("GET", f"/products/{_quote(product_id)}/tokens/{_quote(token)}")

    def consume(self, product_id: str, token: str) -> None:
        self._call("POST", f"/products/{_quote(product_id)}/tokens/{_quote(token)}:consume")

    def voided_purchases(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Every purchase voided between `start` and `end`, all pages."""
        voided: list[dict[str, Any]] = []
        page = ""
        while True:
            query = {"startTime": _millis(start), "endTime": _millis(end), "maxResults": 1000}
            answer = self._call("GET", "/voidedpurchases", {**query, **({"token": page} if page else {})})
            voided += answer.get("voidedPurchases", [])
            page = answer.get("tokenPagination", {}).get("nextPageToken", "")
            if not page:
                return voided

    def _call(self, method: str, path: str, query: Mapping[str, object] | None = None) -> dict[str, Any]:
        url = self._root + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self._tokens.token()}", "Accept": "application/json"}
        return _exchange(
            urllib.request.Request(url, b"" if method == "POST" else None, headers, method=method), self._timeout
        )


def _exchange(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    """The JSON answer; PlayApiError for a 4xx about the request, StoreUnavailable for anything else
    that leaves the answer unknown (network, 5xx, our credentials refused)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        if exc.code in (401, 403) or exc.code >= 500 or exc.code == 429:
            log.warning("Google Play %s answered %d: %s", request.full_url.split("?")[0], exc.code, detail)
            raise StoreUnavailable(f"Google answered HTTP {exc.code}") from None
        raise PlayApiError(exc.code, detail) from None
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"Google did not answer ({type(exc).__name__})") from None
    try:
        answer = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise StoreUnavailable("Google's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise StoreUnavailable("Google's answer is not a JSON object")
    return answer


class GooglePlayProvider:
    """Verifies a Play purchase (the Billing Library's purchase JSON) with the Play Developer API."""

    store = GOOGLE_PLAY

    def __init__(self, settings: GooglePlaySettings, api: PlayDeveloperApi) -> None:
        self.settings = settings
        self.api = api
        self.products = dict(settings.products)  # product id -> package id

    @classmethod
    def from_settings(cls, settings: GooglePlaySettings) -> GooglePlayProvider:
        timeout = settings.timeout_ms / 1000
        tokens = ServiceAccountTokens(settings.service_account_file, settings.token_url, timeout)
        return cls(settings, PlayDeveloperApi(settings.api_url, settings.package_name, tokens, timeout))

    def verify(self, payload: str) -> VerifiedReceipt:
        product_id, token = _purchase_json(payload)
        package_id = self.products.get(product_id)
        if package_id is None:  # before asking Google
            raise ReceiptRejected(
                f"product {product_id!r} is no coin package here", "RECEIPT_PRODUCT_UNKNOWN", product_id=product_id
            )
        try:
            purchase = self.api.product_purchase(product_id, token)
        except PlayApiError as exc:
            raise ReceiptRejected(f"Google Play knows no purchase of {product_id} with this token ({exc})") from None
        state = purchase.get("purchaseState")
        if state == PENDING:
            raise ReceiptRejected("the purchase is pending: Google Play has not been paid yet", "RECEIPT_PENDING")
        if state == CANCELLED:
            raise ReceiptRejected("Google Play cancelled this purchase", "RECEIPT_REVOKED")
        if state != PURCHASED or purchase.get("productId", product_id) != product_id:
            raise ReceiptRejected(f"Google Play's purchase state {state!r} is not a purchase of {product_id}")
        if purchase.get("purchaseType") == TEST_PURCHASE and not self.settings.accept_test_purchases:
            raise ReceiptRejected(
                "a license tester's purchase; only real purchases are accepted", "STORE_ENVIRONMENT_MISMATCH"
            )
        account = purchase.get("obfuscatedExternalAccountId")
        if not isinstance(account, str) or not account:
            raise ReceiptRejected("the purchase carries no obfuscatedExternalAccountId", "RECEIPT_ACCOUNT_MISMATCH")
        if purchase.get("quantity", 1) != 1:
            raise ReceiptRejected(f"the purchase is for {purchase.get('quantity')} units; one package per purchase")
        order_id = purchase.get("orderId")
        return VerifiedReceipt(
            store=self.store,
            store_transaction_id=token,
            package_id=package_id,
            amount_minor=None,  # products.get does not say what was charged
            currency_code=None,
            account_token=account.lower(),
            order_id=order_id if isinstance(order_id, str) and order_id else None,
            consumed=purchase.get("consumptionState") == CONSUMED,
            needs_consuming=True,
        )


class GooglePlaySync:
    """Consumes credited Play purchases at the store, and applies the purchases Google voided.

    `step` is the wallet's Play loop; `voided_since` also answers a Real-time Developer Notification
    of a voided purchase (the notification only wakes it: what is applied is what the API says).
    """

    def __init__(
        self,
        api: PlayDeveloperApi,
        products: Mapping[str, str],
        wallets: Wallets,
        transactions: Transactions[UnitOfWork],
        clock: Clock,
    ) -> None:
        self._api = api
        self._products = {package: product for product, package in products.items()}
        self._wallets = wallets
        self._transactions = transactions
        self._clock = clock
        self._read_until: datetime | None = None  # the end of the last voided purchases read

    def step(self) -> None:
        self.consume_credited()
        # The whole window on the first step, then from a day before the last read (a purchase shows in
        # the list some time after Google voided it): each voided purchase applies once all the same.
        now = self._clock.now()
        start = now - VOIDED_WINDOW
        if self._read_until is not None:
            start = max(start, self._read_until - VOIDED_OVERLAP)
        self.voided_since(start)
        self._read_until = now

    def consume_credited(self) -> int:
        """Consume every credited purchase not consumed yet; how many were. A purchase Google refuses to
        consume is logged and tried again next time; one it cancelled meanwhile has nothing to consume."""
        consumed = 0
        for purchase in self._transactions.run(lambda uow: self._wallets.purchases_to_consume(uow, GOOGLE_PLAY)):
            product_id = self._products.get(purchase.package_id)
            if product_id is None:
                log.error(
                    "no Google Play product sells %s: purchase %s not consumed",
                    purchase.package_id,
                    purchase.purchase_id,
                )
                continue
            try:
                self._consume(product_id, purchase.store_transaction_id)
            except PlayApiError as exc:
                log.error("Google Play refused to consume purchase %s: %s", purchase.purchase_id, exc)
                continue
            self._transactions.run(lambda uow, p=purchase.purchase_id: self._wallets.consumed(uow, p))  # type: ignore[misc]
            consumed += 1
        return consumed

    def _consume(self, product_id: str, token: str) -> None:
        try:
            self._api.consume(product_id, token)
        except PlayApiError:
            # Consumed already (by an earlier try whose mark did not commit), or cancelled meanwhile.
            state = self._api.product_purchase(product_id, token)
            if state.get("consumptionState") != CONSUMED and state.get("purchaseState") != CANCELLED:
                raise

    def voided_since(self, start: datetime) -> list[str]:
        """Apply every purchase voided since `start` (each once: its notification id is its purchase token);
        what each did."""
        results = []
        for voided in self._api.voided_purchases(start, self._clock.now()):
            token, voided_ms = voided.get("purchaseToken"), str(voided.get("voidedTimeMillis", ""))
            if not isinstance(token, str) or not token or len(token) > MAX_ID_LENGTH or not voided_ms.isdigit():
                log.error("a voided purchase without a token or time: %r", voided)
                continue
            notice = StoreNotice(
                store=GOOGLE_PLAY,
                notification_id=token,  # Google voids a purchase once
                kind=CHARGEBACK if voided.get("voidedReason") == VOIDED_REASON_CHARGEBACK else REFUND,
                store_transaction_id=token,
                occurred_at=datetime.fromtimestamp(int(voided_ms) / 1000, UTC),
            )
            results.append(self._wallets.apply_notice_once(self._transactions, notice))
        return results


def _purchase_json(payload: str) -> tuple[str, str]:
    """(productId, purchaseToken) of the Play Billing Library's purchase JSON."""
    try:
        purchase = json.loads(payload)
    except ValueError:
        raise ReceiptRejected("not a Google Play purchase JSON") from None
    if not isinstance(purchase, dict):
        raise ReceiptRejected("not a Google Play purchase JSON")
    product_id, token = purchase.get("productId"), purchase.get("purchaseToken")
    for name, value in (("productId", product_id), ("purchaseToken", token)):
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise ReceiptRejected(f"the purchase JSON needs a {name} of at most {MAX_ID_LENGTH} characters")
    assert isinstance(product_id, str) and isinstance(token, str)
    return product_id, token


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
