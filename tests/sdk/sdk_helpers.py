"""Helpers for SDK tests: a real HTTP sink on loopback, and waiting on conditions.

The sink stands in for the collector where a test needs to script responses
(503 with Retry-After, 413 above a size, 400 for a poison event). It decodes
every batch with the real wire codec and enforces dedupe by (producer, type,
seq), so "delivered exactly once" is checked at the receiving end.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import support

from spotify_events.wire import WireBatch, decode_batch

END_SONG = {
    "user_id": "u1",
    "track_id": "t1",
    "ms_played": 31000,
    "reason_start": "CLICKROW",
    "reason_end": "TRACKDONE",
    "platform": "ios",
}


#: Waits in these tests allow 30 s by default: deliveries cross real HTTP.
wait_for = functools.partial(support.wait_for, timeout=30.0, interval=0.01)


@dataclass
class Arrival:
    at: float
    batch: WireBatch
    status: int


@dataclass
class Sink:
    """State and behaviour of the scripted collector."""

    port: int
    seen: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: (event type, seq) of every envelope a 200 answered for, in arrival order, repeats kept
    received: list[tuple[str, int]] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    # scripting
    scripted: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    max_events_per_batch: int | None = None
    poison: Callable[[bytes], bool] | None = None
    reject: Callable[[bytes], str | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/batches"

    def respond_next(
        self, status: int, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        self.scripted.extend([(status, headers or {}, {"error": "scripted"})] * times)

    def count(self, event_type: str | None = None) -> int:
        with self.lock:
            return sum(1 for k in self.seen if event_type is None or k[1] == event_type)

    def arrived(self, event_type: str) -> list[int]:
        """Sequence numbers of ``event_type`` in the order they arrived, repeats included."""
        with self.lock:
            return [seq for etype, seq in self.received if etype == event_type]

    def seqs(self, event_type: str) -> list[int]:
        """The arrived numbers sorted, repeats included: equal to ``list(range(...))``
        only when each number arrived exactly once."""
        return sorted(self.arrived(event_type))

    def handle(self, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            self.request_times.append(time.monotonic())
            if self.scripted:
                return self.scripted.pop(0)
        try:
            batch = decode_batch(body)
        except ValueError as exc:
            return 400, {}, {"error": str(exc)}
        now = time.monotonic()
        if (
            self.max_events_per_batch is not None
            and len(batch.envelopes) > self.max_events_per_batch
        ):
            self.arrivals.append(Arrival(now, batch, 413))
            return 413, {}, {"error": "too large"}
        if self.poison is not None and any(self.poison(e.payload) for e in batch.envelopes):
            self.arrivals.append(Arrival(now, batch, 400))
            return 400, {}, {"error": "poison payload"}
        rejected = []
        accepted = duplicates = 0
        with self.lock:
            for e in batch.envelopes:
                reason = self.reject(e.payload) if self.reject else None
                if reason:
                    # "code: details", like the collector's machine-readable code and reason
                    code = reason.partition(":")[0]
                    rejected.append(
                        {"event_type": e.event_type, "seq": e.seq, "code": code, "reason": reason}
                    )
                    continue
                key = (batch.producer_id, e.event_type, e.seq)
                if key in self.seen:
                    duplicates += 1
                else:
                    accepted += 1
                self.seen[key] = self.seen.get(key, 0) + 1
                self.received.append((e.event_type, e.seq))
            self.accepted += accepted
            self.duplicates += duplicates
            self.arrivals.append(Arrival(now, batch, 200))
        return 200, {}, {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, payload = sink.handle(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class ModuleClock:
    """Stands in for a module's ``time`` (``monkeypatch.setattr(module, "time", clock)``):
    ``monotonic()`` moves only when the test sets ``now``; ``time()`` stays the real one."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


#: A record of each example schema with only the fields that have no default.
VALID_RECORDS: dict[str, dict[str, Any]] = {
    "EndSong": END_SONG,
    "PageView": {"session_id": "s1", "page_uri": "spotify:album:1", "load_ms": 120},
    "SearchQuery": {"user_id": "u1", "query": "abba", "result_count": 3, "latency_ms": 12.5},
    "ServiceCall": {"operation": "GET /v1/tracks", "duration_ms": 3.2, "outcome": "OK"},
    "AdImpression": {
        "user_id": "u1",
        "ad_id": "a1",
        "campaign_id": "c1",
        "format": "AUDIO",
        "completed": True,
        "price_micros": Decimal("0.001500"),
    },
}
