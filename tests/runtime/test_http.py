"""The HTTP endpoint beside a service's gRPC port: routes, health, bounded bodies, and a stop that lets
the requests in flight finish."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from services.runtime.http import MAX_BODY, HttpAnswer, HttpEndpoint, HttpRequest


def call(url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def released() -> threading.Event:
    return threading.Event()


@pytest.fixture
def entered() -> threading.Event:
    return threading.Event()


@pytest.fixture
def endpoint(entered: threading.Event, released: threading.Event) -> Iterator[HttpEndpoint]:
    def echo(request: HttpRequest) -> HttpAnswer:
        return HttpAnswer(HTTPStatus.OK, {"body": request.body.decode(), "token": request.query.get("token", "")})

    def slow(request: HttpRequest) -> HttpAnswer:
        entered.set()
        released.wait(10)
        return HttpAnswer(HTTPStatus.OK, {"finished": True})

    def broken(request: HttpRequest) -> HttpAnswer:
        raise RuntimeError("a bug")

    endpoint = HttpEndpoint(
        "test", "127.0.0.1", 0, {("POST", "/echo"): echo, ("POST", "/slow"): slow, ("POST", "/broken"): broken}
    )
    endpoint.start()
    yield endpoint
    released.set()
    endpoint.stop()


def test_routes_health_and_refusals(endpoint: HttpEndpoint) -> None:
    root = f"http://127.0.0.1:{endpoint.port}"
    assert call(f"{root}/healthz") == (200, {"serving": True})
    assert call(f"{root}/echo?token=t1", b'{"a": 1}') == (200, {"body": '{"a": 1}', "token": "t1"})
    assert call(f"{root}/nowhere", b"{}")[0] == 404
    assert call(f"{root}/echo")[0] == 404  # GET: no such route
    assert call(f"{root}/echo", b"x" * (MAX_BODY + 1))[0] == 413
    assert call(f"{root}/broken", b"{}") == (500, {"reason": "INTERNAL", "message": "internal error"})


def test_stop_lets_the_requests_in_flight_finish(
    endpoint: HttpEndpoint, entered: threading.Event, released: threading.Event
) -> None:
    root = f"http://127.0.0.1:{endpoint.port}"
    answers: list[tuple[int, dict[str, object]]] = []
    in_flight = threading.Thread(target=lambda: answers.append(call(f"{root}/slow", b"{}")))
    in_flight.start()
    assert entered.wait(10)
    stopping = threading.Thread(target=endpoint.stop)
    stopping.start()
    stopping.join(0.2)
    assert stopping.is_alive()  # waiting for the request in flight
    released.set()
    stopping.join(10)
    in_flight.join(10)
    assert answers == [(200, {"finished": True})]
    with pytest.raises(urllib.error.URLError):
        call(f"{root}/healthz", timeout=2)
