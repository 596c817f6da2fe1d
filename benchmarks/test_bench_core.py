"""Micro-benchmarks of the SDK core: encoding, the writer at each level, queue reads.

Not part of the normal test run (``testpaths = ["tests"]``). Run with::

    .venv/bin/pytest benchmarks/test_bench_core.py --benchmark-columns=min,median,mean,ops -s

``-s`` shows the sustained-throughput table (committed events/s, drops, RSS growth
with 1 and 4 caller threads logging as fast as they can for ~2 s).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastavro
import pytest

from spotify_events.config import ClientConfig
from spotify_events.encoding import EventEncoder
from spotify_events.queue import DurableQueue, PendingEvent
from spotify_events.schemas import EventSchema, SchemaRegistry
from spotify_events.wire import Envelope, WireBatch, decode_batch, encode_batch
from spotify_events.writer import QueueWriter

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
TS = 1_763_158_400_000
RECORD = {
    "user_id": "u1234567",
    "track_id": "spotify:track:4uLU6hMCjMI75M1A2tKUQC",
    "ms_played": 31_000,
    "reason_start": "CLICKROW",
    "reason_end": "TRACKDONE",
    "platform": "ios",
    "shuffle": False,
    "offline": False,
}  # the 8-field event the 3.4 µs encode target refers to
SUSTAIN_SECONDS = 2.0
RESULTS: list[tuple[str, float, int, int, float]] = []


@pytest.fixture(scope="module")
def schema() -> EventSchema:
    return SchemaRegistry(SCHEMA_DIR).get("EndSong")


@pytest.fixture(scope="module")
def encoder(schema: EventSchema) -> EventEncoder:
    return EventEncoder(schema)


@pytest.fixture
def event(schema: EventSchema, encoder: EventEncoder) -> PendingEvent:
    return PendingEvent(schema.full_name, schema.fingerprint, TS, encoder.encode(RECORD))


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[Callable[..., DurableQueue]]:
    made: list[DurableQueue] = []

    def _make(**options: Any) -> DurableQueue:
        settings = replace(ClientConfig().queue_settings(), **options)
        made.append(DurableQueue(tmp_path / "bench.db", settings))
        return made[-1]

    yield _make
    for q in made:
        q.close()


@pytest.fixture
def writers() -> Iterator[Callable[..., QueueWriter]]:
    made: list[QueueWriter] = []

    def _make(queue: DurableQueue, **options: Any) -> QueueWriter:
        made.append(QueueWriter(queue, replace(ClientConfig().writer_settings(), **options)))
        made[-1].start()
        return made[-1]

    yield _make
    for w in made:
        w.stop(timeout=30)


# -- encoding -----------------------------------------------------------------------


def test_encode_parsed_schema(benchmark: Any, encoder: EventEncoder) -> None:
    assert benchmark(encoder.encode, RECORD)


def test_encode_fastavro_unparsed_schema(benchmark: Any, schema: EventSchema) -> None:
    raw = dict(schema.raw)

    def encode() -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, raw, RECORD)
        return buf.getvalue()

    assert benchmark(encode)


# -- the writer at each durability level ----------------------------------------------


def _percentiles(label: str, call: Callable[[], object], n: int) -> dict[str, float]:
    """p50/p99 of single calls (pytest-benchmark reports min/median/mean, not p99)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    samples.sort()
    p50, p99 = samples[n // 2] / 1000, samples[n * 99 // 100] / 1000
    print(f"\n  {label}: p50 {p50:.1f} µs, p99 {p99:.1f} µs over {n:,} calls")
    return {"p50_us": round(p50, 2), "p99_us": round(p99, 2)}


def _cpu_per_call(label: str, call: Callable[[], object], n: int) -> dict[str, float]:
    """Process CPU time per call, all threads included: on a shared machine wall-clock
    figures move with the neighbours' load, CPU time much less."""
    start = time.process_time()
    for _ in range(n):
        call()
    cpu = (time.process_time() - start) / n * 1e6
    print(f"\n  {label}: {cpu:.1f} µs CPU per call over {n:,} calls")
    return {"cpu_us": round(cpu, 2)}


def test_submit_buffered(
    benchmark: Any,
    queues: Callable[..., DurableQueue],
    writers: Callable[..., QueueWriter],
    event: PendingEvent,
) -> None:
    writer = writers(queues(), max_buffer_bytes=256 << 20)
    benchmark(writer.submit, event)
    benchmark.extra_info.update(
        _percentiles("submit (buffered)", lambda: writer.submit(event), 100_000)
    )
    assert writer.counters.dropped == {}


@pytest.mark.parametrize("fsync", [False, True], ids=["commit", "fsync"])
def test_submit_and_commit_through(
    benchmark: Any,
    queues: Callable[..., DurableQueue],
    writers: Callable[..., QueueWriter],
    event: PendingEvent,
    fsync: bool,
) -> None:
    writer = writers(queues(fsync=fsync))

    def log() -> bool:
        return writer.commit_through(writer.submit(event), timeout=10)

    assert benchmark(log)
    level = "fsync" if fsync else "commit"
    benchmark.extra_info.update(_percentiles(f"submit + commit_through ({level})", log, 2_000))
    benchmark.extra_info.update(_cpu_per_call(f"submit + commit_through ({level})", log, 5_000))


def test_commit_level_layers(
    queues: Callable[..., DurableQueue],
    writers: Callable[..., QueueWriter],
    event: PendingEvent,
    tmp_path: Path,
) -> None:
    """Where a ``commit``-level event's time goes: CPU per event of a bare queue
    transaction (``atomic()``: BEGIN IMMEDIATE, one INSERT, COMMIT), the same plus the queue's
    per-commit bookkeeping statements, ``DurableQueue.append``, and the writer path
    (submit + commit_through). Rounds interleave, medians printed.

    The bookkeeping writes a new sequence number and new byte and event counts every
    time, as append does: SQLite does not rewrite a row whose new content is the same as
    the old, so constant values would leave two of a commit's four pages out of it."""
    queue = queues()
    writer = writers(queue)
    row = (event.event_type, 1, event.fingerprint, TS, event.payload, 128)
    commits = iter(range(2, 2**62))

    def bare(bookkeeping: bool) -> None:
        with queue.atomic() as conn:
            if bookkeeping:
                conn.execute("PRAGMA data_version").fetchone()
            conn.execute(
                "INSERT INTO events (event_type, seq, fingerprint, timestamp, payload, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            if bookkeeping:
                conn.execute(
                    "INSERT INTO sequences (event_type, next_seq) VALUES (?, ?) ON CONFLICT"
                    "(event_type) DO UPDATE SET next_seq = excluded.next_seq",
                    ("bench.Layers", next(commits)),
                )
                conn.execute(
                    "UPDATE counters SET value = value + (CASE name WHEN 'bytes' THEN ? ELSE ? END)",
                    (row[5], 1),
                )

    layers: dict[str, Callable[[], object]] = {
        "bare transaction": lambda: bare(False),
        "+ bookkeeping statements": lambda: bare(True),
        "DurableQueue.append": lambda: queue.append([event]),
        "submit + commit_through": lambda: writer.commit_through(writer.submit(event), 10),
    }
    samples: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(7):
        for name, call in layers.items():
            start = time.process_time()
            for _ in range(1_000):
                call()
            samples[name].append((time.process_time() - start) / 1_000 * 1e6)
    print("\n  commit level, CPU µs per event (median of 7 rounds of 1,000)")
    for name, values in samples.items():
        print(f"  {name:<26} {sorted(values)[3]:>7.1f}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("threads", [1, 4])
def test_sustained_committed_events_per_second(
    benchmark: Any,
    queues: Callable[..., DurableQueue],
    writers: Callable[..., QueueWriter],
    schema: EventSchema,
    encoder: EventEncoder,
    threads: int,
) -> None:
    """Callers encode + submit (what ``log()`` does at ``buffered``) as fast as they can."""
    writer = writers(queues())
    stop = threading.Event()
    peak = [0]

    def caller(k: int) -> None:
        record = dict(RECORD)
        submit, encode, name, fp = (
            writer.submit,
            encoder.encode,
            schema.full_name,
            schema.fingerprint,
        )
        n = 0
        while not stop.is_set():
            record["ms_played"] = n
            submit(PendingEvent(name, fp, TS, encode(record)))
            n += 1

    def sample_rss() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], _rss_bytes())

    def run() -> tuple[float, int]:
        base = _rss_bytes()
        workers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
        sampler = threading.Thread(target=sample_rss)
        start = time.perf_counter()
        for t in [*workers, sampler]:
            t.start()
        stop.wait(SUSTAIN_SECONDS)
        committed_in_window = writer.counters.committed
        stop.set()
        for t in [*workers, sampler]:
            t.join()
        elapsed = time.perf_counter() - start
        writer.stop(timeout=30)
        return committed_in_window / elapsed, base

    rate, base = benchmark.pedantic(run, rounds=1, iterations=1)
    dropped = sum(writer.counters.dropped.values())
    growth_mb = max(0, peak[0] - base) / 1e6
    benchmark.extra_info.update(
        committed_per_s=round(rate), dropped=dropped, rss_growth_mb=round(growth_mb, 1)
    )
    RESULTS.append((f"{threads} caller(s)", rate, writer.counters.logged, dropped, growth_mb))
    print("\n  callers     committed/s     logged    dropped   peak RSS growth")
    for label, r, logged, d, g in RESULTS:
        print(f"  {label:<11} {r:>11,.0f} {logged:>10,} {d:>10,} {g:>12.1f} MB")
    assert writer.counters.committed + dropped == writer.counters.logged


# -- wire batches and queue reads -------------------------------------------------------


@pytest.fixture(scope="module")
def envelopes(encoder: EventEncoder, schema: EventSchema) -> list[Envelope]:
    return [
        Envelope(
            i,
            schema.full_name,
            schema.fingerprint,
            TS + i,
            encoder.encode({**RECORD, "ms_played": i}),
        )
        for i in range(1, 1001)
    ]


def test_batch_encode_1000(benchmark: Any, envelopes: list[Envelope]) -> None:
    batch = WireBatch("8d1f7e0c-7b44-4c38-9d2b-0a8c53f0b0a1", envelopes, next_seq={"x": 1001})
    body = benchmark(encode_batch, batch)
    benchmark.extra_info["body_bytes"] = len(body)


def test_batch_decode_1000(benchmark: Any, envelopes: list[Envelope]) -> None:
    body = encode_batch(WireBatch("8d1f7e0c-7b44-4c38-9d2b-0a8c53f0b0a1", envelopes))
    assert len(benchmark(decode_batch, body).envelopes) == 1000


def test_queue_read_batch_and_ack_1000(
    benchmark: Any, queues: Callable[..., DurableQueue], event: PendingEvent
) -> None:
    queue = queues()

    def fill() -> None:
        queue.append([event] * 1000)

    def ship() -> int:
        batch = queue.read_batch(max_events=1000, max_bytes=1 << 30)
        return queue.ack(batch[0].id, batch[-1].id)

    benchmark.pedantic(ship, setup=fill, rounds=50)
    assert queue.depth().events == 0
