"""A minimal batch sink for end-to-end benchmarks, run as its own process.

It does what every contestant's sink must do and no more: read the body,
decode the wire batch, dedupe by (producer, type, seq), count, answer 200.
Running it in a separate process keeps its CPU off the SDK's GIL, as a real
collector would be.

    python benchmarks/sink.py --port 0     # prints "listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spotify_events.encoding import decode_batch


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[tuple[str, str, int]] = set()
        self.duplicates = 0
        self.bytes = 0
        self.batches = 0


def make_handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with counts.lock:
                body = json.dumps(
                    {
                        "events": len(counts.seen),
                        "duplicates": counts.duplicates,
                        "bytes": counts.bytes,
                        "batches": counts.batches,
                    }
                ).encode()
            self._reply(200, body)

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            batch = decode_batch(data)
            keys = [(batch.producer_id, e.event_type, e.seq) for e in batch.envelopes]
            with counts.lock:
                new = [k for k in keys if k not in counts.seen]
                counts.seen.update(new)
                counts.duplicates += len(keys) - len(new)
                counts.bytes += len(data)
                counts.batches += 1
            body = json.dumps(
                {"accepted": len(new), "duplicates": len(keys) - len(new), "rejected": []}
            )
            self._reply(200, body.encode())

        def setup(self) -> None:
            super().setup()
            # Headers then body in two writes meet Nagle's algorithm and the client's delayed
            # ACK: ~40 ms per request. See benchmarks/compare/sink.py.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
            self.flush_headers()  # status line, headers and body in one write

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(Counts()))
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
