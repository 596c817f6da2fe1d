"""The outbox: what the collector must still hear about besides events, and what it refused.

Drop records (ranges dropped on purpose, until the collector acknowledges them),
incidents (what happened to the queue file itself), dead letters (events the
collector rejected, replayable), and holds (schemas the collector does not know
yet: their events stay queued but unread until the next try).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence

from ..wire import DropNotice
from .blocks import delete_range, explode, explode_schemas
from .rows import (
    ROW_OVERHEAD,
    Hold,
    QueuedEvent,
    bump_counters,
    insert_drops,
    insert_incident,
    insert_rows,
    runs,
)
from .store import QueueStore

#: A drop record whose event type has events held (its schema unknown to the collector)
#: waits until the hold is released; checked only while a hold exists.
_NOT_HELD = (
    "NOT EXISTS (SELECT 1 FROM holds h WHERE h.event_type = drops.event_type AND EXISTS "
    "(SELECT 1 FROM events e WHERE e.event_type = h.event_type AND e.fingerprint = h.fingerprint))"
)


class QueueOutbox(QueueStore):
    """Drops, incidents, dead letters and holds of one queue file."""

    def hold(
        self, events: Sequence[QueuedEvent], reason: str, retry_in: Callable[[int], float]
    ) -> None:
        """Keep ``events`` queued but unread until their schema's next try.

        One hold per (event type, fingerprint); each renewal counts an attempt and
        pushes ``next_try`` by ``retry_in(attempts)`` seconds."""
        now = time.time()
        keys = sorted({(e.event_type, e.fingerprint) for e in events})
        with self.atomic() as conn:
            for event_type, fingerprint in keys:
                row = conn.execute(
                    "SELECT attempts FROM holds WHERE event_type = ? AND fingerprint = ?",
                    (event_type, fingerprint),
                ).fetchone()
                attempts = 1 if row is None else int(row[0]) + 1
                conn.execute(
                    "INSERT INTO holds (event_type, fingerprint, reason, since, next_try, attempts) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(event_type, fingerprint) DO UPDATE SET "
                    "reason = excluded.reason, next_try = excluded.next_try, "
                    "attempts = excluded.attempts",
                    (event_type, fingerprint, reason, now, now + retry_in(attempts), attempts),
                )
            # reads skip held events: rows, never blocks
            explode_schemas(conn, set(keys), self.producer_of)

    def release_holds(self, keys: Iterable[tuple[str, bytes]]) -> int:
        """Forget holds whose schema the collector has now accepted; how many existed."""
        keys = list(keys)
        if not keys or not self._read("SELECT 1 FROM holds LIMIT 1"):
            return 0
        with self.atomic() as conn:
            return sum(
                conn.execute(
                    "DELETE FROM holds WHERE event_type = ? AND fingerprint = ?", key
                ).rowcount
                for key in keys
            )

    def holds(self) -> list[Hold]:
        """Current holds with the number of their events still queued (empty holds left out)."""
        rows = self._read(
            "SELECT h.event_type, h.fingerprint, h.reason, h.since, h.next_try, h.attempts, "
            "(SELECT count(*) FROM events e WHERE e.event_type = h.event_type "
            "AND e.fingerprint = h.fingerprint) AS n FROM holds h ORDER BY h.since"
        )
        return [
            Hold(str(r[0]), bytes(r[1]), str(r[2]), float(r[3]), float(r[4]), int(r[5]), int(r[6]))
            for r in rows
            if r[6]
        ]

    def dead_letter(
        self, events: Sequence[QueuedEvent], reason: str, *, notify_collector: bool
    ) -> int:
        """Move rejected events out of the queue into ``dead_letters`` with ``reason``;
        how many were still queued. Only those move: one that left meanwhile was
        dead-lettered or acknowledged by another shipper of the file (the lease handed
        over while this one's batch was out), or evicted by a full queue.

        ``notify_collector`` also records them as a drop notice: needed when the
        collector never saw them (a 400 batch), not when its 200 body already
        listed them as rejected.
        """
        if not events:
            return 0
        now = time.time()
        with self.atomic() as conn:
            events = self._still_queued(conn, events)
            if not events:
                return 0
            conn.executemany(
                "INSERT INTO dead_letters (event_type, seq, fingerprint, timestamp, payload, "
                "reason, created_at, producer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.event_type,
                        e.seq,
                        e.fingerprint,
                        e.timestamp,
                        e.payload,
                        reason,
                        now,
                        self.producer_of(e.id),
                    )
                    for e in events
                ],
            )
            moved = 0
            for first, last in runs(sorted(e.id for e in events)):
                moved += delete_range(conn, first, last, self.producer_of)
            if notify_collector:
                by_type: dict[tuple[str | None, str], list[int]] = {}
                for e in events:
                    by_type.setdefault((self.producer_of(e.id), e.event_type), []).append(e.seq)
                insert_drops(
                    conn,
                    [
                        (t, first, last, last - first + 1, f"rejected: {reason}", now, producer)
                        for (producer, t), seqs in by_type.items()
                        for first, last in runs(sorted(seqs))
                    ],
                )
        return moved

    def _still_queued(
        self, conn: sqlite3.Connection, events: Sequence[QueuedEvent]
    ) -> list[QueuedEvent]:
        """Those of ``events`` still in the queue, read inside the caller's transaction.
        The blocks holding them become rows first (only those: a rejection at each end
        of a batch leaves the blocks between them whole), which is how they leave."""
        queued: set[int] = set()
        ids = sorted(e.id for e in events)
        for first, last in runs(ids):
            explode(conn, first, last, self.producer_of)
            queued.update(
                row[0]
                for row in conn.execute(
                    "SELECT id FROM events WHERE id BETWEEN ? AND ?", (first, last)
                )
            )
        return [e for e in events if e.id in queued]

    def replay_dead_letters(self, event_type: str | None = None) -> int:
        """Put dead letters (all, or those of ``event_type``) back into the queue with
        their original sequence numbers; the collector then counts them received.

        Only the file's own producer's: a replayed event is sent under the producer the
        file has now, so one of a copied file's earlier producer stays a dead letter
        (its number would name another event of the new producer)."""
        where = "WHERE producer_id IS NULL" + (" AND event_type = ?" if event_type else "")
        params = (event_type,) if event_type else ()
        with self.atomic() as conn:
            rows = conn.execute(
                "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM dead_letters "
                f"{where} ORDER BY id",
                params,
            ).fetchall()
            flat: list[object] = []
            for _, etype, seq, fingerprint, timestamp, payload in rows:
                flat += (etype, seq, fingerprint, timestamp, payload, len(payload) + ROW_OVERHEAD)
            insert_rows(conn, flat)
            bump_counters(conn, sum(len(r[5]) + ROW_OVERHEAD for r in rows), len(rows))
            conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(r[0],) for r in rows])
        self._cache = None
        return len(rows)

    def dead_letters(self) -> list[tuple[str, int, str]]:
        """(event type, seq, reason) of every dead-lettered event, for inspection."""
        return [
            (str(t), int(s), str(r))
            for t, s, r in self._read(
                "SELECT event_type, seq, reason FROM dead_letters ORDER BY id"
            )
        ]

    def unreported_drops(
        self, limit: int = 1000, *, producer: str | None = None
    ) -> list[tuple[int, DropNotice]]:
        """Drop records the collector has not acknowledged yet, oldest first. With
        ``producer``, those a batch sent under that producer carries: the ones counting
        its numbers, and not yet those of a type whose events are held (the collector
        lacks its schema, and ignores drop notices of a type it does not know)."""
        if producer is None:
            rows = self._read(
                "SELECT id, event_type, first_seq, last_seq, count, reason FROM drops "
                "ORDER BY id LIMIT ?",
                (limit,),
            )
        else:
            rows = self._read(
                "SELECT id, event_type, first_seq, last_seq, count, reason FROM drops "
                f"WHERE coalesce(producer_id, ?) = ? AND {_NOT_HELD} ORDER BY id LIMIT ?",
                (self.producer_id, producer, limit),
            )
        return [(int(r[0]), DropNotice(*r[1:])) for r in rows]

    def drop_producers(self) -> list[str]:
        """The producers whose drop records are to be sent (see :meth:`unreported_drops`),
        the one with the oldest record first: the file's own, and earlier ones of a
        copied file."""
        self._follow_identity()
        rows = self._read(
            f"SELECT coalesce(producer_id, ?) AS producer FROM drops WHERE {_NOT_HELD} "
            "GROUP BY producer ORDER BY min(id)",
            (self.producer_id,),
        )
        return [str(r[0]) for r in rows]

    def mark_drops_reported(self, reported: Sequence[tuple[int, DropNotice]]) -> None:
        """Forget drop records the collector acknowledged, as they were when sent.

        A record may have grown since it was read (a later drop of the next
        numbers merges into it); then only the part that was sent is forgotten.
        """
        if not reported:
            return
        with self.atomic() as conn:
            for row_id, notice in reported:
                conn.execute(
                    "DELETE FROM drops WHERE id = ? AND last_seq = ?", (row_id, notice.last_seq)
                )
                conn.execute(
                    "UPDATE drops SET first_seq = ?, count = last_seq - ? + 1 WHERE id = ? AND last_seq > ?",
                    (notice.last_seq + 1, notice.last_seq + 1, row_id, notice.last_seq),
                )

    def last_drop_id(self) -> int:
        """Id of the newest drop record not yet acknowledged by the collector (0: none)."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM drops")[0][0])

    def record_incident(self, kind: str, detail: str) -> None:
        """Remember something the collector should hear about (e.g. a quarantined file)."""
        with self.atomic() as conn:
            insert_incident(conn, kind, detail)

    def unreported_incidents(self, limit: int = 100) -> list[tuple[int, dict[str, object]]]:
        """Incidents the collector has not acknowledged yet, oldest first."""
        rows = self._read(
            "SELECT id, kind, detail, created_at FROM incidents ORDER BY id LIMIT ?", (limit,)
        )
        return [(int(r[0]), {"kind": r[1], "detail": r[2], "at": r[3]}) for r in rows]

    def last_incident_id(self) -> int:
        """Id of the newest incident not yet acknowledged by the collector (0: none)."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM incidents")[0][0])

    def has_incidents_through(self, last_id: int) -> bool:
        """True while any incident with id <= ``last_id`` is not yet acknowledged."""
        return bool(self._read("SELECT 1 FROM incidents WHERE id <= ? LIMIT 1", (last_id,)))

    def mark_incidents_reported(self, ids: Sequence[int]) -> None:
        if ids:
            with self.atomic() as conn:
                conn.executemany("DELETE FROM incidents WHERE id = ?", [(i,) for i in ids])
