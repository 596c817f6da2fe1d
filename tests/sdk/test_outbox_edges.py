"""The queue's outbox at its edges, on real SQLite files: holds renewed and released,
dead letters replayed with their numbers, drop records acknowledged while they grow,
and incidents listed and forgotten."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from queue_helpers import FP, FP2, PAYLOAD, TS, A, B, MakeQueue, ev
from support import stored_bytes
from writer_helpers import Blocker

from spotify_events.queue import DROP_BUFFER_FULL, ROW_OVERHEAD
from spotify_events.wire import DropNotice


def hold_rows(path: Path) -> list[tuple[str, bytes, str, float, float, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT event_type, fingerprint, reason, since, next_try, attempts FROM holds "
            "ORDER BY event_type, fingerprint"
        ).fetchall()


def test_a_hold_counts_its_attempts_and_keeps_when_it_began(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B), ev(A, FP2)])
    batch = queue.read_batch()
    asked: list[int] = []

    def retry_in(attempts: int) -> float:
        asked.append(attempts)
        return 1000.0 * attempts

    before = time.time()
    queue.hold(batch, "unknown schema", retry_in)
    after = time.time()
    first = hold_rows(queue_path)
    assert [(t, f, r, n) for t, f, r, _, _, n in first] == [
        (A, FP, "unknown schema", 1),
        (A, FP2, "unknown schema", 1),
        (B, FP, "unknown schema", 1),
    ]
    for _, _, _, since, next_try, _ in first:
        assert before <= since <= after
        assert since + 1000.0 == next_try
    assert asked == [1, 1, 1]
    queue.hold(batch[:1], "still unknown", retry_in)  # renewed: A/FP only
    renewed = hold_rows(queue_path)
    assert asked[3:] == [2]
    (_, _, reason, since, next_try, attempts) = renewed[0]
    assert (reason, since, attempts) == ("still unknown", first[0][3], 2)
    assert next_try >= first[0][3] + 2000.0
    assert renewed[1:] == first[1:]
    listed = sorted(queue.holds(), key=lambda h: (h.event_type, h.fingerprint))
    assert [
        (h.event_type, h.fingerprint, h.reason, h.since, h.next_try, h.attempts) for h in listed
    ] == renewed
    assert [h.events for h in listed] == [1, 1, 1]


def test_holds_lists_held_schemas_oldest_first_and_leaves_out_those_without_events(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    queue.append([ev(B), ev(A), ev(A)])
    b1, a1, a2 = queue.read_batch()
    queue.hold([b1], "unknown schema", lambda attempts: 3600.0)
    queue.hold([a1, a2], "unknown schema", lambda attempts: 3600.0)
    assert [(h.event_type, h.events, h.attempts) for h in queue.holds()] == [(B, 1, 1), (A, 2, 1)]
    queue.ack(b1.id, b1.id)
    assert [h.event_type for h in queue.holds()] == [A]


def test_release_holds_forgets_only_the_named_holds_and_counts_them(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    assert queue.release_holds([(A, FP)]) == 0  # no holds at all
    queue.append([ev(A), ev(B)])
    queue.hold(queue.read_batch(), "unknown schema", lambda attempts: 3600.0)
    assert queue.release_holds([]) == 0
    assert queue.release_holds([(A, FP2), (B, FP)]) == 1
    assert [(t, f) for t, f, *_ in hold_rows(queue_path)] == [(A, FP)]
    assert queue.release_holds(iter([(A, FP)])) == 1
    assert hold_rows(queue_path) == []


def test_releasing_holds_when_nothing_is_held_needs_no_write_lock(
    make_queue: MakeQueue, blocker: Callable[[], Blocker]
) -> None:
    """The shipper releases the schemas of every acknowledged batch: with no hold in
    the file that must not wait for (or fail on) another process's write lock."""
    queue = make_queue(busy_timeout=0.05)
    queue.append([ev(A)])
    with blocker():
        assert queue.release_holds([(A, FP)]) == 0
        assert queue.release_holds([]) == 0


def test_replayed_dead_letters_come_back_with_their_numbers_and_sizes(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(B), ev(A)])
    a1, b1, a2 = queue.read_batch()
    queue.dead_letter([a1, b1, a2], "bad", notify_collector=False)
    assert queue.depth().events == 0
    assert queue.replay_dead_letters(B) == 1
    assert queue.dead_letters() == [(A, 1, "bad"), (A, 2, "bad")]
    assert queue.replay_dead_letters() == 2
    assert queue.dead_letters() == []
    replayed = queue.read_batch()
    assert [(e.event_type, e.seq, e.fingerprint, e.timestamp) for e in replayed] == [
        (B, 1, FP, TS),
        (A, 1, FP, TS),
        (A, 2, FP, TS),
    ]
    depth = queue.depth()
    assert (depth.events, depth.bytes) == (3, 3 * (PAYLOAD + ROW_OVERHEAD))
    assert stored_bytes(queue_path) == 3 * (PAYLOAD + ROW_OVERHEAD)
    queue.append([ev(A)])  # numbering goes on after the replayed numbers
    assert [(e.event_type, e.seq) for e in queue.read_batch()][-1] == (A, 3)
    assert queue.replay_dead_letters() == 0


