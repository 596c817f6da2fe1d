"""Collector ingest throughput per worker: batches of 1000 EndSong-like events.

Measures the whole server-side path of one batch on one thread, without the
network: container pre-scan (bomb guard), ``decode_batch``, per-event payload
validation against the registry, dedupe against the ledger, one Avro block
appended per part file, fsync, and the SQLite ledger commit (WAL,
synchronous=FULL). Run with::

    .venv/bin/pytest benchmarks/test_bench_collector.py --benchmark-only -s

Target: >= 150k events/s per worker.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.encoding import EventEncoder
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import Envelope, WireBatch, encode_batch

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
END_SONG = "spotify.events.playback.EndSong"
BATCH = 1000
ROUNDS = 150

PLATFORMS = ["ios", "android", "web", "desktop"]
REASONS_START = ["CLICKROW", "TRACKDONE", "FWDBTN", "PLAYBTN"]
REASONS_END = ["TRACKDONE", "FWDBTN", "ENDPLAY", "LOGOUT"]


def _bodies(registry: SchemaRegistry, producer: str, rounds: int) -> list[bytes]:
    encoder = EventEncoder(registry.get(END_SONG))
    schema = encoder.schema
    ts = int(time.time() * 1000)
    bodies = []
    seq = itertools.count(1)
    for _ in range(rounds):
        envelopes = []
        for _ in range(BATCH):
            n = next(seq)
            payload = encoder.encode(
                {
                    "user_id": f"user-{n % 50_000}",
                    "track_id": f"spotify:track:{n * 7919 % 10_000_000:022d}",
                    "ms_played": (n * 31) % 300_000,
                    "reason_start": REASONS_START[n % 4],
                    "reason_end": REASONS_END[n % 4],
                    "platform": PLATFORMS[n % 4],
                    "shuffle": n % 3 == 0,
                    "offline": n % 7 == 0,
                    "context_uri": f"spotify:playlist:{n % 1000:022d}" if n % 2 else None,
                    "conn_country": "SE",
                }
            )
            envelopes.append(Envelope(n, END_SONG, schema.fingerprint, ts + n, payload))
        bodies.append(
            encode_batch(WireBatch(producer, envelopes, {END_SONG: n + 1}, service="bench"))
        )
    return bodies


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS)))
    yield c
    c.shutdown()


def _report(benchmark: Any, label: str) -> None:
    mean = benchmark.stats.stats.mean
    rate = BATCH / mean
    benchmark.extra_info["events_per_second"] = round(rate)
    print(f"\n{label}: {rate:,.0f} events/s per worker ({mean * 1e3:.2f} ms per batch of {BATCH})")


def test_bench_ingest_delivery_path(benchmark: Any, collector: Collector) -> None:
    """Ingest.parse + LocalDelivery.deliver (the seam), no HTTP."""
    bodies = iter(_bodies(collector.registry, str(uuid.uuid4()), ROUNDS + 1))

    def setup() -> tuple[tuple[bytes], dict[str, Any]]:
        return (next(bodies),), {}

    def run(body: bytes) -> None:
        result = collector.delivery.deliver(collector.ingest.parse(body))
        assert result.accepted == BATCH

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _report(benchmark, "delivery path")


def test_bench_ingest_wsgi_app(benchmark: Any, collector: Collector) -> None:
    """The WSGI app end to end (auth off, metrics on), called in-process."""
    import io

    bodies = iter(_bodies(collector.registry, str(uuid.uuid4()), ROUNDS + 1))
    app = collector.app

    def setup() -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
        body = next(bodies)
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/v1/batches",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        return (environ,), {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        assert status.startswith("200"), status

    def run(environ: dict[str, Any]) -> None:
        b"".join(app(environ, start_response))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _report(benchmark, "WSGI app")


def test_bench_descending_numbers_with_gaps(benchmark: Any, collector: Collector) -> None:
    """One hostile batch of 100k events numbered 200000, 199998, ..., 2: each needs a
    range of its own, opened in front of all the others. Past the collector's
    ``max_ranges_per_stream`` (10,000) they are refused, so the delivery lock is held
    for a bounded time (README, the collector's limits). Each round is a new producer."""
    n = 100_000
    encoder = EventEncoder(collector.registry.get(END_SONG))
    payload = encoder.encode(
        {
            "user_id": "user-1",
            "track_id": "spotify:track:0000000000000000000001",
            "ms_played": 1,
            "reason_start": "CLICKROW",
            "reason_end": "TRACKDONE",
            "platform": "web",
            "shuffle": False,
            "offline": False,
            "context_uri": None,
            "conn_country": "SE",
        }
    )
    ts = int(time.time() * 1000)
    fingerprint = encoder.schema.fingerprint
    envelopes = [Envelope(2 * i, END_SONG, fingerprint, ts, payload) for i in range(n, 0, -1)]

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        body = encode_batch(WireBatch(str(uuid.uuid4()), envelopes, {END_SONG: 2 * n + 1}))
        return (collector.ingest.parse(body),), {}

    def run(batch: Any) -> None:
        result = collector.delivery.deliver(batch)
        assert result.accepted + len(result.rejections) == n

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    mean = benchmark.stats.stats.mean
    print(f"\ndescending numbers with gaps: {mean:.2f} s per batch of {n:,}")
