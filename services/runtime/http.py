"""A small HTTP endpoint beside a service's gRPC port, for callers that speak only HTTP (the app
stores' server notifications).

The plumbing only: routes map (method, path) to a handler, a plain function from `HttpRequest` to
`HttpAnswer` that knows nothing of the server, so that the handlers can move to another server (the
asyncio event loop the runtime is moving to) unchanged. Each request is a SERVER span (continuing the
caller's W3C trace context from its headers); `GET /healthz` answers 200 while serving, 503 once
stopping. Served by the standard library's threaded `http.server`: a notification is a rare, short
request, and this needs no dependency and no event loop of its own. Bodies are read whole, up to
MAX_BODY bytes, and must say their length.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
DRAIN_LIMIT = 16 * MAX_BODY  # an over-long body read and dropped, to answer it; longer ones are cut off
READ_TIMEOUT_SECONDS = 30
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: Mapping[str, str]  # the first value of each parameter
    headers: Mapping[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: Mapping[str, object] = field(default_factory=dict)  # sent as JSON


Handler = Callable[[HttpRequest], HttpAnswer]


class HttpEndpoint:
    """Serves `routes` on host:port (0: any free port) in threads of its own, once started."""

    def __init__(self, name: str, host: str, port: int, routes: Mapping[tuple[str, str], Handler]) -> None:
        self.name = name
        self._address = (host, port)
        self._routes = dict(routes)
        self._serving = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        endpoint = self

        class _Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_SECONDS  # a client that sends nothing holds its thread no longer

            def do_GET(self) -> None:
                endpoint._serve(self)

            def do_POST(self) -> None:
                endpoint._serve(self)

            def log_message(self, format: str, *args: object) -> None:  # the span and our logs say it
                return

        self._server = ThreadingHTTPServer(self._address, _Handler)
        self._server.daemon_threads = False  # stop() waits for requests in flight
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-http", daemon=True)
        self._thread.start()
        self._serving.set()
        log.info("%s (HTTP) on port %d", self.name, self.port)

    def stop(self) -> None:
        """Health says 503 at once; then no new connection, and the requests in flight finish."""
        self._serving.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the request threads
            self._server = None

    def _serve(self, exchange: BaseHTTPRequestHandler) -> None:
        url = urlsplit(exchange.path)
        headers = {k.lower(): v for k, v in exchange.headers.items()}
        tracer = trace.get_tracer("giftcoin.http")
        with tracer.start_as_current_span(
            f"{exchange.command} {url.path}",
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": exchange.command, "url.path": url.path},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            answer = self._answer(exchange, url.path, url.query, headers)
            span.set_attribute("http.response.status_code", answer.status)
            if answer.status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(answer.body.get("reason", ""))))
            data = json.dumps(answer.body, sort_keys=True).encode()
            exchange.send_response(answer.status)
            exchange.send_header("Content-Type", "application/json")
            exchange.send_header("Content-Length", str(len(data)))
            exchange.end_headers()
            exchange.wfile.write(data)

    def _answer(
        self, exchange: BaseHTTPRequestHandler, path: str, query: str, headers: Mapping[str, str]
    ) -> HttpAnswer:
        if path == HEALTH_PATH and exchange.command == "GET":
            serving = self._serving.is_set()
            return HttpAnswer(HTTPStatus.OK if serving else HTTPStatus.SERVICE_UNAVAILABLE, {"serving": serving})
        handler = self._routes.get((exchange.command, path))
        if handler is None:
            return HttpAnswer(HTTPStatus.NOT_FOUND, {"reason": "NOT_FOUND", "message": f"no route {path}"})
        length = headers.get("content-length", "")
        if not length.isdigit():
            return HttpAnswer(HTTPStatus.LENGTH_REQUIRED, {"reason": "INVALID_ARGUMENT", "message": "say its length"})
        if int(length) > MAX_BODY:
            # Read (and drop) what the client is sending before answering: a client still writing its
            # body when the connection closes sees a broken pipe, not the 413. Past a bound, just close.
            if int(length) <= DRAIN_LIMIT:
                _drain(exchange, int(length))
            return HttpAnswer(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"reason": "INVALID_ARGUMENT", "message": "too large"}
            )
        body = exchange.rfile.read(int(length))
        request = HttpRequest(exchange.command, path, {k: v[0] for k, v in parse_qs(query).items()}, headers, body)
        try:
            return handler(request)
        except Exception:
            log.exception("%s %s failed", exchange.command, path)
            return HttpAnswer(HTTPStatus.INTERNAL_SERVER_ERROR, {"reason": "INTERNAL", "message": "internal error"})


def _drain(exchange: BaseHTTPRequestHandler, length: int) -> None:
    while length > 0:
        chunk = exchange.rfile.read(min(length, 1 << 16))
        if not chunk:
            return
        length -= len(chunk)
