"""The SQL the queue's parts share (queue/rows.py), seen through a real queue file:
how many rows one INSERT carries, and the runs that drop records and deletes are
made of."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from queue_helpers import A, B, MakeQueue, ev
from support import stored_events

from spotify_events.queue import INSERT_CHUNK, events, rows
from spotify_events.queue.rows import runs


def test_an_append_of_many_events_stays_under_sqlites_historic_variable_cap(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite builds before 3.32 refuse a statement with more than 999 variables; a
    multi-row INSERT of six columns must stop at 150 rows."""
    # The statements are cached per row count for the life of the process; start empty
    # so that this test sees them written, whatever earlier tests appended.
    monkeypatch.setattr(rows, "_INSERT_SQL", {})
    # a group of rows, not a block: as a group holding an event of a held schema is stored
    monkeypatch.setattr(events, "BLOCK_MIN_EVENTS", 10**9)
    queue = make_queue()
    queue.append([ev(A)] * 10)  # the first append of a connection reads more; not traced
    inserts: list[str] = []
    assert queue._conn is not None
    queue._conn.set_trace_callback(
        lambda statement: (
            inserts.append(statement)
            if statement.upper().startswith("INSERT INTO EVENTS")
            else None
        )
    )
    queue.append([ev(A) if i % 2 else ev(B) for i in range(2 * INSERT_CHUNK + 7)])
    queue._conn.set_trace_callback(None)
    # the trace shows each statement with its values filled in: rows are "(...),(...)";
    # the SQL is matched whatever its letter case, which SQLite ignores
    rows_per_statement = [statement.count("),(") + 1 for statement in inserts]
    assert rows_per_statement == [INSERT_CHUNK, INSERT_CHUNK, 7]
    assert 6 * INSERT_CHUNK <= 999
    assert queue.depth().events == 10 + 2 * INSERT_CHUNK + 7
    assert sorted(rows._INSERT_SQL) == [7, 10, INSERT_CHUNK]  # kept for the next append
    assert [(e.event_type, e.seq) for e in queue.read_batch(max_events=12)][-2:] == [
        (B, 1),
        (A, 11),
    ]


def test_runs_collapses_consecutive_numbers() -> None:
    assert list(runs([])) == []
    assert list(runs([4])) == [(4, 4)]
    assert list(runs([1, 2, 3, 5, 7, 8])) == [(1, 3), (5, 5), (7, 8)]


def test_events_of_two_stretches_dead_lettered_together_are_moved_whole(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)] * 6)
    batch = queue.read_batch()
    picked = [batch[i] for i in (0, 1, 2, 4)]  # ids 1-3 and 5
    assert queue.dead_letter(picked, "rejected", notify_collector=True) == 4
    with sqlite3.connect(queue_path) as conn:
        drops = conn.execute("SELECT first_seq, last_seq, count FROM drops").fetchall()
    conn.close()
    assert [(e.seq,) for e in stored_events(queue_path)] == [(4,), (6,)]
    assert drops == [(1, 3, 3), (5, 5, 1)]
