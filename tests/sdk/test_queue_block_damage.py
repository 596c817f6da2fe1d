"""A block whose bytes or summary no longer read back (the file damaged on disk, where
SQLite keeps no checksum) must not wedge the queue: the events behind it still ship,
and the damaged block's numbers are reported dropped, from its summary, exactly. Real
queue files; a real shipper thread posting to the scripted collector on loopback (which
answers an undecodable body with 400, as the collector does), or to an in-process
transport answering through the collector's own reader."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from queue_helpers import FP, FP2, PAYLOAD, TS, A, B, MakeQueue
from sdk_helpers import Sink
from support import SCHEMAS, stored_bytes, stored_events, wait_for

from spotify_events.collector.ingest import Ingest, IngestError
from spotify_events.config import ClientConfig
from spotify_events.queue import ROW_OVERHEAD, DurableQueue, PendingEvent
from spotify_events.queue.blocks import DROP_BLOCK_UNREADABLE, UNREADABLE_BLOCK
from spotify_events.queue_tools import describe_queue
from spotify_events.schemas import SchemaRegistry
from spotify_events.shipper import Shipper
from spotify_events.transport import HttpTransport, MockTransport, SendResult
from spotify_events.wire import DropNotice, decode_batch


def group(n: int, event_type: str = A) -> list[PendingEvent]:
    return [PendingEvent(event_type, FP, TS + i, b"p" * PAYLOAD) for i in range(n)]


def damage_first_block(path: Path) -> None:
    """Overwrite the bytes just after the first envelope's sequence number (the length
    of its event type) of the oldest block: no reader can walk the block any more."""
    with sqlite3.connect(path) as conn:
        first_id, data = conn.execute(
            "SELECT first_id, data FROM blocks ORDER BY first_id LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE blocks SET data = ? WHERE first_id = ?",
            (data[:1] + b"\xff" * 12 + data[13:], first_id),
        )
    conn.close()


def damage_first_summary(path: Path) -> None:
    """Cut the oldest block's summary short: its bytes still read back, its JSON does not."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE blocks SET summary = substr(summary, 1, 10) "
            "WHERE first_id = (SELECT min(first_id) FROM blocks)"
        )
    conn.close()


def drops(queue: DurableQueue) -> list[tuple[str, int, int, str]]:
    return [(d.event_type, d.first_seq, d.last_seq, d.reason) for _, d in queue.unreported_drops()]


def test_a_damaged_block_is_reported_dropped_and_the_queue_behind_it_ships(
    make_queue: MakeQueue, queue_path: Path, sink: Sink
) -> None:
    queue = make_queue()
    queue.append(group(5, A) + group(5, B))  # one block: A 1..5, B 1..5
    queue.append(group(10, A))  # another: A 6..15
    damage_first_block(queue_path)
    config = ClientConfig(endpoint=sink.endpoint)
    transport = HttpTransport(config.transport_settings())
    shipper = Shipper(queue, transport, replace(config.shipper_settings(), backoff_max=0.05))
    try:
        shipper.start()
        assert shipper.wait_shipped(time.monotonic() + 20)
    finally:
        shipper.stop(5.0)
        transport.close()
    assert sink.seqs(A) == list(range(6, 16))  # every readable event, once
    assert sink.seqs(B) == []
    # the damaged block's numbers went out as drop notices with the batch after it
    assert queue.unreported_drops() == []
    notices = [n for arrival in sink.arrivals for n in arrival.batch.drops]
    assert sorted((n.event_type, n.first_seq, n.last_seq, n.reason) for n in notices) == [
        (A, 1, 5, DROP_BLOCK_UNREADABLE),
        (B, 1, 5, DROP_BLOCK_UNREADABLE),
    ]
    assert (queue.depth().events, queue.depth().bytes) == (0, 0)


