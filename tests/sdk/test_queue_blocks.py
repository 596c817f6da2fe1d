"""Blocks beside rows (queue format 4): a commit group stored as one block of encoded
envelopes, shipped as it is, and exploded into ordinary rows (same ids, same sequence
numbers) on every rare path before the row code runs. Real queue files; the shipper
driven one batch at a time against an in-process transport answering as a collector;
real processes where a second process or SIGKILL is the subject."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from queue_helpers import FP, FP2, PAYLOAD, TS, A, B, MakeQueue, ev
from shipper_helpers import Collector, ack
from support import stored_bytes, stored_events

from spotify_events.decision import UNKNOWN_SCHEMA
from spotify_events.queue import FORMAT_VERSION, ROW_OVERHEAD, DurableQueue, PendingEvent
from spotify_events.queue.blocks import BLOCK_MAX_EVENTS
from spotify_events.queue_tools import describe_queue
from spotify_events.shipper import Shipper
from spotify_events.transport import SendResult


def blocks(path: Path) -> list[tuple[int, int, dict[str, Any]]]:
    """(first id, last id, summary) of every stored block."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT first_id, last_id, summary FROM blocks ORDER BY first_id")
        out = [(int(f), int(last), json.loads(s)) for f, last, s in rows]
    conn.close()
    return out


def row_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM events ORDER BY id")]
    conn.close()
    return ids


def numbered(n: int, event_type: str = A) -> list[PendingEvent]:
    """``n`` events whose payloads say their place (``PAYLOAD`` bytes each)."""
    return [
        PendingEvent(event_type, FP, TS + i, b"%08d" % i + b"x" * (PAYLOAD - 8)) for i in range(n)
    ]


def assert_counters_right(queue: DurableQueue) -> None:
    events = stored_events(queue.path)
    depth = queue.depth()
    assert (depth.events, depth.bytes) == (len(events), stored_bytes(queue.path))


def ship_all(shipper: Shipper, queue: DurableQueue) -> None:
    """Send what is queued, a shipment at a time, as the shipper's step reads it."""
    for _ in range(100):
        batch = queue.read_shipment(
            max_events=shipper.settings.max_events, max_bytes=shipper.settings.max_bytes
        )
        if not batch:
            return
        shipper._deliver(batch, [], [])
    raise AssertionError("the queue did not drain")


# -- the hot path ----------------------------------------------------------------------


def test_a_group_is_one_block_numbered_per_type_and_ships_as_stored(
    make_shipper: Any, collector: Collector, queue_path: Path
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A), ev(B), ev(A), ev(A, FP2)])
    assert row_ids(queue_path) == []
    assert blocks(queue_path) == [
        (
            1,
            4,
            {
                A: {
                    "count": 3,
                    "oldest": TS,
                    "fingerprints": [FP.hex(), FP2.hex()],
                    "runs": [[1, 3]],
                },
                B: {"count": 1, "oldest": TS, "fingerprints": [FP.hex()], "runs": [[1, 1]]},
            },
        )
    ]
    assert queue.depth_by_type() == {A: (3, TS), B: (1, TS)}
    assert queue.max_event_id() == 4 and queue.has_events_through(1)
    queue.append([ev(A)])  # one event alone (the commit level's shape) stays a row
    assert row_ids(queue_path) == [5]
    shipment = queue.read_shipment()
    assert (len(shipment), shipment.first_id, shipment.last_id, shipment.spans()) == (
        5,
        1,
        5,
        [(1, 5)],
    )
    shipper._deliver(shipment, [], [])
    assert collector.batches == [[(A, 1), (B, 1), (A, 2), (A, 3), (A, 4)]]
    assert queue.depth().events == 0 and stored_events(queue_path) == []
    assert_counters_right(queue)


def test_a_newest_refusal_inside_a_group_leaves_runs_not_one_range(make_queue: MakeQueue) -> None:
    queue = make_queue(max_queue_bytes=3 * (PAYLOAD + ROW_OVERHEAD), drop_policy="newest")
    big = PendingEvent(A, FP, TS, b"y" * (2 * PAYLOAD + ROW_OVERHEAD))  # costs two events' budget
    queue.append([ev(A), ev(A), big, ev(A), ev(B)])  # A3 (too big) and B1 (full) refused
    ((_, _, summary),) = blocks(queue.path)
    assert summary[A]["runs"] == [[1, 2], [4, 4]] and summary[A]["count"] == 3
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 1), (A, 2), (A, 4)]
    assert [(d.event_type, d.first_seq, d.last_seq) for _, d in queue.unreported_drops()] == [
        (A, 3, 3),
        (B, 1, 1),
    ]


