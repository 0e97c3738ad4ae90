"""Building and running a giftcoin gRPC server, the same way for every service.

`create_server` builds (tests call it with port 0); `serve` runs until SIGTERM/SIGINT, then marks
health NOT_SERVING, stops background loops and drains in-flight calls for the grace period.
Every RPC of the service passes the guard: its server span is started (continuing the caller's W3C
trace context from the metadata), the caller's token is verified, the method's `Access` checked, and
a `DomainError` becomes a gRPC status with google.rpc details. An unexpected exception becomes
INTERNAL with its cause logged, never sent.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime.auth import (
    Access,
    TokenVerifier,
    caller_from_metadata,
    reset_current_caller,
    set_current_caller,
)
from services.runtime.config import ServiceSettings
from services.runtime.errors import DomainError, to_rpc_status
from services.runtime.telemetry import RPC_DURATION, RPC_ERRORS, setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


class BackgroundLoop:
    """A daemon thread running `step` every `interval` seconds until stopped; a failing step is logged."""

    def __init__(self, name: str, interval: float, step: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except Exception:
                log.exception("background loop %s failed; retrying next tick", self.name)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


@dataclass
class ServiceApp:
    """What a service's `build()` returns: its servicer, who may call what, and its loops."""

    name: str  # wallet | gifting | payout
    full_name: str  # e.g. giftcoin.wallet.v1.WalletService
    servicer: object
    add_to_server: Callable[[Any, grpc.Server], None]
    access: Mapping[str, Access]  # RPC name -> who may call it
    loops: list[BackgroundLoop] = field(default_factory=list)
    close: Callable[[], None] = lambda: None

    @property
    def domain(self) -> str:
        return f"{self.name}.giftcoin"


# The W3C trace-context headers a caller's metadata may carry.
_TRACE_HEADERS = ("traceparent", "tracestate")


class _Guard(grpc.ServerInterceptor):
    """Tracing, identity, access and errors, for every RPC of the service, in one interceptor.

    The span is started here rather than by opentelemetry-instrumentation-grpc's server interceptor,
    which doubled the server's CPU per call (measured on a bare echo: 0.37 -> 0.60 ms) even with no
    span recorded: it wraps the servicer context and reads the peer's address on every call. The
    span is the same: named for the method, kind SERVER, the caller's context its parent.
    """

    def __init__(self, app: ServiceApp, verifier: TokenVerifier, tracer: trace.Tracer) -> None:
        self.app = app
        self.verifier = verifier
        self.prefix = f"/{app.full_name}/"
        self.tracer = tracer

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(self.prefix):
            return handler  # health, reflection: open to all
        name = method[len(self.prefix) :]
        access = self.app.access.get(name)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, name, access),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, name, access),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _authorize(self, context: grpc.ServicerContext, access: Access | None) -> Any:
        caller = caller_from_metadata(context.invocation_metadata(), self.verifier)
        if access is None:  # an RPC without a declared policy is closed, not open
            raise RuntimeError("RPC has no access policy")
        access.check(caller)
        return set_current_caller(caller)

    def _fail(self, context: grpc.ServicerContext, method: str, error: BaseException) -> None:
        span = trace.get_current_span()
        if isinstance(error, DomainError):
            span.set_status(Status(StatusCode.ERROR, error.reason))
            span.set_attribute("rpc.grpc.status_code", error.code.value[0])
            span.set_attribute("giftcoin.error.reason", error.reason)
            RPC_ERRORS.add(
                1, {"service": self.app.name, "method": method, "code": error.code.name, "reason": error.reason}
            )
            context.abort_with_status(rpc_status.to_status(to_rpc_status(error, self.app.domain)))
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
        span.record_exception(error)
        RPC_ERRORS.add(1, {"service": self.app.name, "method": method, "code": "INTERNAL", "reason": ""})
        log.error("unhandled error in %s", method, exc_info=error)
        context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _record(self, method: str, started: float) -> None:
        RPC_DURATION.record((time.perf_counter() - started) * 1000, {"service": self.app.name, "method": method})

    def _span(self, context: grpc.ServicerContext, method: str) -> Any:
        """The call's server span, a child of the caller's span when its metadata carries one."""
        carrier = {k: v for k, v in context.invocation_metadata() if k in _TRACE_HEADERS and isinstance(v, str)}
        return self.tracer.start_as_current_span(
            f"{self.prefix}{method}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": self.app.full_name, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _unary(self, behavior: Callable[..., Any], method: str, access: Access | None) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            with self._span(context, method):
                try:
                    token = self._authorize(context, access)
                except Exception as error:
                    self._fail(context, method, error)
                try:
                    return behavior(request, context)
                except Exception as error:
                    self._fail(context, method, error)
                finally:
                    reset_current_caller(token)
                    self._record(method, started)

        return handle

    def _stream(self, behavior: Callable[..., Iterator[Any]], method: str, access: Access | None) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._span(context, method):
                try:
                    token = self._authorize(context, access)
                except Exception as error:
                    self._fail(context, method, error)
                try:
                    yield from behavior(request, context)
                except Exception as error:
                    self._fail(context, method, error)
                finally:
                    reset_current_caller(token)

        return handle


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    app: ServiceApp
    health_server: grpc.Server | None = None  # the plaintext health-only port, when configured
    health_port: int = 0

    def stop(self, grace: float | None = 5.0) -> None:
        """Graceful: NOT_SERVING first, then loops, then drain in-flight calls."""
        self.health.enter_graceful_shutdown()
        for loop in self.app.loops:
            loop.stop()
        self.server.stop(grace).wait()
        # Last, so that probes read NOT_SERVING (not a refused connection) while calls drain.
        if self.health_server is not None:
            self.health_server.stop(None).wait()
        self.app.close()


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    tls = settings.tls
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=Path(tls.ca_file).read_bytes(),
        require_client_auth=True,
    )


