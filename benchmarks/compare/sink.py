"""The loopback sink every contestant delivers to, run as its own process.

It does the same work for every SDK and no more: read the request body,
undo its Content-Encoding, parse the SDK's real batch format down to the
individual events (JSON documents, or Avro records decoded with their writer
schema), dedupe each event by the id its SDK gives it, count, answer 2xx with
the body that SDK expects.

=====================  =======================================  ===========================
SDK                    request                                  dedupe key
=====================  =======================================  ===========================
spotify-events         ``POST /v1/batches`` Avro container      (producer, event type, seq)
segment                ``POST /v1/batch`` JSON ``{"batch"}``    ``messageId``
posthog                ``POST /batch/`` JSON ``{"batch"}``      ``uuid``
snowplow               ``POST /com.snowplowanalytics.snowplow/  ``eid`` (``ue_px`` decoded)
                       tp2`` JSON ``{"data"}``
opentelemetry          ``POST /v1/logs`` OTLP protobuf          (observed time, attributes)
                       ``ExportLogsServiceRequest``
=====================  =======================================  ===========================

``GET /stats`` returns the counts as JSON (``events`` unique, ``duplicates``,
``bytes`` of request bodies as sent on the wire, ``requests``, the wall-clock
``up_at`` / ``first_event_at`` / ``last_event_at``, other paths seen, parse
errors and the sink's own CPU seconds). Any other path gets ``200 {}`` and is
counted under ``other_paths`` so an SDK calling out for something else shows.

``GET /marks`` returns, for every distinct event that arrived, its record's
``ms_played`` and the wall-clock time its request arrived: the rate curve
(benchmarks/rates.py) numbers its events through ``ms_played`` and times each from
``log()`` to the sink's acknowledgement with it.

    python -m benchmarks.compare.sink --port 0   # prints "listening on http://127.0.0.1:PORT"

``--parse ids`` skips what counting does not need (the Avro payloads, snowplow's
``ue_px``); the default decodes everything, as a collector that validates must.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import resource
import socket
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SPOTIFY_PATH = "/v1/batches"
SEGMENT_PATH = "/v1/batch"
POSTHOG_PATH = "/batch/"
SNOWPLOW_PATH = "/com.snowplowanalytics.snowplow/tp2"
OTLP_LOGS_PATH = "/v1/logs"

#: What a parser makes of one body: (dedupe keys, each event's ms_played, reply body).
Parsed = tuple[list[Any], list[int], bytes]


class Counts:
    """Everything the sink has seen; one lock, held only to merge a request's keys."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[Any] = set()
        self.duplicates = 0
        self.bytes = 0
        self.requests = 0
        self.errors = 0
        self.last_error = ""
        self.drop_notices = 0
        self.up_at = time.time()
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None
        self.other_paths: dict[str, int] = {}
        self.encodings: dict[str, int] = {}
        self.marks: dict[int, float] = {}  # ms_played -> arrival of its first copy

    def add(
        self, keys: list[Any], marks: list[int], body_bytes: int, encoding: str
    ) -> tuple[int, int]:
        arrived = time.time()
        with self.lock:
            before = len(self.seen)
            for key, mark in zip(keys, marks, strict=True):
                if key not in self.seen:
                    self.marks.setdefault(mark, arrived)
            self.seen.update(keys)
            new = len(self.seen) - before
            self.duplicates += len(keys) - new
            self.bytes += body_bytes
            self.requests += 1
            self.encodings[encoding] = self.encodings.get(encoding, 0) + 1
            if new:
                now = time.time()
                if self.first_event_at is None:
                    self.first_event_at = now
                self.last_event_at = now
        return new, len(keys) - new

    def snapshot(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self.lock:
            return {
                "events": len(self.seen),
                "duplicates": self.duplicates,
                "bytes": self.bytes,
                "requests": self.requests,
                "errors": self.errors,
                "last_error": self.last_error,
                "drop_notices": self.drop_notices,
                "up_at": self.up_at,
                "first_event_at": self.first_event_at,
                "last_event_at": self.last_event_at,
                "other_paths": dict(self.other_paths),
                "encodings": dict(self.encodings),
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }


def _decompress(body: bytes, encoding: str) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


# -- one parser per SDK: body -> (dedupe keys, marks, response body) --------------------------
def _mark(properties: Any) -> int:
    mark = properties.get("ms_played") if isinstance(properties, dict) else None
    return mark if isinstance(mark, int) else -1


def parse_segment(body: bytes) -> Parsed:
    doc = json.loads(body)
    batch = doc["batch"]
    keys = [("segment", m["messageId"]) for m in batch]
    return keys, [_mark(m.get("properties")) for m in batch], b'{"success": true}'


def parse_posthog(body: bytes) -> Parsed:
    doc = json.loads(body)
    batch = doc["batch"]
    keys = [("posthog", e["uuid"]) for e in batch]
    return keys, [_mark(e.get("properties")) for e in batch], b'{"status": 1}'


def parse_otlp_logs(body: bytes) -> Parsed:
    """An OTLP/HTTP ``ExportLogsServiceRequest``: every log record with its attributes.
    OTLP gives a record no id, so the dedupe key is its observed time and attributes."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )

    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    keys, marks = [], []
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = {
                    kv.key: getattr(kv.value, kv.value.WhichOneof("value") or "string_value")
                    for kv in record.attributes
                }
                keys.append(
                    ("otel", record.observed_time_unix_nano, tuple(sorted(attributes.items())))
                )
                marks.append(_mark(attributes))
    return keys, marks, b""  # an empty ExportLogsServiceResponse: everything taken


def parse_snowplow(body: bytes, full: bool = True) -> Parsed:
    doc = json.loads(body)
    keys = []
    for event in doc["data"]:
        # The event itself travels base64-encoded (the tracker's default) or as plain JSON.
        if not full:
            pass
        elif "ue_px" in event:
            json.loads(base64.urlsafe_b64decode(event["ue_px"] + "=" * (-len(event["ue_px"]) % 4)))
        elif "ue_pr" in event:
            json.loads(event["ue_pr"])
        keys.append(("snowplow", event["eid"]))
    return keys, [-1] * len(keys), b""


class SpotifyParser:
    """Decode the Avro container and every payload with its writer schema."""

    def __init__(self, full: bool = True) -> None:
        from spotify_events.encoding import decode_event
        from spotify_events.schemas import SchemaRegistry
        from spotify_events.wire import decode_batch

        from .workload import SCHEMAS

        self.decode_batch = decode_batch
        self.decode_event = decode_event
        self.registry = SchemaRegistry.coerce(str(SCHEMAS))
        self.drop_notices = 0
        self.full = full

    def __call__(self, body: bytes) -> Parsed:
        batch = self.decode_batch(body)
        by_fp = self.registry.by_fingerprint
        decode = self.decode_event
        keys, marks = [], []
        full = self.full
        for env in batch.envelopes:
            if full:
                record = decode(by_fp(env.fingerprint), env.payload)  # type: ignore[arg-type]
                marks.append(_mark(record))
            else:
                marks.append(-1)
            keys.append((batch.producer_id, env.event_type, env.seq))
        self.drop_notices += sum(d.count for d in batch.drops)
        return keys, marks, b""


def make_handler(counts: Counts, full: bool = True) -> type[BaseHTTPRequestHandler]:
    spotify = SpotifyParser(full)
    parsers: dict[str, Callable[[bytes], Parsed]] = {
        SPOTIFY_PATH: spotify,
        SEGMENT_PATH: parse_segment,
        POSTHOG_PATH: parse_posthog,
        SNOWPLOW_PATH: lambda body: parse_snowplow(body, full),
        OTLP_LOGS_PATH: parse_otlp_logs,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/stats":
                snap = counts.snapshot()
                snap["drop_notices"] = spotify.drop_notices
                self._reply(200, json.dumps(snap).encode())
            elif self.path.split("?", 1)[0] == "/marks":
                with counts.lock:
                    marks = list(counts.marks.items())
                self._reply(200, json.dumps(marks).encode())
            else:
                self._other()

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = self.path.split("?", 1)[0]
            parser = parsers.get(path)
            if parser is None:
                self._other(body_read=True)
                return
            encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
            try:
                keys, marks, reply = parser(_decompress(raw, encoding))
            except Exception as exc:  # an undecodable batch is a 400, as a collector would say
                with counts.lock:
                    counts.errors += 1
                    counts.last_error = f"{path}: {exc!r}"[:300]
                self._reply(400, b'{"error": "undecodable"}')
                return
            new, dup = counts.add(keys, marks, len(raw), encoding or "identity")
            if path == SPOTIFY_PATH:
                reply = json.dumps({"accepted": new, "duplicates": dup, "rejected": []}).encode()
            self._reply(200, reply)

        def _other(self, body_read: bool = False) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length and not body_read:
                self.rfile.read(length)
            with counts.lock:
                key = f"{self.command} {self.path.split('?', 1)[0]}"
                counts.other_paths[key] = counts.other_paths.get(key, 0) + 1
            self._reply(200, b"{}")

        def setup(self) -> None:
            super().setup()
            # Without this, a response written as headers then body meets Nagle's algorithm
            # and the client's delayed ACK: ~40 ms per request, which capped every SDK at
            # ~25 requests/s in a first version of this sink.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            # Status line, headers and body leave in one write (BaseHTTPRequestHandler
            # buffers the headers; end_headers() would flush them on their own).
            self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
            self.flush_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main() -> None:
    parser = argparse.ArgumentParser(description="Loopback sink for the SDK comparison.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--parse",
        choices=("full", "ids"),
        default="full",
        help="full: decode every event; ids: only what counting and dedupe need",
    )
    args = parser.parse_args()
    counts = Counts()
    server = Server(("127.0.0.1", args.port), make_handler(counts, args.parse == "full"))
    counts.up_at = time.time()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