def test_oldest_eviction_of_a_damaged_block_records_it_and_the_append_commits(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(max_queue_bytes=12 * (PAYLOAD + ROW_OVERHEAD), drop_policy="oldest")
    queue.append(group(10, A))  # A 1..10, one block
    damage_first_block(queue_path)
    result = queue.append(group(4, B))  # two over: the damaged block is the oldest
    assert result.stored == 4
    assert drops(queue) == [(A, 1, 10, DROP_BLOCK_UNREADABLE)]
    assert [(e.event_type, e.seq) for e in stored_events(queue_path)] == [
        (B, i) for i in range(1, 5)
    ]
    depth = queue.depth()
    assert (depth.events, depth.bytes) == (4, stored_bytes(queue_path))


def test_a_damaged_summary_does_not_stop_a_hold_and_its_events_ship(
    make_queue: MakeQueue, queue_path: Path, sink: Sink
) -> None:
    """A hold explodes every block that may hold the schema: one whose summary does not
    say is exploded too (as rows its events name their schemas)."""
    queue = make_queue()
    queue.append(group(5, A))  # A 1..5: its summary damaged
    queue.append([PendingEvent(B, FP2, TS, b"unknown" + b"p" * PAYLOAD) for _ in range(3)])
    damage_first_summary(queue_path)
    sink.reject = lambda payload: (
        "unknown_schema: not registered" if b"unknown" in payload else None
    )
    config = ClientConfig(endpoint=sink.endpoint)
    transport = HttpTransport(config.transport_settings())
    shipper = Shipper(queue, transport, replace(config.shipper_settings(), backoff_max=0.05))
    try:
        shipper.start()
        assert wait_for(lambda: queue.depth().events == 3, timeout=20)
    finally:
        shipper.stop(5.0)
        transport.close()
    assert sink.seqs(A) == [1, 2, 3, 4, 5]
    assert [(h.event_type, h.events) for h in queue.holds()] == [(B, 3)]
    assert "shipper error" not in (shipper.counters.last_error or "")  # the step never failed
    assert (queue.depth().events, queue.depth().bytes) == (3, stored_bytes(queue_path))


def test_a_block_reading_back_more_events_than_its_ids_is_reported_not_exploded(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """Damage that leaves the bytes walkable can still make a block read back more
    events than its ids hold. The collector refuses the batch (more records than its
    block declares); exploded as they read, the block's events would take the next
    block's ids (a UNIQUE failure at every try). Answered through the collector's own
    reader, in process."""
    queue = make_queue()
    queue.append(group(4, A))  # ids 1..4
    queue.append(group(4, B))  # ids 5..8
    with sqlite3.connect(queue_path) as conn:
        (data,) = conn.execute("SELECT data FROM blocks WHERE first_id = 1").fetchone()
        one = len(data) // 4  # four envelopes of one length
        conn.execute("UPDATE blocks SET data = ? WHERE first_id = 1", (data + data[:one],))
    conn.close()
    ingest = Ingest(SchemaRegistry(SCHEMAS))
    received: list[tuple[str, int]] = []
    notices: list[DropNotice] = []

    def collector(body: bytes, headers: Mapping[str, str]) -> SendResult:
        try:
            ingest.parse(body)
        except IngestError as exc:
            return SendResult(400, {"error": str(exc)})
        batch = decode_batch(body)
        received.extend((e.event_type, e.seq) for e in batch.envelopes)
        notices.extend(batch.drops)
        return SendResult(200, {"accepted": len(batch.envelopes), "duplicates": 0, "rejected": []})

    settings = replace(ClientConfig().shipper_settings(), backoff_max=0.05)
    shipper = Shipper(queue, MockTransport(collector), settings)
    try:
        shipper.start()
        assert shipper.wait_shipped(time.monotonic() + 20)
    finally:
        shipper.stop(5.0)
    assert sorted(received) == [(B, 1), (B, 2), (B, 3), (B, 4)]
    assert [(n.event_type, n.first_seq, n.last_seq) for n in notices] == [(A, 1, 4)]
    assert (queue.depth().events, queue.depth().bytes) == (0, 0)


def test_inspecting_a_queue_with_damaged_blocks_counts_their_events(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """``queue inspect`` reads each block's per-type counts from its summary: one whose
    summary does not read back is counted from its events, and one whose bytes do not
    either under its own name, instead of the tool failing on the file it inspects."""
    queue = make_queue()
    queue.append(group(5, A))
    queue.append(group(3, B))
    damage_first_summary(queue_path)
    assert queue.depth_by_type() == {A: (5, TS), B: (3, TS)}
    damage_first_block(queue_path)
    assert queue.depth_by_type() == {UNREADABLE_BLOCK: (5, TS), B: (3, TS)}
    assert describe_queue(queue)["types"][UNREADABLE_BLOCK]["events"] == 5
