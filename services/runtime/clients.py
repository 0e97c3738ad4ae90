"""Outbound gRPC: channels to peer services with identity, tracing, retries and deadlines.

Retries (AIP-194) are done by gRPC itself, from the channel's service config: only UNAVAILABLE,
and ABORTED for our mutating calls, which all carry a request id and so are idempotent. Every call
gets a deadline: callers pass `timeout`, and `DeadlineChannel`'s default covers those that forget.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

from services.runtime.auth import Caller, mint_token
from services.runtime.config import TlsSettings

DEFAULT_TIMEOUT_SECONDS = 5.0


def retry_service_config(service_full_name: str, attempts: int = 4) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": service_full_name}],
                    "retryPolicy": {
                        "maxAttempts": attempts,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"],
                    },
                }
            ],
            "loadBalancingConfig": [{"round_robin": {}}],
        }
    )


class _Identity(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` for a fixed caller, re-minting before expiry."""

    def __init__(self, caller: Caller, secret: str, ttl_seconds: int = 600) -> None:
        self.caller = caller
        self.secret = secret
        self.ttl = ttl_seconds
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            if time.monotonic() > self._expires:
                self._token = mint_token(self.caller, self.secret, self.ttl)
                self._expires = time.monotonic() + self.ttl / 2
            return self._token

    def _details(self, details: Any, default_timeout: float) -> Any:
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token()}")]
        return _Details(
            details.method,
            details.timeout if details.timeout is not None else default_timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, DEFAULT_TIMEOUT_SECONDS), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # Streams (live feeds) are long-lived: no default deadline.
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token()}")]
        return continuation(
            _Details(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


class _Details(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def open_channel(
    target: str,
    service_full_name: str,
    caller: Caller,
    jwt_secret: str,
    tls: TlsSettings | None = None,
) -> grpc.Channel:
    """A channel to `target` calling as `caller`, traced, with retries for `service_full_name`."""
    options = [
        ("grpc.service_config", retry_service_config(service_full_name)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect soon after a peer comes back: gRPC's default backoff grows to 120 s, which would
        # hold up a saga's steps for minutes after a short outage of wallet or payout.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if tls is not None and tls.enabled:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.ca_file).read_bytes(),
            private_key=Path(tls.key_file).read_bytes(),
            certificate_chain=Path(tls.cert_file).read_bytes(),
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    # The tracing interceptor resolves the global tracer provider lazily, so a channel opened before
    # telemetry is set up still joins the caller's trace (W3C traceparent in the metadata). It is an
    # OpenTelemetry grpcext interceptor, not a grpc one, so it wraps the channel through grpcext.
    traced = grpcext.intercept_channel(channel, client_interceptor())
    return grpc.intercept_channel(traced, _Identity(caller, jwt_secret))
