"""Building and running a giftcoin gRPC server, the same way for every service.

Servers are asynchronous (`grpc.aio`), on the process's event loop (runtime.eventloop): no call in
flight holds a thread while it waits. A servicer method is either a coroutine (`async def`: it waits
for something other than its database — a batch, a peer, the next event of a feed) or a plain
function, which the server runs on the service's database threads (it does blocking database work
and nothing else). Either way it returns a response or raises `DomainError`.

`create_server` builds and starts (tests call it with port 0); `serve` waits for SIGTERM/SIGINT,
then stops gracefully: health NOT_SERVING, background loops stopped, in-flight calls drained for the
grace period. Every RPC of the service passes the guard: its server span is started (continuing the
caller's W3C trace context from the metadata), the caller's token is verified and the method's
`Access` checked, the request decoded (bytes that are not the request message are INVALID_ARGUMENT,
after identity), and a `DomainError` becomes a gRPC status with google.rpc details. An unexpected
exception becomes INTERNAL with its cause logged, never sent. One access-log line per RPC.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime import eventloop
from services.runtime.auth import (
    Access,
    TokenVerifier,
    caller_from_metadata,
    current_caller_or_none,
    reset_current_caller,
    set_current_caller,
)
from services.runtime.config import ServiceSettings
from services.runtime.errors import DomainError, malformed_request, to_rpc_status
from services.runtime.http import HttpEndpoint
from services.runtime.telemetry import RPC_DURATION, setup_tracing, shutdown_tracing, untraced

log = logging.getLogger(__name__)
access_log = logging.getLogger("giftcoin.access")


class BackgroundLoop:
    """A task on the event loop running `step` every `interval` seconds until stopped.

    A plain `step` runs on the service's database threads, a coroutine on the loop; a failing step
    is logged and tried again at the next tick. A step is untraced: a tick that finds nothing to do
    emits no span, and what it finds it traces itself (`telemetry.traced`).
    """

    def __init__(self, name: str, interval: float, step: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self._task: asyncio.Task[None] | None = None

    def start(self, executor: Executor) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(executor), name=self.name)

    async def _run(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        asynchronous = inspect.iscoroutinefunction(self.step)
        while True:
            await asyncio.sleep(self.interval)
            try:
                with untraced():
                    if asynchronous:
                        await self.step()  # type: ignore[misc]
                    else:
                        await loop.run_in_executor(executor, contextvars.copy_context().run, self.step)
            except Exception:
                log.exception("background loop %s failed; retrying next tick", self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class ServiceApp:
    """What a service's `build()` returns: its servicer, who may call what, its loops, its threads."""

    name: str  # wallet | gifting | payout
    full_name: str  # e.g. giftcoin.wallet.v1.WalletService
    servicer: object
    add_to_server: Callable[[Any, Any], None]
    access: Mapping[str, Access]  # RPC name -> who may call it
    executor: Executor  # the database's threads: plain servicer methods and blocking loop steps run here
    loops: list[BackgroundLoop] = field(default_factory=list)
    close: Callable[[], None] = lambda: None
    # HTTP endpoints served beside the gRPC port (wallet's store notifications): started with it, and
    # stopped first (their requests in flight finish).
    http_endpoints: list[HttpEndpoint] = field(default_factory=list)

    @property
    def domain(self) -> str:
        return f"{self.name}.giftcoin"


# The W3C trace-context headers a caller's metadata may carry.
_TRACE_HEADERS = ("traceparent", "tracestate")