def test_a_large_group_is_cut_into_blocks_and_a_batch_takes_whole_blocks(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    queue.append(numbered(BLOCK_MAX_EVENTS + 10))
    assert [(f, last) for f, last, _ in blocks(queue.path)] == [
        (1, BLOCK_MAX_EVENTS),
        (BLOCK_MAX_EVENTS + 1, BLOCK_MAX_EVENTS + 10),
    ]
    shipment = queue.read_shipment(max_events=BLOCK_MAX_EVENTS + 5)
    assert (shipment.first_id, shipment.last_id) == (1, BLOCK_MAX_EVENTS)  # the second would cross


# -- rare paths: each explodes the block first -------------------------------------------


def test_a_413_split_of_a_block_delivers_every_event_once(
    make_shipper: Any, collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(5)])
    collector.answer = lambda sent: SendResult(413) if len(sent) > 2 else ack(sent)
    ship_all(shipper, queue)
    assert [[s for _, s in b] for b in collector.batches] == [
        [1, 2, 3, 4, 5],
        [1, 2],
        [3, 4, 5],
        [3],
        [4, 5],
    ]
    assert queue.depth().events == 0 and shipper.counters.acknowledged == 5
    assert stored_events(queue.path) == []
    assert_counters_right(queue)


def test_a_400_bisection_dead_letters_the_poison_event_inside_a_block(
    make_shipper: Any, collector: Collector, queue_path: Path
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(6)])
    collector.answer = lambda sent: (
        SendResult(400, {"error": "bad payload"}) if (A, 4) in sent else ack(sent)
    )
    ship_all(shipper, queue)
    assert queue.dead_letters() == [(A, 4, "HTTP 400: bad payload")]
    delivered = sorted(s for b in collector.batches if (A, 4) not in b for _, s in b)
    assert delivered == [1, 2, 3, 5, 6]
    assert queue.depth().events == 0 and blocks(queue_path) == []
    assert_counters_right(queue)


def test_a_rejection_in_an_acknowledgement_dead_letters_one_event_of_a_block(
    make_shipper: Any, collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(4)])
    collector.answer = lambda sent: ack(
        sent, [{"event_type": A, "seq": 2, "code": "invalid", "reason": "no"}]
    )
    ship_all(shipper, queue)
    assert queue.dead_letters() == [(A, 2, "no")]
    assert queue.depth().events == 0
    assert queue.replay_dead_letters() == 1
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 2)]
    assert_counters_right(queue)


def test_held_events_of_a_block_become_rows_that_reads_skip_and_later_groups_stay_rows(
    make_shipper: Any, collector: Collector, queue_path: Path
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A), ev(B), ev(A), ev(B)])
    collector.answer = lambda sent: ack(
        sent,
        [
            {"event_type": B, "seq": s, "code": UNKNOWN_SCHEMA, "reason": "unknown schema"}
            for t, s in sent
            if t == B
        ],
    )
    ship_all(shipper, queue)
    assert [(e.event_type, e.seq) for e in stored_events(queue_path)] == [(B, 1), (B, 2)]
    assert blocks(queue_path) == [] and row_ids(queue_path) == [2, 4]
    assert [(h.event_type, h.events) for h in queue.holds()] == [(B, 2)]
    queue.append([ev(A), ev(B)])  # a group holding a held schema is stored as rows
    assert blocks(queue_path) == [] and row_ids(queue_path) == [2, 4, 5, 6]
    assert [(h.event_type, h.events) for h in queue.holds()] == [(B, 3)]
    assert [(e.event_type, e.seq) for e in queue.read_shipment()] == [(A, 3)]  # held: skipped
    queue.append([ev(A), ev(A)])  # no held schema: a block again
    assert [(f, last) for f, last, _ in blocks(queue_path)] == [(7, 8)]
    assert_counters_right(queue)


