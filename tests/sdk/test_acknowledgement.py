"""An acknowledgement is the collector's JSON, not a status code.

A real HTTP server on loopback plays what an SDK meets when its endpoint is
wrong: a web server's welcome page, an empty 200, counts that do not add up, a
404 for a mistyped path. None of them may delete a single event; each is
logged once as an ERROR and shows in ``stats().last_error``. Switching the
same server to answer like a collector then delivers everything.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sdk_helpers import END_SONG, wait_for
from support import free_port

from spotify_events import EventClient
from spotify_events.wire import decode_batch

NGINX_WELCOME = (
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n"
    b"<body><h1>Welcome to nginx!</h1></body>\n</html>\n"
)


class Endpoint:
    """A loopback server whose answer is switched by the test: ``mode`` is one of
    ``html``, ``empty``, ``short_count``, ``not_found``, ``collector``."""

    def __init__(self) -> None:
        self.mode = "html"
        self.requests = 0
        self.received: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, ctype, data = endpoint.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/v1/batches") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests += 1
            mode = self.mode
        if mode == "html":
            return 200, "text/html", NGINX_WELCOME
        if mode == "empty":
            return 200, "text/plain", b""
        if mode == "not_found":
            return 404, "text/html", b"<html><body>404 Not Found</body></html>"
        envelopes = decode_batch(body).envelopes
        if mode == "short_count":  # JSON of the right shape, one event short
            n = max(0, len(envelopes) - 1)
            return (
                200,
                "application/json",
                json.dumps({"accepted": n, "duplicates": 0, "rejected": []}).encode(),
            )
        with self.lock:
            fresh = {(e.event_type, e.seq) for e in envelopes} - self.received
            self.received |= fresh
        ack = {"accepted": len(fresh), "duplicates": len(envelopes) - len(fresh), "rejected": []}
        return 200, "application/json", json.dumps(ack).encode()

    def attempts(self) -> int:
        with self.lock:
            return self.requests


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.server.shutdown()
    e.server.server_close()


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR and text in r.getMessage()]


@pytest.mark.parametrize(
    ("mode", "path", "message"),
    [
        ("html", "/v1/batches", "answered 200 but is not a spotify-events collector: b'<!DOCTYPE"),
        ("empty", "/v1/batches", "answered 200 but is not a spotify-events collector: b''"),
        ("short_count", "/v1/batches", "counts that do not match the batch"),
        ("not_found", "/v1/batchs", "HTTP 404 for path '/v1/batchs'"),
    ],
)
def test_only_the_collectors_acknowledgement_deletes_events(
    endpoint: Endpoint,
    make_client: Callable[..., EventClient],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    path: str,
    message: str,
) -> None:
    caplog.set_level(logging.INFO, logger="spotify_events")
    endpoint.mode = mode
    client = make_client(endpoint=endpoint.url(path), backoff_max=0.2, linger=0)
    for i in range(1000):
        client.log("EndSong", {**END_SONG, "track_id": f"t{i}"})
    assert client.flush(timeout=1.0) is False
    assert wait_for(lambda: endpoint.attempts() >= 4)  # retried, slowly, more than once
    stats = client.stats()
    assert stats.acknowledged == 0
    assert stats.queue_events == 1000
    assert stats.last_error is not None and message in stats.last_error
    assert len(_errors(caplog, message)) == 1  # once, not once per attempt

    # The same events, untouched, reach a real acknowledgement once one answers.
    if mode == "not_found":
        client.close(timeout=0.5)
        client = make_client(endpoint=endpoint.url(), backoff_max=0.2, linger=0)
    endpoint.mode = "collector"
    assert client.flush(timeout=20.0)
    assert len(endpoint.received) == 1000
    assert client.stats().queue_events == 0


def test_heartbeat_acknowledgement_is_checked_too(
    endpoint: Endpoint, make_client: Callable[..., EventClient], tmp_path: Any
) -> None:
    """An empty batch is acknowledged by ``{"accepted": 0, "duplicates": 0, "rejected": []}``;
    a welcome page is no acknowledgement for a drop notice either."""
    client = make_client(endpoint=endpoint.url(), backoff_max=0.2, heartbeat_interval=0.05)
    client.log("EndSong", END_SONG)
    endpoint.mode = "collector"
    assert client.flush(timeout=20.0)
    heartbeats = client.stats().heartbeats
    endpoint.mode = "html"
    assert wait_for(lambda: endpoint.attempts() >= 5)
    assert client.stats().heartbeats == heartbeats
    endpoint.mode = "collector"
    assert wait_for(lambda: client.stats().heartbeats > heartbeats)
