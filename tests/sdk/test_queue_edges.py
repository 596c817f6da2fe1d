"""The queue's events at their edges, on real SQLite files: an ack that keeps held ids,
an append that fails half-way (a trigger refusing a row, the write lock taken by
another connection) and the numbering after it, what one append learns for the next,
drop records and counters as stored, read_batch's defaults, reading on past the
events of a copied file, and the inspection queries (depth per type, flush's check)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from queue_helpers import PAYLOAD, TS, A, B, MakeQueue, ev
from support import stored_events
from writer_helpers import Blocker

from spotify_events.errors import QueueError
from spotify_events.queue import DROP_BUFFER_FULL, ROW_OVERHEAD


def stored(path: Path) -> list[tuple[int, str, int]]:
    """(id, event type, seq) of every stored event, over a separate connection."""
    return [(e.id, e.event_type, e.seq) for e in stored_events(path)]


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        ([3, 6], [3, 6]),  # three stretches deleted around two kept ids
        ([1, 10], [1, 10]),  # kept ids at both ends of the range
        ([6, 3, 3], [3, 6]),  # unsorted, repeated
        ([4, 5], [4, 5]),  # adjacent kept ids: nothing between them to delete
    ],
)
def test_an_ack_keeping_ids_deletes_around_them_and_counts_every_event_deleted(
    make_queue: MakeQueue, queue_path: Path, keep: list[int], left: list[int]
) -> None:
    queue = make_queue()
    queue.append([ev() for _ in range(10)])
    assert queue.ack(1, 10, keep=keep) == 10 - len(left)
    assert [row[0] for row in stored(queue_path)] == left
    depth = queue.depth()
    assert (depth.events, depth.bytes) == (len(left), len(left) * (PAYLOAD + ROW_OVERHEAD))


@pytest.mark.parametrize("keep", [[4, 8], [8], [0, 4, 11]])
def test_an_ack_never_deletes_beyond_its_range_whatever_it_is_asked_to_keep(
    make_queue: MakeQueue, queue_path: Path, keep: list[int]
) -> None:
    queue = make_queue()
    queue.append([ev() for _ in range(10)])
    left = [1, *(i for i in range(2, 6) if i in keep), 6, 7, 8, 9, 10]
    assert queue.ack(2, 5, keep=keep) == 10 - len(left)
    assert [row[0] for row in stored(queue_path)] == left


def test_an_append_refused_half_way_leaves_nothing_and_the_next_one_numbers_on(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)])
    with sqlite3.connect(queue_path) as other:  # triggers refuse Beta rows and blocks mid-insert
        other.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_type = '{B}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
        )
        other.execute(
            f"CREATE TRIGGER refuse_block BEFORE INSERT ON blocks WHEN NEW.summary LIKE '%{B}%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
        )
    with pytest.raises(QueueError) as caught:
        queue.append([ev(A), ev(B)])
    assert type(caught.value) is QueueError  # a refusal, not damage
    assert str(caught.value) == f"{queue_path}: refused by trigger"
    assert stored(queue_path) == [(1, A, 1)]
    with sqlite3.connect(queue_path) as other:
        other.execute("DROP TRIGGER refuse")
        other.execute("DROP TRIGGER refuse_block")
    queue.append([ev(A), ev(B)])
    assert [row[1:] for row in stored(queue_path)] == [(A, 1), (A, 2), (B, 1)]
    assert queue.next_seqs() == {A: 3, B: 2}


def test_an_append_that_cannot_get_the_write_lock_fails_and_the_next_one_numbers_on(
    make_queue: MakeQueue, queue_path: Path, blocker: Callable[[], Blocker]
) -> None:
    queue = make_queue(busy_timeout=0.05)
    queue.append([ev(A)])
    lock = blocker().hold()
    with pytest.raises(QueueError, match="locked"):
        queue.append([ev(A)])
    lock.release()
    queue.append([ev(A)])
    assert [row[1:] for row in stored(queue_path)] == [(A, 1), (A, 2)]


def test_an_append_after_an_append_of_the_same_types_reads_nothing_back(
    make_queue: MakeQueue,
) -> None:
    """The next numbers and the byte count learnt by one append serve the next one
    while no other connection wrote: one PRAGMA instead of three reads per commit."""
    queue = make_queue()
    queue.append([ev(A), ev(B)])
    statements: list[str] = []
    assert queue._conn is not None
    queue._conn.set_trace_callback(statements.append)
    try:
        result = queue.append([ev(B), ev(A)])
    finally:
        queue._conn.set_trace_callback(None)
    said = [s.strip().upper() for s in statements]
    assert [s for s in said if s.startswith(("SELECT", "PRAGMA"))] == ["PRAGMA DATA_VERSION"]
    assert result.stored == 2
    assert queue.next_seqs() == {A: 3, B: 3}
    assert queue.depth().bytes == 4 * (PAYLOAD + ROW_OVERHEAD)


def test_drop_records_say_when_they_were_made(make_queue: MakeQueue, queue_path: Path) -> None:
    before = time.time()
    oldest = make_queue(max_queue_bytes=300, drop_policy="oldest")
    oldest.append([ev(A) for _ in range(4)], overflow={(A, DROP_BUFFER_FULL): 2})  # evicts A3
    newest = make_queue(
        queue_path.with_name("newest.db"), max_queue_bytes=300, drop_policy="newest"
    )
    newest.append([ev(B) for _ in range(4)])  # refuses B4
    after = time.time()
    for path in (queue_path, queue_path.with_name("newest.db")):
        with sqlite3.connect(path) as conn:
            made = conn.execute("SELECT reason, created_at FROM drops ORDER BY id").fetchall()
        assert made, path
        for reason, created_at in made:
            assert before <= created_at <= after, (path, reason)


def test_the_counters_stay_whole_numbers(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    result = queue.append([ev(), ev()])
    assert type(result.stored) is int and result.stored == 2
    with sqlite3.connect(queue_path) as conn:
        kinds = conn.execute("SELECT name, typeof(value) FROM counters ORDER BY name").fetchall()
    assert kinds == [("bytes", "integer"), ("events", "integer")]


def test_read_batch_reads_at_most_1000_events_by_default(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev() for _ in range(1001)])
    batch = queue.read_batch()
    assert [e.id for e in batch] == list(range(1, 1001))
    assert [e.id for e in queue.read_batch(after_id=1000)] == [1001]


def test_reading_on_past_a_copied_files_old_events_reads_the_new_producers(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """The shipper reads the next batch while the previous one is in flight: once
    past the last event queued before the copy, it gets the new producer's events
    although the old ones are still queued."""
    queue = make_queue()
    queue.append([ev(A), ev(A)])
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy)
    clone.append([ev(A), ev(B)])
    old = clone.read_batch()
    assert [e.id for e in old] == [1, 2]
    new = clone.read_batch(after_id=old[-1].id)
    assert [(e.event_type, e.seq) for e in new] == [(A, 1), (B, 1)]
    assert clone.producer_for(new)[0] == clone.producer_id != clone.producer_for(old)[0]


def test_a_copy_of_a_copy_sends_each_producers_events_under_that_producer(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """A copy made before the first copy's old events were delivered: those events
    still belong to the first producer. Sent under the second one instead, its seq 1
    would name two different events and one of them would be lost as a duplicate."""
    queue = make_queue()
    queue.append([ev(A), ev(A)])
    first = queue.producer_id
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy)
    clone.append([ev(A)])
    second = clone.producer_id
    clone.close()
    copy2 = tmp_path / "copy2.db"
    shutil.copyfile(copy, copy2)
    clone2 = make_queue(copy2)
    clone2.append([ev(A)])
    sent = []
    after = 0
    while batch := clone2.read_batch(after_id=after):
        sent.append((clone2.producer_for(batch)[0], [e.seq for e in batch]))
        after = batch[-1].id
    assert sent == [(first, [1, 2]), (second, [1]), (clone2.producer_id, [1])]
    assert clone2.producer_for([clone2.read_batch()[0]])[1] == {A: 3}  # the first's watermark
    clone2.ack(1, 3)
    clone2.close()
    copy3 = tmp_path / "copy3.db"
    shutil.copyfile(copy2, copy3)
    clone3 = make_queue(copy3)
    assert clone3.producer_for(clone3.read_batch())[0] == clone2.producer_id


def test_a_copied_files_drop_records_stay_with_the_producer_whose_numbers_they_count(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """Drops recorded before the copy, and drops of the old events after it (an
    eviction, a dead letter the collector was never told of), count the old producer's
    numbers; the copy's own drops count the new one's, and never extend an old record."""
    queue = make_queue()
    queue.append([ev(A), ev(A), ev(A)], overflow={(A, DROP_BUFFER_FULL): 1})  # A1 dropped
    old = queue.producer_id
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy, max_queue_bytes=2 * (PAYLOAD + ROW_OVERHEAD))
    new = clone.producer_id
    clone.dead_letter(clone.read_batch()[-1:], "bad", notify_collector=True)  # the old A4
    clone.append([ev(A)])  # the new A1 makes room by evicting the old A2
    clone.append([], overflow={(A, DROP_BUFFER_FULL): 1})  # the new A2: follows the old A1
    assert clone.drop_producers() == [old, new]

    def notices(producer: str) -> list[tuple[int, int, str]]:
        return [
            (d.first_seq, d.last_seq, d.reason)
            for _, d in clone.unreported_drops(producer=producer)
        ]

    assert notices(old) == [(1, 1, DROP_BUFFER_FULL), (4, 4, "rejected: bad"), (2, 2, "queue_full")]
    assert notices(new) == [(2, 2, DROP_BUFFER_FULL)]
    assert clone.sender(old) == (old, {A: 5}) and clone.sender(new) == (new, {A: 3})


def test_dead_letters_of_a_copied_files_earlier_producer_are_not_replayed_under_the_new_one(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """A replayed dead letter keeps its sequence number, and is sent under the producer
    the file has now: one of a copied file's earlier producer went out as a number of
    the new one, which that producer had delivered (a duplicate, then forgotten here, or
    a conflict) or had yet to use (and its own event was then the conflict). It stays
    a dead letter; its producer's report counts it as rejected."""
    queue = make_queue()
    queue.append([ev(A), ev(A)])
    queue.dead_letter(queue.read_batch()[:1], "bad", notify_collector=False)  # before the copy
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy)
    clone.dead_letter(clone.read_batch(), "bad", notify_collector=False)  # the old A2, after it
    clone.append([ev(A)])
    clone.dead_letter(clone.read_batch(), "bad", notify_collector=False)  # the new A1
    assert clone.replay_dead_letters() == 1
    assert clone.dead_letters() == [(A, 1, "bad"), (A, 2, "bad")]
    batch = clone.read_batch()
    assert [e.seq for e in batch] == [1] and clone.producer_for(batch)[0] == clone.producer_id