def test_a_hold_explodes_every_block_holding_its_schema(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B)])
    queue.append([ev(A), ev(A)])
    queue.append([ev(B), ev(A)])
    held = [e for e in queue.read_batch() if e.event_type == B][:1]
    queue.hold(held, "unknown schema", lambda attempts: 3600.0)
    assert [(f, last) for f, last, _ in blocks(queue_path)] == [(3, 4)]
    assert row_ids(queue_path) == [1, 2, 5, 6]
    assert [(h.event_type, h.events) for h in queue.holds()] == [(B, 2)]
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 1), (A, 2), (A, 3), (A, 4)]
    assert_counters_right(queue)


def test_oldest_eviction_takes_part_of_a_block_and_records_exact_ranges(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(max_queue_bytes=6 * (PAYLOAD + ROW_OVERHEAD), drop_policy="oldest")
    queue.append([ev(A), ev(B), ev(A), ev(A)])
    result = queue.append([ev(A), ev(A), ev(B)])  # one over: the oldest event goes
    assert result.dropped == {"queue_full": 1}
    assert [(e.event_type, e.seq) for e in stored_events(queue_path)] == [
        (B, 1),
        (A, 2),
        (A, 3),
        (A, 4),
        (A, 5),
        (B, 2),
    ]
    assert [(d.event_type, d.first_seq, d.last_seq) for _, d in queue.unreported_drops()] == [
        (A, 1, 1)
    ]
    assert [(f, last) for f, last, _ in blocks(queue_path)] == [(5, 7)]  # the new group whole
    assert_counters_right(queue)


def test_reading_part_of_a_block_and_acknowledging_it_leaves_the_rest_exact(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append(numbered(10))
    first = queue.read_batch(max_events=4)
    assert queue.ack_batch(first) == 4
    assert row_ids(queue_path) == list(range(5, 11)) and blocks(queue_path) == []
    rest = queue.read_batch(after_id=2)
    assert [(e.id, e.seq, e.payload[:8]) for e in rest] == [
        (i, i, b"%08d" % (i - 1)) for i in range(5, 11)
    ]
    assert_counters_right(queue)


def test_a_first_block_over_the_batch_limit_ships_as_rows(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append(numbered(6))
    shipment = queue.read_shipment(max_events=4)
    assert [e.seq for e in shipment] == [1, 2, 3, 4]
    assert blocks(queue.path) == [] and row_ids(queue.path) == [1, 2, 3, 4, 5, 6]
    assert queue.ack_batch(shipment) == 4
    assert_counters_right(queue)


def test_queue_tools_see_the_events_of_blocks(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B, ts=TS - 5), ev(A)])
    info = describe_queue(queue, now=TS / 1000)
    assert info["events"] == 3
    assert info["types"] == {
        A: {"events": 2, "oldest_age_seconds": 0.0},
        B: {"events": 1, "oldest_age_seconds": 0.005},
    }
    batch = queue.read_batch()
    assert queue.dead_letter(batch[1:2], "bad", notify_collector=True) == 1
    assert [(f, last) for f, last, _ in blocks(queue_path)] == []
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 1), (A, 2)]
    assert_counters_right(queue)


# -- crash, concurrency, migration ----------------------------------------------------------

