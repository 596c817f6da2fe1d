"""The queue's rows as Python values, and the SQL every part of the queue shares.

Value types (what the writer appends, what the shipper reads), the drop reasons
recorded in ``drops``, and the statements that keep the ``counters`` table and the
``drops`` ranges right whoever deletes or inserts events.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

#: Bytes charged per queued event on top of its payload (row header, type, seq, fingerprint).
ROW_OVERHEAD = 48
#: Rows per multi-row INSERT; 6 columns x 150 rows stays under SQLite's historic 999-variable cap.
INSERT_CHUNK = 150

DROP_QUEUE_FULL = "queue_full"
DROP_BUFFER_FULL = "buffer_full"
DROP_WRITE_FAILED = "queue_write_failed"
DROP_REENTERED = "reentrant_buffer_full"


#: What the writer hands to :meth:`~spotify_events.queue.DurableQueue.append`: (event type, fingerprint,
#: timestamp ms, payload). ``PendingEvent`` names the fields; the hot path builds
#: plain tuples, which are cheaper to make.
PendingRow = tuple[str, bytes, int, bytes]


class PendingEvent(NamedTuple):
    """An encoded event waiting for its sequence number."""

    event_type: str
    fingerprint: bytes
    timestamp: int
    payload: bytes


class QueuedEvent(NamedTuple):
    """An event as stored: ``id`` orders the queue; ``seq`` numbers it within its type."""

    id: int
    event_type: str
    seq: int
    fingerprint: bytes
    timestamp: int
    payload: bytes


@dataclass
class AppendResult:
    """What one committed append did: events stored and sequence ranges dropped."""

    stored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def count_drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


@dataclass(frozen=True)
class Hold:
    """Events of one schema the collector does not know yet, kept and retried."""

    event_type: str
    fingerprint: bytes
    reason: str
    since: float
    next_try: float
    attempts: int
    events: int


@dataclass(frozen=True)
class QueueDepth:
    events: int
    bytes: int
    oldest_timestamp: int | None


def bump_counters(conn: sqlite3.Connection | sqlite3.Cursor, size: int, events: int) -> None:
    conn.execute(
        "UPDATE counters SET value = value + (CASE name WHEN 'bytes' THEN ? ELSE ? END)",
        (size, events),
    )


#: A drop range as :func:`insert_drops` records it: (event type, first seq, last seq,
#: count, reason, created at, producer id). The producer is None for the file's own
#: producer, else the earlier producer of a copied file whose events were dropped.
DropRow = tuple[str, int, int, int, str, float, str | None]


def insert_drops(conn: sqlite3.Connection, drops: Iterable[DropRow]) -> None:
    """Record drop ranges, extending the previous record of the same producer, type
    and reason when the new range follows it: a full queue evicting on every commit
    then keeps one growing row instead of adding a row per commit (disk stays bounded)."""
    for event_type, first, last, count, reason, created_at, producer in drops:
        extended = conn.execute(
            "UPDATE drops SET last_seq = ?, count = count + ? WHERE id = ("
            "SELECT id FROM drops WHERE event_type = ? AND reason = ? AND last_seq = ? "
            "AND producer_id IS ? ORDER BY id DESC LIMIT 1)",
            (last, count, event_type, reason, first - 1, producer),
        ).rowcount
        if not extended:
            conn.execute(
                "INSERT INTO drops (event_type, first_seq, last_seq, count, reason, created_at, "
                "producer_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_type, first, last, count, reason, created_at, producer),
            )


def set_meta(conn: sqlite3.Connection, items: Iterable[tuple[str, str]]) -> None:
    """Set ``meta`` keys to values, adding the keys that are not there yet."""
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        items,
    )


def insert_incident(conn: sqlite3.Connection, kind: str, detail: str) -> None:
    """Remember something the collector should hear about (e.g. a quarantined file)."""
    conn.execute(
        "INSERT INTO incidents (kind, detail, created_at) VALUES (?, ?, ?)",
        (kind, detail, time.time()),
    )


def insert_rows(conn: sqlite3.Connection | sqlite3.Cursor, flat: list[object]) -> None:
    """Insert events given as flat (type, seq, fingerprint, timestamp, payload, size)
    sextuples, :data:`INSERT_CHUNK` rows per statement."""
    width = 6 * INSERT_CHUNK
    if len(flat) <= width:  # one statement, no copy: every ``commit``-level event is one
        if flat:
            conn.execute(_insert_sql(len(flat) // 6), flat)
        return
    for start in range(0, len(flat), width):
        chunk = flat[start : start + width]
        conn.execute(_insert_sql(len(chunk) // 6), chunk)


_INSERT_SQL: dict[int, str] = {}


def _insert_sql(n: int) -> str:
    sql = _INSERT_SQL.get(n)
    if sql is None:
        sql = (
            "INSERT INTO events (event_type, seq, fingerprint, timestamp, payload, size) VALUES "
            + ",".join(["(?,?,?,?,?,?)"] * n)
        )
        _INSERT_SQL[n] = sql
    return sql


def runs(sorted_numbers: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Collapse sorted integers into inclusive (first, last) runs of consecutive values."""
    it = iter(sorted_numbers)
    try:
        first = last = next(it)
    except StopIteration:
        return
    for n in it:
        if n == last + 1:
            last = n
        else:
            yield first, last
            first = last = n
    yield first, last
