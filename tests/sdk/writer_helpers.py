"""What the QueueWriter tests share: the test event's fingerprint and sizes (its type and
timestamp are the queue tests', from queue_helpers), and a second
connection holding SQLite's write lock (the ``make_writer`` and ``blocker`` fixtures
are in this directory's conftest.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from spotify_events.settings import EVENT_MEMORY_OVERHEAD
from spotify_events.writer import QueueWriter

FP = b"\x22" * 8
PAYLOAD = 50  # payload bytes per event
SIZE = PAYLOAD + EVENT_MEMORY_OVERHEAD  # what one buffered event counts against max_buffer_bytes

MakeWriter = Callable[..., QueueWriter]


class Blocker:
    """Holds SQLite's write lock from another connection (BEGIN IMMEDIATE), the way a
    second process in a long transaction would: the writer's commits wait, then fail.
    ``hold()`` (or ``with``) takes the lock; ``release()`` lets it go."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def hold(self) -> Blocker:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __enter__(self) -> Blocker:
        return self.hold()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def drops(path: Path) -> list[tuple[str, int, int, int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT event_type, first_seq, last_seq, count, reason FROM drops ORDER BY id"
        ).fetchall()
