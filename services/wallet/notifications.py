"""What the stores' server notifications do, as plain request -> answer functions (no HTTP server).

- `POST /app-store/notifications`: an App Store Server Notification v2 (`{"signedPayload": <JWS>}`),
  verified with Apple's library; a REFUND / REVOKE / REFUND_REVERSED applies through the wallet's
  refund path (`Wallets.apply_store_notice`), once per notificationUUID.
- `POST /google-play/notifications`: a Real-time Developer Notification, as Pub/Sub pushes it
  (`{"message": {"data": <base64 JSON>, "messageId": ...}, "subscription": ...}`); a voided-purchase
  notification makes the wallet read the Voided Purchases API and apply what it lists.

Answers: 200 with what happened (`outcome`: applied, unchanged, no_purchase, duplicate, ignored); 400
with a reason (the store data does not verify, or is not a notification); 403 for a push without the
configured token; 503 when the store cannot be asked now (the stores deliver again).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

from services.runtime.guarded import Transactions
from services.runtime.http import Handler, HttpAnswer, HttpRequest
from services.wallet.app_store import AppStoreProvider
from services.wallet.domain import UnitOfWork, Wallets
from services.wallet.google_play import GooglePlaySync
from services.wallet.model import ReceiptRejected, StoreUnavailable
from services.wallet.settings import GooglePlaySettings

log = logging.getLogger(__name__)

APP_STORE_PATH = "/app-store/notifications"
GOOGLE_PLAY_PATH = "/google-play/notifications"
IGNORED = "ignored"
# A voided purchase is looked for from this long before the notification's event time.
VOIDED_LOOKBACK = timedelta(hours=1)


class StoreNotifications:
    def __init__(
        self,
        wallets: Wallets,
        transactions: Transactions[UnitOfWork],
        app_store: AppStoreProvider | None,
        google_play: GooglePlaySync | None,
        google_play_settings: GooglePlaySettings | None,
    ) -> None:
        self._wallets = wallets
        self._transactions = transactions
        self._app_store = app_store
        self._google_play = google_play
        self._package = google_play_settings.package_name if google_play_settings else ""
        self._push_token = google_play_settings.push_token if google_play_settings else ""

    def routes(self) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {}
        if self._app_store is not None:
            routes["POST", APP_STORE_PATH] = self.app_store
        if self._google_play is not None:
            routes["POST", GOOGLE_PLAY_PATH] = self.google_play
        return routes

    def app_store(self, request: HttpRequest) -> HttpAnswer:
        assert self._app_store is not None
        body = _json(request.body)
        signed = body.get("signedPayload") if body else None
        if not isinstance(signed, str) or not signed:
            return _refused("INVALID_ARGUMENT", 'the body must be {"signedPayload": "<JWS>"}')
        try:
            notice = self._app_store.notice(signed)
        except ReceiptRejected as exc:
            return _refused(exc.reason, f"the App Store notification does not verify: {exc}")
        except StoreUnavailable as exc:
            return _unavailable(exc)
        if notice is None:
            return HttpAnswer(HTTPStatus.OK, {"outcome": IGNORED})
        outcome = self._wallets.apply_notice_once(self._transactions, notice)
        log.info("App Store notification %s (%s): %s", notice.notification_id, notice.kind, outcome)
        return HttpAnswer(HTTPStatus.OK, {"outcome": outcome, "notification_id": notice.notification_id})

    def google_play(self, request: HttpRequest) -> HttpAnswer:
        assert self._google_play is not None
        if self._push_token and not hmac.compare_digest(request.query.get("token", ""), self._push_token):
            return HttpAnswer(HTTPStatus.FORBIDDEN, {"reason": "PERMISSION_DENIED", "message": "wrong push token"})
        push = _json(request.body)
        message = push.get("message") if push else None
        data = message.get("data") if isinstance(message, dict) else None
        try:
            notification = json.loads(base64.b64decode(data, validate=True)) if isinstance(data, str) else None
        except (ValueError, binascii.Error):
            notification = None
        if not isinstance(notification, dict):
            return _refused("INVALID_ARGUMENT", "not a Pub/Sub push of a Real-time Developer Notification")
        if notification.get("packageName") != self._package:
            return _refused("STORE_APP_MISMATCH", f"a notification for {notification.get('packageName')!r}")
        if "voidedPurchaseNotification" not in notification:
            return HttpAnswer(HTTPStatus.OK, {"outcome": IGNORED})
        event_ms = str(notification.get("eventTimeMillis", ""))
        if not event_ms.isdigit():
            return _refused("INVALID_ARGUMENT", "the notification has no eventTimeMillis")
        since = datetime.fromtimestamp(int(event_ms) / 1000, UTC) - VOIDED_LOOKBACK
        try:
            outcomes = self._google_play.voided_since(since)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return HttpAnswer(HTTPStatus.OK, {"outcome": "voided_purchases_read", "outcomes": sorted(outcomes)})


def _json(body: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _refused(reason: str, message: str) -> HttpAnswer:
    return HttpAnswer(HTTPStatus.BAD_REQUEST, {"reason": reason, "message": message})


def _unavailable(exc: StoreUnavailable) -> HttpAnswer:
    return HttpAnswer(HTTPStatus.SERVICE_UNAVAILABLE, {"reason": "DEPENDENCY_UNAVAILABLE", "message": str(exc)})
