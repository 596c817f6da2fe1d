"""Plain helpers and constants shared by every test folder (importable: ``tests/`` is
on the path through pytest's ``pythonpath`` setting). Fixtures live in the conftest files."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from spotify_events.queue import QueuedEvent
from spotify_events.queue.blocks import Block

#: The repository, and the example schemas every suite logs with.
ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.002
) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; the truthiness result.

    For conditions that no Event signals (another process, an SQLite lock, a lease
    expiring): the test waits on the condition itself, never on a guessed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored_events(path: Path) -> list[QueuedEvent]:
    """Every event a queue file holds, as rows and in blocks, in id order, read over a
    separate connection (as another process would see the file)."""
    with sqlite3.connect(path) as conn:
        events = [
            QueuedEvent(*row)
            for row in conn.execute(
                "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM events"
            )
        ]
        for row in conn.execute("SELECT first_id, last_id, size, summary, data FROM blocks"):
            events += Block(*row).events()
    conn.close()
    return sorted(events)


def stored_bytes(path: Path) -> int:
    """The queue budget a file's events take, as rows and in blocks (what its ``bytes``
    counter must say)."""
    with sqlite3.connect(path) as conn:
        (size,) = conn.execute(
            "SELECT (SELECT coalesce(sum(size), 0) FROM events) "
            "+ (SELECT coalesce(sum(size), 0) FROM blocks)"
        ).fetchone()
    conn.close()
    return int(size)