def create_server(app: ServiceApp, settings: ServiceSettings, address: str | None = None) -> RunningServer:
    """Build and start a server for `app` on `address` (default: the configured one; port 0 = any)."""
    provider = setup_tracing(settings.service, settings.trace_exporter, settings.trace_file)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=f"{app.name}-rpc"),
        interceptors=[_Guard(app, TokenVerifier.from_settings(settings.identity), provider.get_tracer("giftcoin.rpc"))],
        options=[("grpc.so_reuseport", 0)],
    )
    app.add_to_server(app.servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((app.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = address or settings.address
    if settings.tls.enabled:
        port = server.add_secure_port(address, _server_credentials(settings))
    else:
        port = server.add_insecure_port(address)
    server.start()
    health_server, health_port = _start_health_server(health_servicer, settings)
    for loop in app.loops:
        loop.start()
    for name in ("", app.full_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on port %d", app.full_name, port)
    return RunningServer(server, port, health_servicer, app, health_server, health_port)


def _start_health_server(
    health_servicer: health.HealthServicer, settings: ServiceSettings
) -> tuple[grpc.Server | None, int]:
    """Serve only grpc.health.v1, in plaintext, on GIFTCOIN_HEALTH_PORT (for the kubelet's probes)."""
    if not settings.health_port:
        return None, 0
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"), options=[("grpc.so_reuseport", 0)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    server.start()
    log.info("health checks (plaintext) on port %d", port)
    return server, port


def serve(running: RunningServer, grace_seconds: float) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0fs", signum, grace_seconds)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Woken twice a second: the kernel may hand the signal to another thread, and Python then runs
    # the handler here only once this thread runs Python code again (cpython#85300).
    while not stopping.wait(0.5):
        pass
    running.stop(grace_seconds)
    shutdown_tracing()  # the last spans and metrics, before the process exits
    log.info("%s stopped", running.app.full_name)
