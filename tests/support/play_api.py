"""A local Google Play Developer API: a real HTTP server that answers as the API documents.

- `POST /token`: the OAuth 2.0 JWT bearer grant; the RS256 assertion must verify with the service
  account's public key, name its email and the androidpublisher scope, and be addressed to this URL;
- `GET .../applications/{package}/purchases/products/{product}/tokens/{token}`: the ProductPurchase,
  400 for a token it does not know (as the API answers "Invalid Value");
- `POST ...tokens/{token}:consume`: consumes a purchased, unconsumed purchase (empty 200), else 400;
- `GET .../applications/{package}/purchases/voidedpurchases`: the voided purchases whose voidedTimeMillis
  falls within startTime..endTime, two a page (`tokenPagination.nextPageToken`, `token`).
Every API call needs a bearer token this server issued. Tests set the purchases' states directly.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PACKAGE_NAME = "com.example.giftcoin"
PRODUCTS = {"coins_700_play": "coins_700", "coins_70_play": "coins_70"}
SERVICE_ACCOUNT = "wallet@giftcoin-test.iam.gserviceaccount.com"
PAGE_SIZE = 2


@dataclass
class PlayApi:
    """The server's state: purchases by (product id, token), voided purchases, issued access tokens."""

    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    purchases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    voided: list[dict[str, Any]] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    consumed: list[str] = field(default_factory=list)  # tokens, in the order consumed
    url: str = ""
    down: bool = False  # answer every call 503, as Google does in an outage
    silent_seconds: float = 0.0  # wait this long before answering (a store that hangs)
    calls: list[str] = field(default_factory=list)  # "METHOD path" of every API call, in order

    def purchase(
        self,
        account_token: str,
        product_id: str = "coins_700_play",
        state: int = 0,
        consumed: bool = False,
        test: bool = False,
        order_id: str = "",
        token: str = "",
    ) -> str:
        """A purchase Google knows; its token."""
        token = token or "tok-" + secrets.token_urlsafe(48)
        self.purchases[(product_id, token)] = {
            "kind": "androidpublisher#productPurchase",
            "purchaseTimeMillis": "1767268800000",
            "purchaseState": state,
            "consumptionState": 1 if consumed else 0,
            "developerPayload": "",
            "orderId": order_id or f"GPA.{secrets.randbelow(10**16):016d}",
            "acknowledgementState": 1 if consumed else 0,
            "purchaseToken": token,
            "productId": product_id,
            "quantity": 1,
            "obfuscatedExternalAccountId": account_token,
            "regionCode": "US",
            **({"purchaseType": 0} if test else {}),
        }
        return token

    def void(self, token: str, voided_ms: int, reason: int = 1) -> None:
        purchase = next(p for (_, t), p in self.purchases.items() if t == token)
        purchase["purchaseState"] = 1
        self.voided.append(
            {
                "kind": "androidpublisher#voidedPurchase",
                "purchaseToken": token,
                "purchaseTimeMillis": purchase["purchaseTimeMillis"],
                "voidedTimeMillis": str(voided_ms),
                "orderId": purchase["orderId"],
                "voidedSource": 0,
                "voidedReason": reason,
                "voidedQuantity": 1,
            }
        )

    def write_service_account(self, path: Path) -> Path:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        key = {
            "type": "service_account",
            "client_email": SERVICE_ACCOUNT,
            "private_key_id": "test",
            "private_key": pem,
            "token_uri": f"{self.url}/token",
        }
        path.write_text(json.dumps(key))
        return path

    # --- the exchange -------------------------------------------------------------------------

    def answer(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urllib.parse.urlsplit(url)
        path, query = urllib.parse.unquote(parts.path), dict(urllib.parse.parse_qsl(parts.query))
        if self.silent_seconds:
            time.sleep(self.silent_seconds)
        if self.down:
            return 503, _error(503, "The service is currently unavailable.")
        if method == "POST" and path == "/token":
            return self._token(dict(urllib.parse.parse_qsl(body.decode())))
        self.calls.append(f"{method} {path}")
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.access_tokens:
            return 401, _error(401, "Request had invalid authentication credentials.")
        prefix = f"/androidpublisher/v3/applications/{PACKAGE_NAME}/purchases"
        if not path.startswith(prefix + "/"):
            return 404, _error(404, "No application was found for the given package name.")
        rest = path[len(prefix) :].split("/")
        if method == "GET" and rest == ["", "voidedpurchases"]:
            return 200, self._voided(query)
        if len(rest) == 5 and rest[1] == "products" and rest[3] == "tokens":
            product_id, token = rest[2], rest[4]
            if method == "POST" and token.endswith(":consume"):
                return self._consume(product_id, token.removesuffix(":consume"))
            purchase = self.purchases.get((product_id, token))
            if method == "GET" and purchase is not None:
                return 200, purchase
            return 400, _error(400, "Invalid Value")
        return 404, _error(404, "Not Found")

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(
                form.get("assertion", ""), self.key.public_key(), algorithms=["RS256"], audience=f"{self.url}/token"
            )
        except jwt.InvalidTokenError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if (
            claims.get("iss") != SERVICE_ACCOUNT
            or claims.get("scope") != "https://www.googleapis.com/auth/androidpublisher"
        ):
            return 400, {"error": "invalid_scope"}
        token = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _consume(self, product_id: str, token: str) -> tuple[int, dict[str, Any]]:
        purchase = self.purchases.get((product_id, token))
        if purchase is None or purchase["purchaseState"] != 0 or purchase["consumptionState"] == 1:
            return 400, _error(400, "The purchase is not consumable.")
        purchase["consumptionState"] = purchase["acknowledgementState"] = 1
        self.consumed.append(token)
        return 200, {}

    def _voided(self, query: dict[str, str]) -> dict[str, Any]:
        start, end = int(query["startTime"]), int(query["endTime"])
        matching = [v for v in self.voided if start <= int(v["voidedTimeMillis"]) <= end]
        offset = int(query.get("token") or 0)
        page: dict[str, Any] = {"voidedPurchases": matching[offset : offset + PAGE_SIZE]}
        if offset + PAGE_SIZE < len(matching):
            page["tokenPagination"] = {"nextPageToken": str(offset + PAGE_SIZE)}
        return page


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": [{"message": message, "reason": "invalid"}]}}


@contextmanager
def serving(api: PlayApi) -> Iterator[PlayApi]:
    """`api` answering on 127.0.0.1 (its `url` set) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def _exchange(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = api.answer(self.command, self.path, headers, body)
            data = json.dumps(answer).encode() if answer or status != 200 else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _exchange

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
