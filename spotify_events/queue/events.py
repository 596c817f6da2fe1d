"""The events themselves: numbered and appended by the writer, read and acknowledged
by the shipper, bounded by the drop policy.

The hot path uses the raw connection with multi-row statements, because
``executemany`` releases the GIL once per row and a busy caller thread can then
starve the writer (a 1000-row ``executemany`` went from 2 ms to 2 s in a
measurement on a 2-core machine while another thread logged in a loop).
"""

from __future__ import annotations

import json
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate
from typing import Any

from ..settings import DropPolicy
from ..wire import EnvelopeFields
from .blocks import (
    BLOCK_MAX_EVENTS,
    BLOCK_MIN_EVENTS,
    UNREADABLE_BLOCK,
    Block,
    QueuedBatch,
    delete_range,
    explode,
    store_blocks,
)
from .rows import (
    DROP_QUEUE_FULL,
    ROW_OVERHEAD,
    AppendResult,
    DropRow,
    PendingRow,
    QueueDepth,
    QueuedEvent,
    bump_counters,
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
        if not events:
            return self.producer_id
        first_id = events.first_id if isinstance(events, QueuedBatch) else events[0].id
        producer = self.producer_of(first_id)
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
        envelopes: list[EnvelopeFields] = []
        sizes: list[int] = []
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
            envelopes.append((seq, event_type, fp, ts, payload))
            sizes.append(size)
            added += size
        last_id, held = self._store(cursor, envelopes, sizes, cache)
        stored = len(envelopes)
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
        return AppendCache(
            version, {**known, **next_seq}, queue_bytes, conn.total_changes, last_id, held
        )

    def _store(
        self,
        cursor: sqlite3.Cursor,
        envelopes: list[EnvelopeFields],
        sizes: list[int],
        cache: AppendCache | None,
    ) -> tuple[int | None, frozenset[tuple[str, bytes]] | None]:
        """Store numbered events: a group as blocks (:mod:`.blocks`), a single event
        (the ``commit`` level) as a row. A group holding an event of a held schema is
        stored as rows too (no block holds one), and so is one holding an envelope no
        reader could read back: such an event fails at its send, as it always has,
        not the commit of its whole group. Returns what the cache learnt: the last id
        of the events' id space, and the held schemas."""
        last_id = cache.last_id if cache else None
        held = cache.held if cache else None
        if not envelopes:
            return last_id, held
        if len(envelopes) >= BLOCK_MIN_EVENTS:
            if held is None:
                held = frozenset(cursor.execute("SELECT event_type, fingerprint FROM holds"))
            if not held or {(e[1], e[2]) for e in envelopes}.isdisjoint(held):
                try:
                    return store_blocks(cursor, envelopes, sizes, last_id), held
                except ValueError:
                    pass
        rows: list[object] = []
        for (seq, event_type, fp, ts, payload), size in zip(envelopes, sizes, strict=True):
            rows += (event_type, seq, fp, ts, payload, size)
        insert_rows(cursor, rows)
        return cursor.lastrowid, held

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
        # The oldest blocks within the excess become rows first; the rows are then
        # evicted one by one, exactly as many as the excess needs.
        freed, through = 0, None
        for piece_id, size in conn.execute(
            "SELECT id, size FROM events UNION ALL SELECT first_id, size FROM blocks ORDER BY 1"
        ):
            freed, through = freed + size, piece_id
            if freed >= excess:
                break
        unreadable_bytes = 0  # a block that does not read back is dropped, its bytes freed
        if through is not None:
            unreadable_bytes = explode(conn, 0, through, self.producer_of)[1]
        freed = 0
        last_id = None
        victims: dict[tuple[str | None, str], list[int]] = {}
        for row_id, event_type, seq, size in conn.execute(
            "SELECT id, event_type, seq, size FROM events ORDER BY id"
        ):
            if unreadable_bytes + freed >= excess:
                break
            victims.setdefault((self.producer_of(row_id), event_type), []).append(seq)
            freed += size
            last_id = row_id
        if last_id is None:
            return 0, unreadable_bytes
        count = sum(len(s) for s in victims.values())
        conn.execute("DELETE FROM events WHERE id <= ?", (last_id,))
        bump_counters(conn, -freed, -count)
        for (producer, event_type), seqs in victims.items():
            for first, last in runs(sorted(seqs)):
                drops.append(
                    (event_type, first, last, last - first + 1, DROP_QUEUE_FULL, now, producer)
                )
        return count, unreadable_bytes + freed

    def read_batch(
        self, *, after_id: int = 0, max_events: int = 1000, max_bytes: int = 1 << 20
    ) -> list[QueuedEvent]:
        """The oldest events after ``after_id``, in queue order, within both limits
        (at least one event when any is queued, whatever its size), all of one producer.
        Events of a held schema are left out until the hold's next try is due. Blocks
        come decoded and may be cut (an acknowledgement of part of one explodes it)."""
        pieces = self._read_pieces(after_id, max_events, max_bytes, whole_blocks=False)
        rows = [e for e in QueuedBatch(pieces).events() if e.id > after_id][:max_events]
        return rows[: _fitting(rows, max_bytes)]

    def read_shipment(
        self, *, after_id: int = 0, max_events: int = 1000, max_bytes: int = 1 << 20
    ) -> QueuedBatch:
        """What :meth:`read_batch` reads, for sending: whole blocks only, their bytes
        not decoded. A first block alone over a limit (a batch limit below the block
        size) is exploded into rows and the read made again."""
        return QueuedBatch(self._read_pieces(after_id, max_events, max_bytes, whole_blocks=True))

    def _read_pieces(
        self, after_id: int, max_events: int, max_bytes: int, *, whole_blocks: bool
    ) -> list[Block | QueuedEvent]:
        now = time.time()
        self._follow_identity()
        bounds = [2**63 - 1]  # the last id of each producer's events still to read
        if self._legacy and not self._legacy_delivered:
            # A batch carries one producer id: never mix events from before and after a copy.
            ((first_id,),) = self._read(
                "SELECT min(m) FROM (SELECT min(id) AS m FROM events "
                "UNION ALL SELECT min(first_id) FROM blocks)"
            )
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
        pieces: list[Block | QueuedEvent] = []
        for upper in bounds:
            pieces = self._pieces_between(
                after_id, upper, sql, params, max_events, max_bytes, whole_blocks
            )
            if pieces:
                break
            # nothing this producer may send now (its events are held): the next one's
            after_id = upper
        return pieces

    def _pieces_between(
        self,
        after_id: int,
        upper: int,
        sql: str,
        params: tuple[int | float, ...],
        max_events: int,
        max_bytes: int,
        whole_blocks: bool,
    ) -> list[Block | QueuedEvent]:
        """Rows and blocks with ids in ``(after_id, upper]``, merged in id order, up to
        the limits (``whole_blocks``: stopping before a block that would cross one; else
        taking it, for the caller to cut). Blocks' bytes are read in a second statement,
        of the blocks chosen only; one that left meanwhile (acknowledged, exploded by
        another connection) makes the read start again."""
        while True:
            rows = self._read(sql, (after_id, upper, *params))
            # a block holding ``after_id`` and later ids too starts at most a block's
            # worth before it (the first bound keeps the read on the index)
            metas = self._read(
                "SELECT first_id, last_id, size FROM blocks WHERE first_id > ? AND last_id > ? "
                "AND last_id <= ? ORDER BY first_id LIMIT ?",
                (after_id - BLOCK_MAX_EVENTS, after_id, upper, max_events),
            )
            if not metas:  # rows only, as many as fit
                return list(map(QueuedEvent._make, rows[: _fitting(rows, max_bytes)]))
            chosen: list[QueuedEvent | int] = []  # rows, and blocks by first id
            count = size = i = j = 0
            exploded = False
            while (i < len(rows) or j < len(metas)) and count < max_events and size < max_bytes:
                if j >= len(metas) or (i < len(rows) and rows[i][0] < metas[j][0]):
                    row = QueuedEvent._make(rows[i])
                    i += 1
                    row_size = len(row.payload) + ROW_OVERHEAD
                    if whole_blocks and chosen and size + row_size > max_bytes:
                        break
                    chosen.append(row)
                    count, size = count + 1, size + row_size
                    continue
                first, last, block_size = metas[j]
                j += 1
                n = last - max(first, after_id + 1) + 1
                if whole_blocks and (
                    count + n > max_events or size + block_size > max_bytes or first <= after_id
                ):
                    if not chosen:  # alone over a limit, or partly read: it ships as rows
                        with self.atomic() as conn:
                            explode(conn, first, last, self.producer_of)
                        exploded = True
                    break
                chosen.append(first)
                count, size = count + n, size + block_size
            if exploded:
                continue
            wanted = [c for c in chosen if isinstance(c, int)]
            blocks = (
                {
                    row[0]: Block(*row)
                    for row in self._read(
                        "SELECT first_id, last_id, size, summary, data FROM blocks "
                        "WHERE first_id BETWEEN ? AND ?",
                        (wanted[0], wanted[-1]),
                    )
                }
                if wanted
                else {}
            )
            if all(first in blocks for first in wanted):
                return [blocks[c] if isinstance(c, int) else c for c in chosen]

    def unpack(self, batch: QueuedBatch) -> list[QueuedEvent]:
        """A shipment's events as rows, for a path that sends them apart (a split): its
        blocks exploded in the file first, so that one whose bytes do not read back is
        recorded as dropped (see :func:`~.blocks.explode`) instead of stopping the
        shipper at every try; the events it still holds (an eviction may have taken some)."""
        spans = batch.spans()
        with self.atomic() as conn:
            for first, last in spans:
                explode(conn, first, last, self.producer_of)
            return [
                QueuedEvent._make(row)
                for first, last in spans
                for row in conn.execute(
                    "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM events "
                    "WHERE id BETWEEN ? AND ? ORDER BY id",
                    (first, last),
                )
            ]

    def ack_batch(self, batch: Sequence[QueuedEvent], *, keep: Sequence[int] = ()) -> int:
        """Delete the events of ``batch`` (as :meth:`read_batch` gave them) but ``keep``:
        exactly those, never an event between two of them that the read left out (one
        of a held schema, skipped while its hold is not due). A batch with no such gap,
        the usual case, is one range."""
        if not batch:
            return 0
        if isinstance(batch, QueuedBatch) and not keep:  # a shipment: its ids, undecoded
            with self.atomic() as conn:
                return sum(
                    delete_range(conn, first, last, self.producer_of)
                    for first, last in batch.spans()
                )
        first_id, last_id = batch[0].id, batch[-1].id
        if last_id - first_id + 1 == len(batch):
            return self.ack(first_id, last_id, keep=keep)
        kept = set(keep)
        spans = list(runs([e.id for e in batch if e.id not in kept]))
        with self.atomic() as conn:
            return sum(delete_range(conn, first, last, self.producer_of) for first, last in spans)

    def ack(self, first_id: int, last_id: int, *, keep: Sequence[int] = ()) -> int:
        """Delete the events with ids in ``[first_id, last_id]``: the collector has them.
        ``keep`` names ids in that range that stay (held events); an id beyond the
        range changes nothing (it must not stretch a deletion past ``last_id``)."""
        with self.atomic() as conn:
            if not keep:
                return delete_range(conn, first_id, last_id, self.producer_of)
            deleted, start = 0, first_id
            for kept in sorted(k for k in keep if k <= last_id):
                if kept > start:
                    deleted += delete_range(conn, start, kept - 1, self.producer_of)
                start = max(start, kept + 1)
            if start <= last_id:
                deleted += delete_range(conn, start, last_id, self.producer_of)
            return deleted

    def next_seqs(self) -> dict[str, int]:
        """Per event type, the next sequence number to be assigned (the heartbeat watermark)."""
        return {str(t): int(s) for t, s in self._read("SELECT event_type, next_seq FROM sequences")}

    def depth(self) -> QueueDepth:
        (events,), (size,) = self._read(
            "SELECT value FROM counters WHERE name IN ('events', 'bytes') ORDER BY name DESC"
        )
        heads = self._read(
            "SELECT * FROM (SELECT id, timestamp FROM events ORDER BY id LIMIT 1) UNION ALL "
            "SELECT * FROM (SELECT first_id, timestamp FROM blocks ORDER BY first_id LIMIT 1)"
        )
        oldest = min(heads)[1] if heads else None
        return QueueDepth(int(events), int(size), None if oldest is None else int(oldest))

    def max_event_id(self) -> int:
        row = self._read(
            "SELECT max(coalesce((SELECT max(id) FROM events), 0), coalesce((SELECT last_id "
            "FROM blocks ORDER BY first_id DESC LIMIT 1), 0))"
        )
        return int(row[0][0])

    def has_events_through(self, last_id: int) -> bool:
        """True while any event with id <= ``last_id`` is still queued (flush's condition)."""
        return bool(
            self._read(
                "SELECT EXISTS (SELECT 1 FROM events WHERE id <= ?) "
                "OR EXISTS (SELECT 1 FROM blocks WHERE first_id <= ?)",
                (last_id, last_id),
            )[0][0]
        )

    def depth_by_type(self) -> dict[str, tuple[int, int | None]]:
        """Per event type: (events queued, timestamp ms of the oldest) (for inspection)."""
        out: dict[str, tuple[int, int | None]] = {
            str(t): (int(n), None if oldest is None else int(oldest))
            for t, n, oldest in self._read(
                "SELECT event_type, count(*), min(timestamp) FROM events GROUP BY event_type"
            )
        }
        for first_id, summary in self._read("SELECT first_id, summary FROM blocks"):
            for event_type, count, first_ts in self._block_depth(first_id, summary):
                n, oldest = out.get(event_type, (0, None))
                out[event_type] = (n + count, first_ts if oldest is None else min(oldest, first_ts))
        return out

    def _block_depth(self, first_id: int, summary: str) -> list[tuple[str, int, int]]:
        """(event type, events, oldest timestamp) of one block, from its summary; from its
        events when the summary does not read back, and under :data:`UNREADABLE_BLOCK`
        when they do not either (the file damaged on disk: inspecting it must still work)."""
        try:
            return [(t, int(i["count"]), int(i["oldest"])) for t, i in json.loads(summary).items()]
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        ((last_id, size, timestamp, data),) = self._read(
            "SELECT last_id, size, timestamp, data FROM blocks WHERE first_id = ?", (first_id,)
        )
        block = Block(first_id, last_id, size, summary, data)
        try:
            events = block.events()
        except ValueError:
            return [(UNREADABLE_BLOCK, block.event_count, int(timestamp))]
        depth: dict[str, tuple[int, int]] = {}
        for e in events:
            n, oldest = depth.get(e.event_type, (0, e.timestamp))
            depth[e.event_type] = (n + 1, min(oldest, e.timestamp))
        return [(t, n, oldest) for t, (n, oldest) in depth.items()]


def _fitting(rows: Sequence[tuple[Any, ...]], max_bytes: int) -> int:
    """How many of ``rows`` (payload at index 5) fit in ``max_bytes`` as the writers
    charge them: at least one, whatever its size. The loops run in C, since a shipper
    reads every event the service logs."""
    ends = list(accumulate(len(row[5]) + ROW_OVERHEAD for row in rows))
    return max(1, bisect_right(ends, max_bytes))
