"""The transport reads the environment (proxies, ``NO_PROXY``, ``~/.netrc``) once, when
it is built: what a user set before the client started still applies, a token still
wins, and no batch pays for the lookups again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spotify_events.config import ClientConfig
from spotify_events.transport import HttpTransport

HEADERS = {"X-SE-Producer-Id": "p1", "X-SE-Event-Count": "0"}
ACK = json.dumps({"accepted": 0, "duplicates": 0, "rejected": []}).encode()


class Recorder:
    """A loopback server that answers every POST like a collector taking an empty batch
    and notes each request's target (absolute when it came through as a proxy) and
    ``Authorization`` header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ACK)))
                self.end_headers()
                self.wfile.write(ACK)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No proxy variables and a home of the test's own (for ``.netrc``)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def send_once(endpoint: str, token: str | None = None) -> int | None:
    transport = HttpTransport(ClientConfig(endpoint=endpoint, token=token).transport_settings())
    try:
        return transport.send(b"", HEADERS).status
    finally:
        transport.close()


def test_a_proxy_named_in_the_environment_carries_the_batches(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    monkeypatch.setenv("HTTP_PROXY", recorder.url)
    assert send_once("http://collector.invalid:9/v1/batches") == 200
    assert recorder.requests == [("http://collector.invalid:9/v1/batches", None)]


def test_no_proxy_still_sends_straight_to_the_collector(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert send_once(f"{recorder.url}/v1/batches") == 200
    assert recorder.requests == [("/v1/batches", None)]


def test_the_environment_is_read_when_the_transport_is_built_not_per_batch(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    transport = HttpTransport(
        ClientConfig(endpoint=f"{recorder.url}/v1/batches").transport_settings()
    )
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse every batch
        assert transport.send(b"", HEADERS).status == 200
    finally:
        transport.close()
    assert recorder.requests == [("/v1/batches", None)]


def test_netrc_credentials_are_sent_without_a_token_and_a_token_wins_over_them(
    clean_environment: Path, recorder: Recorder
) -> None:
    netrc = clean_environment / ".netrc"
    netrc.write_text("machine 127.0.0.1 login alice password secret\n")
    netrc.chmod(0o600)
    assert send_once(f"{recorder.url}/v1/batches") == 200
    assert send_once(f"{recorder.url}/v1/batches", token="t0ken") == 200
    assert [auth for _, auth in recorder.requests] == [
        "Basic YWxpY2U6c2VjcmV0",  # alice:secret
        "Bearer t0ken",
    ]
