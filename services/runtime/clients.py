"""Outbound gRPC: channels to peer services with identity, tracing, retries and deadlines.

Retries (AIP-194) are done by gRPC itself, from the channel's service config: only UNAVAILABLE,
and ABORTED for our mutating calls, which all carry a request id and so are idempotent. Every call
gets a deadline: callers pass `timeout`, and `DEFAULT_TIMEOUT_SECONDS` covers those that forget.
One interceptor adds the caller's token, the deadline and, for a unary call, a CLIENT span whose W3C
trace context goes in the metadata (the peer's server span is its child): opentelemetry-
instrumentation-grpc's client interceptor cost more CPU per call than the call itself does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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


class _Outbound(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` (from the channel's token source, which mints it again
    before it expires), a default deadline, and the trace context; a unary call is a CLIENT span named
    for its method."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token
        self.tracer = trace.get_tracer("giftcoin.rpc")  # the global provider, resolved when spans start

    def _details(self, details: Any, timeout: float | None) -> Any:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the current span's context: the call's span, when there is one
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token()}"), *carrier.items()]
        return _Details(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        span = self.tracer.start_span(details.method, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"})
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            outcome = continuation(self._details(details, timeout), request)
        except BaseException:
            span.end()
            raise
        finally:
            otel_context.detach(token)
        outcome.add_done_callback(lambda done: _end(span, done))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # Streams (live feeds) are long-lived: no default deadline, and no client span of their own.
        return continuation(self._details(details, details.timeout), request)


def _end(span: trace.Span, call: Any) -> None:
    """End a call's CLIENT span with its status code."""
    code = call.code()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


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
    token: Callable[[], str],
    tls: TlsSettings | None = None,
) -> grpc.Channel:
    """A channel to `target` sending `token()` as its identity (runtime.auth.TokenSource), traced, with
    retries for `service_full_name`."""
    options = [
        ("grpc.service_config", retry_service_config(service_full_name)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect soon after a peer comes back: gRPC's default backoff grows to 120 s, which would
        # hold up a saga's steps for minutes after a short outage of wallet or payout.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # Connections of its own: by default channels with the same target and options share them, so
        # a channel opened while another (a feed follower) waits out a reconnect backoff after the
        # peer restarted failed its first calls at once, UNAVAILABLE, with the peer up again.
        ("grpc.use_local_subchannel_pool", 1),
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
    # The tracer resolves the global tracer provider lazily, so a channel opened before telemetry is
    # set up still joins the caller's trace.
    return grpc.intercept_channel(channel, _Outbound(token))
