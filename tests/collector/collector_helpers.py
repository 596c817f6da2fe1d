"""Helpers for collector tests: records with unique ids, wire batches, bucket reading.

Batches are built with :func:`spotify_events.wire.encode_batch` directly (the
SDK client is tested elsewhere); every record carries ``<producer>:<seq>`` in a
string field so reading the buckets back proves exactly-once delivery.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import requests

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest, IngestedBatch
from spotify_events.encoding import EventEncoder
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import CONTENT_TYPE, DropNotice, Envelope, WireBatch, encode_batch

END_SONG = "spotify.events.playback.EndSong"
PAGE_VIEW = "spotify.events.web.PageView"
SEARCH = "spotify.events.search.SearchQuery"
AD = "spotify.events.ads.AdImpression"
SERVICE_CALL = "spotify.events.ops.ServiceCall"

#: 2025-11-14T22:13:20.123Z: a fixed event time, in a long-closed hour for a real clock.
FIXED_TS = 1_763_158_400_123


def record_for(event_type: str, uid: str) -> dict[str, Any]:
    """A valid record of ``event_type`` whose identifying string field is ``uid``."""
    if event_type == END_SONG:
        return {
            "user_id": "u1",
            "track_id": uid,
            "ms_played": 31_000,
            "reason_start": "CLICKROW",
            "reason_end": "TRACKDONE",
            "platform": "ios",
            "shuffle": False,
            "offline": False,
            "context_uri": None,
            "conn_country": "SE",
        }
    if event_type == PAGE_VIEW:
        return {
            "user_id": None,
            "session_id": uid,
            "page_uri": "spotify:album:x",
            "referrer_uri": None,
            "load_ms": 120,
            "viewport": {"width": 1280},
        }
    if event_type == SEARCH:
        return {
            "user_id": "u2",
            "query": uid,
            "result_count": 3,
            "result_types": ["track"],
            "latency_ms": 1.5,
            "clicked_position": None,
        }
    if event_type == AD:
        return {
            "user_id": "u3",
            "ad_id": uid,
            "campaign_id": "c1",
            "format": "AUDIO",
            "duration_ms": 3000,
            "completed": True,
            "price_micros": Decimal("0.001000"),
        }
    if event_type == SERVICE_CALL:
        return {
            "service": "svc",
            "operation": uid,
            "duration_ms": 1.0,
            "outcome": "OK",
            "exception_type": None,
            "user_id": None,
            "status_code": 200,
        }
    raise KeyError(event_type)


UID_FIELD = {
    END_SONG: "track_id",
    PAGE_VIEW: "session_id",
    SEARCH: "query",
    AD: "ad_id",
    SERVICE_CALL: "operation",
}


class BatchMaker:
    """Builds envelopes and wire bodies for one producer."""

    def __init__(self, registry: SchemaRegistry, producer_id: str) -> None:
        self.registry = registry
        self.producer_id = producer_id
        self._encoders: dict[str, EventEncoder] = {}

    def envelope(self, event_type: str, seq: int, timestamp: int = FIXED_TS) -> Envelope:
        enc = self._encoders.get(event_type)
        if enc is None:
            enc = self._encoders[event_type] = EventEncoder(self.registry.get(event_type))
        payload = enc.encode(record_for(event_type, f"{self.producer_id}:{seq}"))
        return Envelope(seq, event_type, enc.schema.fingerprint, timestamp, payload)

    def envelopes(
        self, event_type: str, seqs: Iterable[int], timestamp: int = FIXED_TS
    ) -> list[Envelope]:
        return [self.envelope(event_type, s, timestamp) for s in seqs]

    def body(
        self,
        envelopes: list[Envelope],
        *,
        next_seq: dict[str, int] | None = None,
        drops: list[DropNotice] | None = None,
        codec: str = "zstandard",
    ) -> bytes:
        if next_seq is None:
            next_seq = {}
            for e in envelopes:
                next_seq[e.event_type] = max(next_seq.get(e.event_type, 1), e.seq + 1)
        batch = WireBatch(
            self.producer_id,
            list(envelopes),
            next_seq,
            list(drops or []),
            service="tests",
            host="localhost",
            sdk_version="0.1.0",
        )
        return encode_batch(batch, codec=codec)


def post(
    url: str, body: bytes, token: str | None = None, timeout: float = 30.0
) -> requests.Response:
    headers = {"Content-Type": CONTENT_TYPE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{url}/v1/batches", data=body, headers=headers, timeout=timeout)


def part_files(data_dir: Path) -> list[Path]:
    """Part files in buckets (not those moved to ``_quarantine``)."""
    return sorted(
        p
        for p in data_dir.rglob("part-*.avro")
        if p.relative_to(data_dir).parts[0] != "_quarantine"
    )


def read_uids(data_dir: Path) -> Counter[str]:
    """Every event id found in the bucket files (a Counter: any value > 1 is a duplicate)."""
    found: Counter[str] = Counter()
    for path in part_files(data_dir):
        event_type = path.relative_to(data_dir).parts[0]
        with open(path, "rb") as fh:
            for record in fastavro.reader(fh):
                found[f"{event_type}/{record[UID_FIELD[event_type]]}"] += 1
    return found


def expected_uids(producer: str, event_type: str, seqs: Iterable[int]) -> Counter[str]:
    return Counter(f"{event_type}/{producer}:{s}" for s in seqs)


def stream(report: dict[str, Any], producer: str, event_type: str) -> dict[str, Any]:
    for s in report["streams"]:
        if s["producer_id"] == producer and s["event_type"] == event_type:
            return s
    raise KeyError((producer, event_type))


def closed_markers(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(data_dir.rglob("_CLOSED.json"))]


def dir_snapshot(data_dir: Path) -> dict[str, int]:
    """Every file below ``data_dir`` except the ledger, with its size."""
    out = {}
    for root, _, files in os.walk(data_dir):
        for name in files:
            if not name.startswith("_ledger.db"):
                full = os.path.join(root, name)
                out[os.path.relpath(full, data_dir)] = os.path.getsize(full)
    return out


Clock = Callable[[], float]

HOUR = 3600
#: 2026-01-01T10:00:00Z, the start of an hour
T0 = 1_767_261_600.0


#: ``open_delivery(**config)`` (tests/collector/conftest.py)
OpenDelivery = Callable[..., LocalDelivery]


class FakeClock:
    """A clock the test sets (``clock.now = ...``): bucket closing, grace periods and
    lateness are tested at exact instants instead of by waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wsgi_call(
    app: Callable[..., Iterable[bytes]],
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Call a WSGI app in-process; returns (status, headers, body)."""
    import io
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    out = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], out


def ingest(registry: SchemaRegistry, body: bytes, clock: Clock) -> IngestedBatch:
    """``body`` through the collector's ingest half at ``clock``'s time."""
    return Ingest(registry, clock=clock).parse(body)


def ms(t: float) -> int:
    """Epoch seconds as the wire's milliseconds."""
    return int(t * 1000)
