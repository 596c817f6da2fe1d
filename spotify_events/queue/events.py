"""The events themselves: numbered and appended by the writer, read and acknowledged
by the shipper, bounded by the drop policy.

The hot path uses the raw connection with multi-row statements, because
``executemany`` releases the GIL once per row and a busy caller thread can then
starve the writer (a 1000-row ``executemany`` went from 2 ms to 2 s in a
measurement on a 2-core machine while another thread logged in a loop).
"""

from __future__ import annotations

import sqlite3
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

from ..settings import DropPolicy
from .rows import (
    DROP_QUEUE_FULL,
    ROW_OVERHEAD,
    AppendResult,
    DropRow,
    PendingRow,
    QueueDepth,
    QueuedEvent,
    bump_counters,
    delete_range,
    insert_drops,
    insert_rows,
    runs,
)
from .store import AppendCache, QueueStore, translate


class QueueEvents(QueueStore):
    """Append, read, acknowledge and count the queued events."""

    def producer_for(self, events: Sequence[QueuedEvent]) -> tuple[str, dict[str, int]]:
        """(producer id, next-sequence watermark) a batch of ``events`` is sent under:
        events queued before the file was copied keep their old producer."""
        return self.sender(self.batch_producer(events))

    def batch_producer(self, events: Sequence[QueuedEvent]) -> str:
        """The producer id a batch of ``events`` is sent under (see :meth:`producer_for`),
        without reading its watermark."""
        producer = self.producer_of(events[0].id) if events else None
        return producer or self.producer_id

    def sender(self, producer: str) -> tuple[str, dict[str, int]]:
        """(producer id, next-sequence watermark) a batch under ``producer`` is sent with:
        the file's own producer, or an earlier one of a copied file (its watermark as the
        copy found it; none once it is forgotten)."""
        if producer == self.producer_id:
            return producer, self.next_seqs()
        for legacy in self._legacy:
            if legacy.producer_id == producer:
                return producer, legacy.next_seq
        return producer, {}

    def append(
        self,
        events: Sequence[PendingRow],
        overflow: Mapping[tuple[str, str], int] | None = None,
        deadline: float | None = None,
    ) -> AppendResult:
        """Commit ``events`` in one transaction, numbering them per type.

        ``overflow`` counts events the caller had to drop before they reached
        the queue, keyed by (event type, reason); they consume sequence numbers
        too, recorded as drop ranges, so the collector sees "dropped" rather than
        an unexplained gap. ``deadline``: see :meth:`~.store.QueueStore.atomic`.
        """
        result = AppendResult()
        try:
            with self.atomic(deadline) as conn:
                state = self._append_locked(conn, events, overflow or {}, result)
        except sqlite3.DatabaseError as exc:
            self._cache = None
            raise translate(self.path, exc) from exc
        except BaseException:
            self._cache = None
            raise
        self._cache = state  # committed: valid until another connection writes
        return result

    def _append_locked(
        self,
        conn: sqlite3.Connection,
        events: Sequence[PendingRow],
        overflow: Mapping[tuple[str, str], int],
        result: AppendResult,
    ) -> AppendCache:
        cursor = self._cursor_of(conn)
        types = {e[0] for e in events}
        if overflow:
            types.update(t for t, _ in overflow)
        cache = self._valid_cache(conn, cursor)
        known = cache.next_seq if cache else {}
        next_seq = {t: known[t] for t in types if t in known}
        if len(next_seq) < len(types):
            next_seq.update(self._load_next_seqs(conn, types - next_seq.keys()))
        now = time.time()
        drops: list[DropRow] = []
        for (event_type, reason), count in overflow.items():
            first = next_seq[event_type]
            next_seq[event_type] = first + count
            drops.append((event_type, first, first + count - 1, count, reason, now, None))
            result.count_drop(reason, count)

        queue_bytes = (
            cache.queue_bytes
            if cache
            else conn.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0]
        )
        rows: list[object] = []
        added = 0
        refused: dict[str, list[int]] = {}
        for event_type, fp, ts, payload in events:
            seq = next_seq[event_type]
            next_seq[event_type] = seq + 1
            size = len(payload) + ROW_OVERHEAD
            if (
                self.drop_policy is DropPolicy.NEWEST
                and queue_bytes + added + size > self.max_queue_bytes
            ):
                refused.setdefault(event_type, []).append(seq)
                continue
            rows += (event_type, seq, fp, ts, payload, size)
            added += size
        insert_rows(cursor, rows)
        stored = len(rows) // 6
        for event_type, seqs in refused.items():
            for first, last in runs(seqs):
                drops.append(
                    (event_type, first, last, last - first + 1, DROP_QUEUE_FULL, now, None)
                )
            result.count_drop(DROP_QUEUE_FULL, len(seqs))
        for item in next_seq.items():  # usually one type per commit: execute beats executemany
            cursor.execute(
                "INSERT INTO sequences (event_type, next_seq) VALUES (?, ?) "
                "ON CONFLICT(event_type) DO UPDATE SET next_seq = excluded.next_seq",
                item,
            )
        queue_bytes += added
        bump_counters(cursor, added, stored)
        if self.drop_policy is DropPolicy.OLDEST and queue_bytes > self.max_queue_bytes:
            evicted, freed = self._evict_oldest(
                conn, queue_bytes - self.max_queue_bytes, now, drops
            )
            queue_bytes -= freed
            result.count_drop(DROP_QUEUE_FULL, evicted)
        if drops:
            insert_drops(conn, drops)
        result.stored = stored
        version = (
            cursor.execute("PRAGMA data_version").fetchone()[0]
            if cache is None
            else cache.data_version
        )
        return AppendCache(version, {**known, **next_seq}, queue_bytes, conn.total_changes)

    def _valid_cache(self, conn: sqlite3.Connection, cursor: sqlite3.Cursor) -> AppendCache | None:
        """Our cached sequence numbers and byte count, if no other connection wrote
        since our last commit (PRAGMA data_version changes only for others' commits)
        and neither did this one outside append (ack, dead_letter: total_changes moves).
        Saves two reads per transaction on the ``commit`` durability path."""
        cache = self._cache
        if cache is None:
            return None
        if (
            conn.total_changes != cache.total_changes
            or cursor.execute("PRAGMA data_version").fetchone()[0] != cache.data_version
        ):
            self._cache = None
            return None
        return cache

    def _load_next_seqs(self, conn: sqlite3.Connection, types: Iterable[str]) -> dict[str, int]:
        wanted = sorted(types)
        next_seq = dict.fromkeys(wanted, 1)
        if wanted:
            marks = ",".join("?" * len(wanted))
            for event_type, seq in conn.execute(
                f"SELECT event_type, next_seq FROM sequences WHERE event_type IN ({marks})", wanted
            ):
                next_seq[event_type] = seq
        return next_seq

    def _evict_oldest(
        self,
        conn: sqlite3.Connection,
        excess: int,
        now: float,
        drops: list[DropRow],
    ) -> tuple[int, int]:
        """Delete the oldest rows until ``excess`` bytes are freed; record their ranges
        (under the producer each event belongs to). Returns (events evicted, bytes freed)."""
        self._follow_identity(conn)
        freed = 0
        last_id = None
        victims: dict[tuple[str | None, str], list[int]] = {}
        for row_id, event_type, seq, size in conn.execute(
            "SELECT id, event_type, seq, size FROM events ORDER BY id"
        ):
            victims.setdefault((self.producer_of(row_id), event_type), []).append(seq)
            freed += size
            last_id = row_id
            if freed >= excess:
                break
        if last_id is None:
            return 0, 0
        count = sum(len(s) for s in victims.values())
        conn.execute("DELETE FROM events WHERE id <= ?", (last_id,))
        bump_counters(conn, -freed, -count)
        for (producer, event_type), seqs in victims.items():
            for first, last in runs(sorted(seqs)):
                drops.append(
                    (event_type, first, last, last - first + 1, DROP_QUEUE_FULL, now, producer)
                )
        return count, freed

    def read_batch(
        self, *, after_id: int = 0, max_events: int = 1000, max_bytes: int = 1 << 20
    ) -> list[QueuedEvent]:
        """The oldest events after ``after_id``, in queue order, within both limits
        (at least one event when any is queued, whatever its size), all of one producer.
        Events of a held schema are left out until the hold's next try is due."""
        now = time.time()
        self._follow_identity()
        bounds = [2**63 - 1]  # the last id of each producer's events still to read
        if self._legacy and not self._legacy_delivered:
            # A batch carries one producer id: never mix events from before and after a copy.
            ((first_id,),) = self._read("SELECT min(id) FROM events")
            queued = [
                e.last_id for e in self._legacy if first_id is not None and first_id <= e.last_id
            ]
            # ids only grow: once the old events are gone, none comes back
            self._legacy_delivered = not queued
            bounds = [bound for bound in queued if bound > after_id] + bounds
        if self._read("SELECT 1 FROM holds WHERE next_try > ? LIMIT 1", (now,)):
            sql = (
                "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM events e "
                "WHERE id > ? AND id <= ? AND NOT EXISTS (SELECT 1 FROM holds h WHERE "
                "h.event_type = e.event_type AND h.fingerprint = e.fingerprint AND h.next_try > ?) "
                "ORDER BY id LIMIT ?"
            )
            params: tuple[int | float, ...] = (now, max_events)
        else:
            sql = (
                "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM events "
                "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
            )
            params = (max_events,)
        for upper in bounds:
            rows = self._read(sql, (after_id, upper, *params))
            if rows:
                break
            # nothing this producer may send now (its events are held): the next one's
            after_id = upper
        # Each row's size as the writers charge it; the loops run in C, since a
        # shipper reads every event the service logs.
        ends = list(accumulate(len(row[5]) + ROW_OVERHEAD for row in rows))
        fits = max(1, bisect_right(ends, max_bytes))
        return list(map(QueuedEvent._make, rows[:fits]))

    def ack_batch(self, batch: Sequence[QueuedEvent], *, keep: Sequence[int] = ()) -> int:
        """Delete the events of ``batch`` (as :meth:`read_batch` gave them) but ``keep``:
        exactly those, never an event between two of them that the read left out (one
        of a held schema, skipped while its hold is not due). A batch with no such gap,
        the usual case, is one range."""
        if not batch:
            return 0
        first_id, last_id = batch[0].id, batch[-1].id
        if last_id - first_id + 1 == len(batch):
            return self.ack(first_id, last_id, keep=keep)
        kept = set(keep)
        spans = list(runs([e.id for e in batch if e.id not in kept]))
        with self.atomic() as conn:
            return sum(delete_range(conn, first, last) for first, last in spans)

    def ack(self, first_id: int, last_id: int, *, keep: Sequence[int] = ()) -> int:
        """Delete the events with ids in ``[first_id, last_id]``: the collector has them.
        ``keep`` names ids in that range that stay (held events); an id beyond the
        range changes nothing (it must not stretch a deletion past ``last_id``)."""
        with self.atomic() as conn:
            if not keep:
                return delete_range(conn, first_id, last_id)
            deleted, start = 0, first_id
            for kept in sorted(k for k in keep if k <= last_id):
                if kept > start:
                    deleted += delete_range(conn, start, kept - 1)
                start = max(start, kept + 1)
            if start <= last_id:
                deleted += delete_range(conn, start, last_id)
            return deleted

    def next_seqs(self) -> dict[str, int]:
        """Per event type, the next sequence number to be assigned (the heartbeat watermark)."""
        return {str(t): int(s) for t, s in self._read("SELECT event_type, next_seq FROM sequences")}

    def depth(self) -> QueueDepth:
        (events,), (size,) = self._read(
            "SELECT value FROM counters WHERE name IN ('events', 'bytes') ORDER BY name DESC"
        )
        oldest = self._read("SELECT timestamp FROM events ORDER BY id LIMIT 1")
        return QueueDepth(int(events), int(size), int(oldest[0][0]) if oldest else None)

    def max_event_id(self) -> int:
        row = self._read("SELECT coalesce(max(id), 0) FROM events")
        return int(row[0][0])

    def has_events_through(self, last_id: int) -> bool:
        """True while any event with id <= ``last_id`` is still queued (flush's condition)."""
        return bool(self._read("SELECT 1 FROM events WHERE id <= ? LIMIT 1", (last_id,)))

    def depth_by_type(self) -> dict[str, tuple[int, int | None]]:
        """Per event type: (events queued, timestamp ms of the oldest) (for inspection)."""
        return {
            str(t): (int(n), None if oldest is None else int(oldest))
            for t, n, oldest in self._read(
                "SELECT event_type, count(*), min(timestamp) FROM events GROUP BY event_type"
            )
        }
