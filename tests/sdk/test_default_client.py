"""The module-level default client: env-only use, configure(), and no import-time effects.

Delivery goes over real HTTP to a tiny loopback sink defined here (it decodes each
batch with the real wire codec); where delivery is not the point the endpoint is a
port nobody listens on, or a MockTransport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import SCHEMAS, free_port

import spotify_events
from spotify_events import (
    ConfigError,
    EventClient,
    SchemaError,
    SchemaRegistry,
    UnknownEventTypeError,
)
from spotify_events.default import _default
from spotify_events.encoding import decode_event
from spotify_events.errors import ClientClosedError
from spotify_events.transport import MockTransport, SendResult
from spotify_events.wire import decode_batch

SERVICE_CALL = "spotify.events.ops.ServiceCall"
REGISTRY = SchemaRegistry(SCHEMAS)


class SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    events: list[dict[str, Any]]
    lock: threading.Lock


class SinkHandler(BaseHTTPRequestHandler):
    """Accepts every batch, decodes its events into ``server.events``."""

    server: SinkServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        batch = decode_batch(body)
        decoded = []
        for env in batch.envelopes:
            schema = REGISTRY.by_fingerprint(env.fingerprint)
            assert schema is not None
            decoded.append({"event_type": env.event_type, **decode_event(schema, env.payload)})
        with self.server.lock:
            self.server.events.extend(decoded)
        reply = json.dumps({"accepted": len(decoded), "duplicates": 0, "rejected": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[SinkServer]:
    server = SinkServer(("127.0.0.1", 0), SinkHandler)
    server.events, server.lock = [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, name="test-sink", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def pristine_default() -> Iterator[None]:
    """Every test starts and ends with no default client and no configure() settings."""
    _default.reset()
    yield
    # Short close: Shipper.stop() can miss its wake-up and wait out the join timeout
    # (Shipper._idle_wait clears `committed` after stop() set it: a lost wake-up).
    with _default._lock:
        client = _default.client
        _default._reset()
    if client is not None:
        client.close(timeout=0.5)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """SPOTIFY_EVENTS_* for a client with nothing listening; returns the queue path."""
    queue = tmp_path / "default-queue.db"
    monkeypatch.setenv("SPOTIFY_EVENTS_QUEUE_PATH", str(queue))
    monkeypatch.setenv("SPOTIFY_EVENTS_SCHEMAS", str(SCHEMAS))
    monkeypatch.setenv("SPOTIFY_EVENTS_ENDPOINT", f"http://127.0.0.1:{free_port()}/v1/batches")
    monkeypatch.setenv("SPOTIFY_EVENTS_LINGER", "0")
    monkeypatch.setenv("SPOTIFY_EVENTS_BACKOFF_MAX", "0.2")
    return queue


def ok_call(**fields: Any) -> dict[str, Any]:
    return {"operation": "op", "duration_ms": 1.0, "outcome": "OK", **fields}


def test_env_only_log_track_timed_flush_close(
    env: Path, sink: SinkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTIFY_EVENTS_ENDPOINT", f"http://127.0.0.1:{sink.server_port}/v1/batches")
    monkeypatch.setenv("SPOTIFY_EVENTS_SERVICE", "env-service")

    @spotify_events.track("ServiceCall", operation="handler")
    def handler(user_id: str, status_code: int = 200) -> str:
        return f"hello {user_id}"

    assert _default.client is None and not env.exists()  # decorating created nothing

    spotify_events.log("ServiceCall", ok_call(user_id="u0"))
    assert handler("u1") == "hello u1"
    with spotify_events.timed("ServiceCall", operation="block") as ev:
        ev["status_code"] = 204
    assert spotify_events.flush(10.0)

    client = spotify_events.get_client()
    assert client.config.service == "env-service"
    assert client.config.queue_path == str(env) and env.exists()
    with sink.lock:
        got = sorted(sink.events, key=lambda e: str(e["operation"]))
    assert [(e["operation"], e["user_id"], e["status_code"]) for e in got] == [
        ("block", None, 204),
        ("handler", "u1", 200),
        ("op", "u0", None),
    ]
    assert all(e["event_type"] == SERVICE_CALL for e in got)
    assert [e["service"] for e in got] == ["env-service", "env-service", ""]  # log() adds nothing
    assert spotify_events.close(timeout=0.5) is True


def test_decorating_creates_no_client_until_the_first_event(env: Path) -> None:
    before = {t.name for t in threading.enumerate()}

    @spotify_events.track("ServiceCall", service="lazy")
    def handler(user_id: str) -> None:
        pass

    assert _default.client is None and not env.exists()
    assert spotify_events.flush(0.1) is True  # nothing logged: no client needed for that
    with spotify_events.timed("ServiceCall", operation="x") as ev:  # timed() is lazy too ...
        assert _default.client is None and not env.exists()
        ev["user_id"] = "u0"
    assert _default.client is not None  # ... until its block ends and the event is logged
    assert env.exists()
    assert {t.name for t in threading.enumerate()} - before  # threads started now
    handler("u1")
    assert _default.client.stats().logged == 2


def test_decoration_time_errors_need_no_client(env: Path) -> None:
    with pytest.raises(UnknownEventTypeError):
        spotify_events.track("NoSuchEvent")
    with pytest.raises(ValueError, match="endpoint"):
        spotify_events.track("ServiceCall", endpoint="/x")
    with pytest.raises(UnknownEventTypeError):
        spotify_events.timed("NoSuchEvent")
    assert _default.client is None and not env.exists()


def test_schemas_not_findable_at_decoration_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPOTIFY_EVENTS_SCHEMAS", str(tmp_path / "nowhere"))
    with pytest.raises(SchemaError, match="nowhere"):
        spotify_events.track("ServiceCall")


def test_configure_validates_now_creates_later_and_replaces(tmp_path: Path) -> None:
    handled: list[int] = []

    def handler(body: bytes, headers: Any) -> SendResult:
        n = len(decode_batch(body).envelopes)
        handled.append(n)
        return SendResult(200, {"accepted": n, "duplicates": 0, "rejected": []})

    with pytest.raises(ConfigError, match="durability"):
        spotify_events.configure(schemas=str(SCHEMAS), durability="sometimes")
    with pytest.raises(SchemaError):
        spotify_events.configure(schemas=str(tmp_path / "missing"))

    first_queue = tmp_path / "first.db"
    spotify_events.configure(
        schemas=str(SCHEMAS),
        queue_path=str(first_queue),
        transport=MockTransport(handler),
        linger=0,
    )
    assert not first_queue.exists()  # configure() is lazy as well
    spotify_events.log("ServiceCall", ok_call())
    first = spotify_events.get_client()
    assert first_queue.exists()
    assert spotify_events.flush(10.0) and sum(handled) == 1

    second_queue = tmp_path / "second.db"
    spotify_events.configure(
        schemas=str(SCHEMAS),
        queue_path=str(second_queue),
        transport=MockTransport(handler),
        linger=0,
    )
    with pytest.raises(ClientClosedError):  # the previous client was closed
        first.log("ServiceCall", ok_call())
    spotify_events.log("ServiceCall", ok_call())
    assert spotify_events.get_client() is not first
    assert spotify_events.get_client().config.queue_path == str(second_queue)
    assert spotify_events.flush(10.0) and sum(handled) == 2


def test_configure_with_a_ready_client(tmp_path: Path) -> None:
    client = EventClient(
        transport=MockTransport(
            lambda body, headers: SendResult(200, {"accepted": 0, "duplicates": 0, "rejected": []})
        ),
        queue_path=str(tmp_path / "mine.db"),
        schemas=str(SCHEMAS),
    )
    try:
        spotify_events.configure(client=client)
        assert spotify_events.get_client() is client
        with pytest.raises(TypeError):
            spotify_events.configure(client=client, queue_path="x.db")
    finally:
        client.close(timeout=0.5)


def test_close_is_sticky_until_configure(env: Path) -> None:
    @spotify_events.track("ServiceCall", operation="after-close")
    def handler() -> str:
        return "fine"

    spotify_events.log("ServiceCall", ok_call())
    first = spotify_events.get_client()
    spotify_events.close(timeout=0.5)
    with pytest.raises(ClientClosedError, match="configure"):
        spotify_events.log("ServiceCall", ok_call())
    assert handler() == "fine"  # instrumentation never breaks the host
    assert _default.client is None  # ... and does not resurrect a client
    assert first.instrumentation_errors == 0  # the closed client is not blamed either
    spotify_events.configure()  # from the environment again
    assert handler() == "fine"
    assert spotify_events.get_client() is not first


def test_no_thread_or_file_after_importing_a_decorating_module(tmp_path: Path) -> None:
    queue = tmp_path / "app-queue.db"
    (tmp_path / "instrumented_app.py").write_text(
        textwrap.dedent(
            """
            import spotify_events

            @spotify_events.track("ServiceCall", service="app")
            def handle(user_id, status_code=200):
                return status_code

            class Api:
                @spotify_events.track("ServiceCall")
                async def get(self, user_id):
                    return user_id
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import os, threading
        queue = {str(queue)!r}

        import instrumented_app

        assert threading.enumerate() == [threading.main_thread()], threading.enumerate()
        assert not os.path.exists(queue), "queue file created at import"
        def open_files():
            names = []
            for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
                try:
                    names.append(os.readlink(f"/proc/self/fd/{{fd}}"))
                except OSError:  # the listing's own descriptor, closed by now
                    pass
            return [n for n in names if ".db" in n]

        assert not open_files(), open_files()

        assert instrumented_app.handle("u1") == 200
        assert os.path.exists(queue), "no queue file after the first call"
        assert len(threading.enumerate()) > 1, "no threads after the first call"
        print("OK")
        """
    )
    child_env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "SPOTIFY_EVENTS_QUEUE_PATH": str(queue),
        "SPOTIFY_EVENTS_SCHEMAS": str(SCHEMAS),
        "SPOTIFY_EVENTS_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/batches",
        "SPOTIFY_EVENTS_EXIT_TIMEOUT": "0.1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