def _serialize(message: Any) -> bytes:
    """A response as bytes; a stream may yield bytes it serialized once for many callers (a feed)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class _Guard(grpc.aio.ServerInterceptor):
    """Tracing, identity, access, decoding and errors, for every RPC of the service, in one interceptor.

    The span is started here rather than by opentelemetry-instrumentation-grpc's server interceptor,
    which doubled the server's CPU per call even with no span recorded. The request reaches the guard
    as bytes and is decoded after the caller is known: an anonymous caller is UNAUTHENTICATED whatever
    it sends, and bytes that do not decode are INVALID_ARGUMENT, never INTERNAL.
    """

    def __init__(self, app: ServiceApp, verifier: TokenVerifier, tracer: trace.Tracer) -> None:
        self.app = app
        self.verifier = verifier
        self.prefix = f"/{app.full_name}/"
        self.tracer = tracer
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        guarded = self._handlers.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(details)
        if handler is None or not method.startswith(self.prefix):
            return handler  # health, reflection: open to all
        name = method[len(self.prefix) :]
        access = self.app.access.get(name)
        decode = handler.request_deserializer
        assert decode is not None  # every generated handler has its request's parser
        if handler.unary_unary is not None:
            guarded = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, decode, name, access), response_serializer=_serialize
            )
        elif handler.unary_stream is not None:
            guarded = grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, decode, name, access), response_serializer=_serialize
            )
        else:
            return handler
        self._handlers[method] = guarded
        return guarded

    def _admit(
        self,
        raw: bytes,
        context: grpc.aio.ServicerContext,
        access: Access | None,
        decode: Callable[[bytes], Any],
        name: str,
    ) -> tuple[Any, contextvars.Token[Any]]:
        """The decoded request of a caller who may call the method, and the caller's context token."""
        caller = caller_from_metadata(tuple(context.invocation_metadata() or ()), self.verifier)
        if access is None:  # an RPC without a declared policy is closed, not open
            raise RuntimeError("RPC has no access policy")
        access.check(caller)
        token = set_current_caller(caller)
        try:
            return decode(raw), token
        except (DecodeError, ValueError, TypeError) as error:  # what protobuf raises for bytes it cannot parse
            reset_current_caller(token)
            raise malformed_request(name, error) from None

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, error: BaseException) -> NoReturn:
        span = trace.get_current_span()
        if isinstance(error, DomainError):
            span.set_status(Status(StatusCode.ERROR, error.reason))
            span.set_attribute("rpc.grpc.status_code", error.code.value[0])
            span.set_attribute("giftcoin.error.reason", error.reason)
            status = rpc_status.to_status(to_rpc_status(error, self.app.domain))
            await context.abort(status.code, status.details, status.trailing_metadata)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
        span.record_exception(error)
        log.error("unhandled error in %s", method, exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _done(
        self, context: grpc.aio.ServicerContext, method: str, started: float, error: BaseException | None
    ) -> None:
        """The call's duration, status code and (failed) error type (rpc.server.call.duration), and its
        access-log line."""
        elapsed = time.perf_counter() - started
        attributes = {"rpc.system.name": "grpc", "rpc.method": f"{self.app.full_name}/{method}"}
        if error is None:
            code = "OK"
        elif isinstance(error, DomainError):
            code = error.code.name
            attributes["error.type"] = error.reason
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED.name  # the client went away (or its deadline passed)
        else:
            code = grpc.StatusCode.INTERNAL.name
            attributes["error.type"] = type(error).__qualname__
        attributes["rpc.response.status_code"] = code
        RPC_DURATION.record(elapsed, attributes)
        if access_log.isEnabledFor(logging.INFO):
            caller = current_caller_or_none()
            access_log.info(
                "%s %s %.1fms",
                method,
                code,
                elapsed * 1000,
                extra={
                    "fields": {
                        "rpc_method": method,
                        "rpc_code": code,
                        "duration_ms": round(elapsed * 1000, 2),
                        "caller_kind": caller.kind.value if caller is not None else "",
                    }
                },
            )

    def _span(self, context: grpc.aio.ServicerContext, method: str) -> Any:
        """The call's server span, a child of the caller's span when its metadata carries one."""
        metadata = context.invocation_metadata() or ()
        carrier = {k: v for k, v in metadata if k in _TRACE_HEADERS and isinstance(v, str)}
        return self.tracer.start_as_current_span(
            f"{self.prefix}{method}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": self.app.full_name, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _unary(
        self, behavior: Callable[..., Any], decode: Callable[[bytes], Any], method: str, access: Access | None
    ) -> Callable[..., Awaitable[Any]]:
        blocking = not inspect.iscoroutinefunction(behavior)
        executor = self.app.executor

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            failure: BaseException | None = None
            with self._span(context, method):
                try:
                    request, token = self._admit(raw, context, access, decode, method)
                except Exception as error:
                    self._done(context, method, started, error)
                    await self._fail(context, method, error)
                try:
                    if blocking:
                        run = contextvars.copy_context().run
                        return await asyncio.get_running_loop().run_in_executor(
                            executor, run, behavior, request, context
                        )
                    return await behavior(request, context)
                except BaseException as error:
                    failure = error
                    if not isinstance(error, Exception):
                        raise  # cancelled: the client went away
                    await self._fail(context, method, error)
                finally:
                    self._done(context, method, started, failure)
                    reset_current_caller(token)

        return handle

    def _stream(
        self,
        behavior: Callable[..., Any],
        decode: Callable[[bytes], Any],
        method: str,
        access: Access | None,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failure: BaseException | None = None
            with self._span(context, method):
                try:
                    request, token = self._admit(raw, context, access, decode, method)
                except Exception as error:
                    self._done(context, method, started, error)
                    await self._fail(context, method, error)
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as error:
                    failure = error
                    if not isinstance(error, Exception):
                        raise
                    await self._fail(context, method, error)
                finally:
                    self._done(context, method, started, failure)
                    reset_current_caller(token)

        return handle


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    app: ServiceApp
    health_server: grpc.aio.Server | None = None  # the plaintext health-only port, when configured
    health_port: int = 0

    def stop(self, grace: float | None = 5.0) -> None:
        """Graceful: NOT_SERVING first, then loops, then drain in-flight calls (from any thread but the loop's)."""
        eventloop.run(self.stop_async(grace))

    async def stop_async(self, grace: float | None = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        for endpoint in self.app.http_endpoints:
            await asyncio.get_running_loop().run_in_executor(None, endpoint.stop)
        for loop in self.app.loops:
            await loop.stop()
        await self.server.stop(grace)
        # Last, so that probes read NOT_SERVING (not a refused connection) while calls drain.
        if self.health_server is not None:
            await self.health_server.stop(None)
        await asyncio.get_running_loop().run_in_executor(None, self.app.close)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Server reflection as grpc.reflection.v1alpha (grpcio-reflection's) and v1, which today's tools ask
    first: v1's messages are v1alpha's, field for field, so v1alpha's servicer answers both."""
    reflection.enable_server_reflection(service_names, server)
    servicer = reflection.aio.ReflectionServicer(service_names)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    tls = settings.tls
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=Path(tls.ca_file).read_bytes(),
        require_client_auth=True,
    )


MAX_PENDING_CALLS = 32_768


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    """Connections that behave in a cluster (README "Connections"): clients may ping every
    `min_client_ping_seconds` or more without being cut off, the server pings idle connections to
    find clients that vanished, and connections age out so that client-side round robin rebalances,
    with a grace in which the calls in flight finish."""
    c = settings.connections
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", c.keepalive_time_seconds * 1000),
        # gRPC core times its pings out by ping_timeout_ms (keepalive_timeout_ms alone is not enough).
        ("grpc.keepalive_timeout_ms", c.keepalive_timeout_seconds * 1000),
        ("grpc.http2.ping_timeout_ms", c.keepalive_timeout_seconds * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The least time between a client's pings that the server accepts (MIN_RECV_PING_INTERVAL_WITHOUT_DATA).
        ("grpc.http2.min_ping_interval_without_data_ms", c.min_client_ping_seconds * 1000),
        # Calls that arrived but that the event loop has not picked up yet: past gRPC's defaults (about a
        # thousand, then three), a burst (thousands of viewers reconnecting after a replica stopped) had
        # calls cancelled at random, CANCELLED with no reason. Viewers are capped with a reason instead
        # (GIFTCOIN_GIFTING_FEED_MAX_VIEWERS).
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        ("grpc.max_connection_age_ms", c.max_connection_age_seconds * 1000),
        ("grpc.max_connection_age_grace_ms", c.max_connection_age_grace_seconds * 1000),
    ]


def create_server(app: ServiceApp, settings: ServiceSettings, address: str | None = None) -> RunningServer:
    """Build and start a server for `app` on `address` (default: the configured one; port 0 = any)."""
    return eventloop.run(start_server(app, settings, address))


async def start_server(app: ServiceApp, settings: ServiceSettings, address: str | None = None) -> RunningServer:
    provider = setup_tracing(
        settings.service,
        settings.trace_exporter,
        settings.trace_file,
        metrics_host=settings.host,
        metrics_port=settings.metrics_port,
        timeout_ms=settings.telemetry_timeout_ms,
    )
    server = grpc.aio.server(
        interceptors=[_Guard(app, TokenVerifier.from_settings(settings.identity), provider.get_tracer("giftcoin.rpc"))],
        options=server_options(settings),
    )
    app.add_to_server(app.servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server, (app.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1))
    address = address or settings.address
    if settings.tls.enabled:
        port = server.add_secure_port(address, _server_credentials(settings))
    else:
        port = server.add_insecure_port(address)
    await server.start()
    health_server, health_port = await _start_health_server(health_servicer, settings)
    for loop in app.loops:
        loop.start(app.executor)
    for endpoint in app.http_endpoints:
        endpoint.start()
    for name in ("", app.full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on port %d", app.full_name, port)
    return RunningServer(server, port, health_servicer, app, health_server, health_port)


async def _start_health_server(
    health_servicer: HealthServicer, settings: ServiceSettings
) -> tuple[grpc.aio.Server | None, int]:
    """Serve only grpc.health.v1, in plaintext, on GIFTCOIN_HEALTH_PORT (for the kubelet's probes)."""
    if not settings.health_port:
        return None, 0
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await server.start()
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