_EXPLODE_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from spotify_events.queue import DurableQueue, blocks

    original = blocks.insert_numbered_rows

    def slow(conn, events):
        original(conn, events)
        print("inside", flush=True)
        time.sleep(600)

    blocks.insert_numbered_rows = slow
    queue = DurableQueue(sys.argv[1])
    batch = queue.read_batch()
    queue.ack_batch(batch[:2])  # cuts the block: explodes it, then hangs mid-transaction
    """
)


def test_sigkill_mid_explode_leaves_the_block_whole(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append(numbered(5))
    queue.close()
    child = subprocess.Popen(
        [sys.executable, "-c", _EXPLODE_AND_HANG, str(queue_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inside"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    reopened = make_queue()
    assert [(f, last) for f, last, _ in blocks(queue_path)] == [(1, 5)]
    assert row_ids(queue_path) == []
    assert [e.seq for e in reopened.read_batch()] == [1, 2, 3, 4, 5]
    assert reopened.ack_batch(reopened.read_batch()[:2]) == 2
    assert [e.seq for e in reopened.read_batch()] == [3, 4, 5]
    assert_counters_right(reopened)


_APPEND_GROUPS = textwrap.dedent(
    """
    import sys
    from spotify_events.queue import DurableQueue, PendingEvent

    queue = DurableQueue(sys.argv[1])
    for i in range(int(sys.argv[2])):
        queue.append([PendingEvent("test.events.Alpha", b"\\x11" * 8, 1, b"p") for _ in range(1 + i % 9)])
    """
)


def test_two_processes_one_appending_groups_one_cutting_blocks_account_for_every_number(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)])
    rounds = 300
    child = subprocess.Popen([sys.executable, "-c", _APPEND_GROUPS, str(queue_path), str(rounds)])
    acked: list[int] = []
    try:
        while child.poll() is None or queue.depth().events:
            batch = queue.read_shipment(max_events=7)
            if not batch:
                continue
            part = batch[: max(1, len(batch) // 2)]  # half a shipment: cuts blocks
            queue.ack_batch(part)
            acked += [e.seq for e in part]
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    total = 1 + sum(1 + i % 9 for i in range(rounds))
    assert sorted(acked) == list(range(1, total + 1))
    assert queue.next_seqs() == {A: total + 1}
    assert_counters_right(queue)


def test_a_format_3_file_with_queued_events_migrates_and_ships_them_first(
    make_shipper: Any, make_queue: MakeQueue, collector: Collector, queue_path: Path
) -> None:
    old = make_queue()
    for _ in range(3):
        old.append([ev(A)])  # rows, as every format-3 file holds its events
    producer = old.producer_id
    old.close()
    with sqlite3.connect(queue_path) as conn:  # as format 3 left it
        conn.execute("DROP TABLE blocks")
        conn.execute("PRAGMA user_version=3")
    conn.close()
    shipper, queue = make_shipper()
    assert queue.producer_id == producer
    with sqlite3.connect(queue_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 4
    conn.close()
    queue.append([ev(A), ev(A)])  # a block after the old rows
    assert row_ids(queue_path) == [1, 2, 3] and [
        (f, last) for f, last, _ in blocks(queue_path)
    ] == [(4, 5)]
    ship_all(shipper, queue)
    assert collector.batches == [[(A, 1), (A, 2), (A, 3), (A, 4), (A, 5)]]
    assert queue.depth().events == 0
    assert_counters_right(queue)


def test_a_shipping_only_open_leaves_a_format_3_file_at_format_3(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """An agent newer than the service whose file it ships must not lift the file past
    what that service reads: the service would be refused at its next open."""
    old = make_queue()
    old.append([ev(A)])
    old.append([ev(A)])
    old.close()
    with sqlite3.connect(queue_path) as conn:
        conn.execute("DROP TABLE blocks")
        conn.execute("PRAGMA user_version=3")
    conn.close()
    agent = DurableQueue(queue_path, upgrade=False)
    try:
        with sqlite3.connect(queue_path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        conn.close()
        shipment = agent.read_shipment()
        assert [e.seq for e in shipment] == [1, 2]
        assert agent.ack_batch(shipment) == 2
    finally:
        agent.close()
    make_queue()  # a writer of this SDK upgrades it
    with sqlite3.connect(queue_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
    conn.close()


def test_a_shipment_never_mixes_blocks_from_before_and_after_a_copy(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """A copied file's blocks queued before the copy ship under its old producer, whole
    and apart from the new producer's blocks: no block straddles the copy's last id."""
    queue = make_queue()
    queue.append([ev(A), ev(A), ev(B)])
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy)
    clone.append([ev(A), ev(B)])
    assert [(f, last) for f, last, _ in blocks(copy)] == [(1, 3), (4, 5)]
    old = clone.read_shipment()
    assert (old.first_id, old.last_id) == (1, 3) and row_ids(copy) == []
    new = clone.read_shipment(after_id=old.last_id)
    assert [(e.event_type, e.seq) for e in new] == [(A, 1), (B, 1)]
    assert clone.batch_producer(new) == clone.producer_id != clone.batch_producer(old)
    assert clone.producer_for(old)[1] == {A: 3, B: 2}  # the old producer's watermark
