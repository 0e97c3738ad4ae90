"""Outbound gRPC: channels to peer services with identity, tracing, retries and deadlines.

Services call their peers on asynchronous channels (`open_async_channel`, on the event loop: a call
waiting on a peer holds no thread); the command line and tests use blocking ones (`open_channel`).
Both are configured alike. Retries (AIP-194) are done by gRPC itself, from the channel's service
config: only UNAVAILABLE, and ABORTED for our mutating calls, which all carry a request id and so are
idempotent. Every call gets a deadline: callers pass `timeout`, and `DEFAULT_TIMEOUT_SECONDS` covers
those that forget. One interceptor adds the caller's token, the deadline and, for a unary call, a
CLIENT span whose W3C trace context goes in the metadata (the peer's server span is its child):
opentelemetry-instrumentation-grpc's client interceptor cost more CPU per call than the call itself does.
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


class _Identity:
    """A caller's `authorization: Bearer <token>` (from its token source, runtime.auth.TokenSource, which
    mints it again before it expires) and the current trace context, as call metadata."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def metadata(self, metadata: Any) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the current span's context: the call's span, when there is one
        return [*(metadata or []), ("authorization", f"Bearer {self.token()}"), *carrier.items()]


def _client_span(method: Any) -> trace.Span:
    # The global provider, resolved when the span starts: a channel opened before telemetry is set
    # up still joins the caller's trace.
    name = method.decode() if isinstance(method, bytes) else str(method)
    return trace.get_tracer("giftcoin.rpc").start_span(name, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"})


def _end(span: trace.Span, code: grpc.StatusCode) -> None:
    """End a call's CLIENT span with its status code."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class _Outbound(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the identity, a default deadline and the trace context to every call of a blocking
    channel; a unary call is a CLIENT span named for its method."""

    def __init__(self, identity: _Identity) -> None:
        self.identity = identity

    def _details(self, details: Any, timeout: float | None) -> Any:
        metadata = self.identity.metadata(details.metadata)
        return _Details(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        span = _client_span(details.method)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            outcome = continuation(self._details(details, timeout), request)
        except BaseException:
            span.end()
            raise
        finally:
            otel_context.detach(token)
        outcome.add_done_callback(lambda done: _end(span, done.code()))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # Streams (live feeds) are long-lived: no default deadline, and no client span of their own.
        return continuation(self._details(details, details.timeout), request)


class _AsyncOutbound(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """The same for an asynchronous channel."""

    def __init__(self, identity: _Identity) -> None:
        self.identity = identity

    def _details(self, details: grpc.aio.ClientCallDetails, timeout: float | None) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self.identity.metadata(details.metadata))
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        span = _client_span(details.method)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            call = await continuation(self._details(details, timeout), request)
        except BaseException:
            span.end()
            raise
        finally:
            otel_context.detach(token)
        try:
            await call
        except grpc.RpcError as error:
            _end(span, error.code())
        except BaseException:
            span.end()
            raise
        else:
            _end(span, grpc.StatusCode.OK)
        return call

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, details.timeout), request)


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


def _options(service_full_name: str) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", retry_service_config(service_full_name)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # A peer that stopped answering (paused, its packets dropped) is found by its unanswered pings
        # and its calls then fail at once, UNAVAILABLE, instead of each waiting out its deadline.
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
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


def _credentials(tls: TlsSettings | None) -> grpc.ChannelCredentials | None:
    if tls is None or not tls.enabled:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca_file).read_bytes(),
        private_key=Path(tls.key_file).read_bytes(),
        certificate_chain=Path(tls.cert_file).read_bytes(),
    )


def open_channel(
    target: str,
    service_full_name: str,
    token: Callable[[], str],
    tls: TlsSettings | None = None,
) -> grpc.Channel:
    """A blocking channel to `target` sending `token()` as its identity, traced, with retries for
    `service_full_name`."""
    options, credentials = _options(service_full_name), _credentials(tls)
    if credentials is not None:
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _Outbound(_Identity(token)))


def open_async_channel(
    target: str,
    service_full_name: str,
    token: Callable[[], str],
    tls: TlsSettings | None = None,
) -> grpc.aio.Channel:
    """The same channel, asynchronous: opened and used on the event loop."""
    options, credentials = _options(service_full_name), _credentials(tls)
    interceptors = [_AsyncOutbound(_Identity(token))]
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
