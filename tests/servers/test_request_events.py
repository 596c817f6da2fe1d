"""WSGI request events in the corners a framework hides: a raising application, a
streamed body, a failing fields= callable. Served by wsgiref's real HTTP server,
delivered to a real collector."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
from server_helpers import SERVICE_CALL, bucket_records
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess
from spotify_events.errors import EventValidationError, UnknownEventTypeError
from spotify_events.servers.request_events import WsgiRequestEvents


def application(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"a", b"b", b"c"])  # a streamed body


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def client(collector: CollectorProcess, tmp_path: Path) -> Iterator[EventClient]:
    c = EventClient(
        endpoint=collector.endpoint, queue_path=str(tmp_path / "q.db"), schemas=str(SCHEMAS)
    )
    yield c
    c.close(timeout=5)


def _serve(app: Any) -> tuple[WSGIServer, str]:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_wsgi_events_for_raising_streaming_and_failing_fields(
    client: EventClient, collector: CollectorProcess
) -> None:
    def fields(environ: dict[str, Any], status: int | None) -> dict[str, Any]:
        if environ["QUERY_STRING"] == "bad":
            raise KeyError("no user")
        return {"user_id": environ["QUERY_STRING"]}

    server, base = _serve(
        WsgiRequestEvents(application, "ServiceCall", client=client, fields=fields)
    )
    try:
        assert requests.get(f"{base}/stream?u1", timeout=10).text == "abc"
        assert requests.get(f"{base}/raise?u2", timeout=10).status_code == 500
        assert requests.get(f"{base}/stream?bad", timeout=10).status_code == 200  # not broken
    finally:
        server.shutdown()
        server.server_close()
    assert client.flush(timeout=30)
    calls = {
        c["operation"] + "?" + str(c["user_id"]): c
        for c in bucket_records(collector.data_dir, SERVICE_CALL)
    }
    assert set(calls) == {"GET /stream?u1", "GET /raise?u2", "GET /stream?None"}
    assert (calls["GET /stream?u1"]["status_code"], calls["GET /stream?u1"]["outcome"]) == (
        200,
        "OK",
    )
    raised = calls["GET /raise?u2"]
    assert (raised["status_code"], raised["outcome"], raised["exception_type"]) == (
        500,
        "ERROR",
        "RuntimeError",
    )
    assert client.instrumentation_errors == 1  # the failing fields= callable, counted


def test_unknown_event_type_or_field_fails_when_the_middleware_is_made(client: EventClient) -> None:
    with pytest.raises(EventValidationError):
        WsgiRequestEvents(application, "ServiceCall", client=client, colour="red")
    with pytest.raises(UnknownEventTypeError):
        WsgiRequestEvents(application, "NoSuchEvent", client=client)