def test_a_copied_files_held_old_events_do_not_hold_back_the_new_producers(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path
) -> None:
    """A read stops at the last event queued before the copy (one producer per batch).
    When every old event left is held (its schema unknown to the collector), the read
    found nothing there and stopped: the new producer's events waited as long as the
    hold lasted, however deliverable."""
    queue = make_queue()
    queue.append([ev(A), ev(B)])
    queue.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    clone = make_queue(copy)
    clone.append([ev(B)])
    old = clone.read_batch()
    held = [e for e in old if e.event_type == A]
    clone.hold(held, "unknown schema fingerprint", lambda attempts: 3600.0)
    clone.ack_batch(old, keep=[e.id for e in held])
    new = clone.read_batch()
    assert [(e.event_type, e.seq) for e in new] == [(B, 1)]
    assert clone.producer_for(new)[0] == clone.producer_id


def test_an_open_queue_follows_its_file_taking_a_new_producer_under_it(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process that finds the file away from its home (``queue replay`` from a
    debugging container, say) gives it a new producer, which numbers from 1 again. A
    queue open before kept sending under the producer it had read at open: its new
    events went out under numbers that producer had delivered (taken as duplicates),
    and a drop of the old events it evicted was put down to the new producer."""
    service = make_queue(max_queue_bytes=3 * (PAYLOAD + ROW_OVERHEAD))
    first = service.producer_id
    service.append([ev(A), ev(A)])
    service.ack_batch(service.read_batch())  # the first producer's A1 and A2 delivered
    service.append([ev(A)])
    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: "a-debugging-container")
        other = make_queue()
    assert other.producer_id != first
    service.append([], overflow={(B, DROP_BUFFER_FULL): 1})  # the new producer's B1
    assert service.drop_producers() == [other.producer_id]
    service.append([ev(A), ev(A), ev(A)])  # the new producer's 1..3; the old A3 evicted
    batch = service.read_batch()
    assert [e.seq for e in batch] == [1, 2, 3]
    assert service.producer_for(batch)[0] == other.producer_id
    assert service.drop_producers() == [other.producer_id, first]  # the evicted A3: the first's


def test_depth_by_type_counts_each_type_and_names_its_oldest_timestamp(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    assert queue.depth_by_type() == {}
    queue.append([ev(A, ts=TS + 5), ev(B, ts=TS), ev(A, ts=TS - 3)])
    assert queue.depth_by_type() == {A: (2, TS - 3), B: (1, TS)}


def test_has_events_through_is_true_while_any_event_up_to_the_id_is_queued(
    make_queue: MakeQueue,
) -> None:
    queue = make_queue()
    assert not queue.has_events_through(10)
    queue.append([ev(), ev(), ev()])
    assert queue.has_events_through(1)
    queue.ack(1, 1)
    assert not queue.has_events_through(1)
    assert queue.has_events_through(2)
    queue.ack(2, 3)
    assert not queue.has_events_through(3)


def test_shipped_through_waits_for_the_events_and_the_drop_records_up_to_its_marks(
    make_queue: MakeQueue,
) -> None:
    """What flush(), an agent's drain and ``queue ship`` wait for."""
    queue = make_queue()
    queue.append([ev(), ev()], overflow={(A, DROP_BUFFER_FULL): 1})
    marks = queue.shipping_marks()
    assert marks == (2, 1)
    queue.append([ev()], overflow={(B, DROP_BUFFER_FULL): 1})  # after the marks: not waited for
    assert not queue.shipped_through(*marks)
    queue.ack(1, 2)
    assert not queue.shipped_through(*marks)  # the drop record has not reached the collector
    queue.mark_drops_reported(queue.unreported_drops(1))
    assert queue.shipped_through(*marks)
    assert not queue.shipped_through(queue.max_event_id(), marks[1])


def test_a_shipped_check_waits_for_the_incidents_there_were_when_it_began(
    make_queue: MakeQueue,
) -> None:
    """An incident is how the collector learns what happened to the queue file (events
    lost with a damaged file, a copy): a drain that ended before it went left it in a
    file about to be thrown away, and ``queue ship`` said everything was shipped."""
    queue = make_queue()
    queue.record_incident("queue_quarantined", "moved aside")
    done = queue.shipped_check(queue.shipping_marks())
    assert not done()
    queue.record_incident("queue_file_deleted", "put back")  # after it began: not waited for
    first, _ = queue.unreported_incidents()
    queue.mark_incidents_reported([first[0]])
    assert done()


def test_a_shipped_check_waits_for_the_drop_record_of_events_evicted_after_its_marks(
    make_queue: MakeQueue,
) -> None:
    """Events that leave by eviction were not delivered: the check is done only once
    their drop record, newer than the marks, has reached the collector; drops recorded
    after the events left are not waited for."""
    queue = make_queue(max_queue_bytes=2 * (PAYLOAD + ROW_OVERHEAD))
    queue.append([ev(A), ev(A)])
    done = queue.shipped_check(queue.shipping_marks())
    assert not done()
    queue.append([ev(B), ev(B)])  # evicts both A events
    assert not done()  # the collector has not heard of A 1..2
    queue.append([], overflow={(B, DROP_BUFFER_FULL): 1})  # after they left: not waited for
    (evicted, _) = queue.unreported_drops()
    queue.mark_drops_reported([evicted])
    assert done()