def test_a_dead_letter_remembers_when_and_why(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    queue.append([ev(A)])
    before = time.time()
    queue.dead_letter(queue.read_batch(), "HTTP 400: bad", notify_collector=True)
    after = time.time()
    with sqlite3.connect(queue_path) as conn:
        ((reason, created_at),) = conn.execute("SELECT reason, created_at FROM dead_letters")
        (notice_at,) = conn.execute("SELECT created_at FROM drops").fetchone()
    assert reason == "HTTP 400: bad"
    assert before <= created_at <= after and before <= notice_at <= after


def test_acknowledging_a_drop_record_that_grew_since_it_was_sent_keeps_the_rest(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 3})
    sent = queue.unreported_drops()
    assert [n for _, n in sent] == [DropNotice(A, 1, 3, 3, DROP_BUFFER_FULL)]
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 2})  # A4, A5 merge into the same record
    assert [n for _, n in queue.unreported_drops()] == [DropNotice(A, 1, 5, 5, DROP_BUFFER_FULL)]
    queue.mark_drops_reported(sent)
    assert queue.unreported_drops() == [(sent[0][0], DropNotice(A, 4, 5, 2, DROP_BUFFER_FULL))]
    queue.mark_drops_reported(queue.unreported_drops())
    assert queue.unreported_drops() == []
    assert queue.last_drop_id() == 0


def test_acknowledging_drop_records_forgets_exactly_those_sent(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 1, (B, DROP_BUFFER_FULL): 2})
    queue.append([], overflow={(A, "queue_write_failed"): 1})
    first, second, third = queue.unreported_drops()
    assert queue.last_drop_id() == third[0]
    queue.mark_drops_reported([])
    queue.mark_drops_reported([first, third])
    assert queue.unreported_drops() == [second]
    assert queue.last_drop_id() == second[0]


def test_unreported_drops_lists_at_most_1000_by_default_oldest_first(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([], overflow={(f"test.events.T{n:04d}", DROP_BUFFER_FULL): 1 for n in range(1001)})
    listed = queue.unreported_drops()
    assert len(listed) == 1000
    assert [row_id for row_id, _ in listed] == sorted(row_id for row_id, _ in listed)
    assert listed[0][1] == DropNotice("test.events.T0000", 1, 1, 1, DROP_BUFFER_FULL)
    assert queue.unreported_drops(limit=2) == listed[:2]


def test_incidents_are_listed_oldest_first_at_most_100_and_forgotten_by_id(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    assert queue.unreported_incidents() == []
    before = time.time()
    for n in range(101):
        queue.record_incident("queue_quarantined", f"incident {n}")
    after = time.time()
    listed = queue.unreported_incidents()
    assert len(listed) == 100
    assert [i["detail"] for _, i in listed] == [f"incident {n}" for n in range(100)]
    first_id, first = listed[0]
    assert set(first) == {"kind", "detail", "at"}
    assert first["kind"] == "queue_quarantined"
    assert isinstance(first["at"], float) and before <= first["at"] <= after
    queue.mark_incidents_reported([])
    queue.mark_incidents_reported([row_id for row_id, _ in listed[:99]])
    assert [i["detail"] for _, i in queue.unreported_incidents()] == ["incident 99", "incident 100"]
    assert queue.unreported_incidents()[0][0] == first_id + 99


@pytest.mark.parametrize("same_instance", [True, False])
def test_numbering_goes_on_after_a_replay(
    make_queue: MakeQueue, queue_path: Path, same_instance: bool
) -> None:
    """A replay writes through the queue's own connection: the next append must see
    the replayed bytes (the byte bound) and keep numbering where it was."""
    queue = make_queue(max_queue_bytes=300, drop_policy="newest")
    queue.append([ev(A), ev(A)])
    queue.dead_letter(queue.read_batch(), "bad", notify_collector=False)
    queue.append([ev(A)])
    replayer = queue if same_instance else make_queue(max_queue_bytes=300, drop_policy="newest")
    assert replayer.replay_dead_letters() == 2
    result = queue.append([ev(A), ev(A)])  # room for none: 300 bytes queued
    assert (result.stored, result.dropped) == (0, {"queue_full": 2})
    assert queue.next_seqs() == {A: 6}
