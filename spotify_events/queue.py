"""DurableQueue: the on-disk write-ahead queue between ``log()`` and the network.

One SQLite file in WAL mode owns everything that must survive the process:

* the producer id (a UUID minted once per file; the collector's ledger key) and
  the file's home (host, path, inode) beside it: a file that finds itself
  elsewhere (a copied image, a restored backup on a second host) mints a new
  producer id for the events logged from then on, so two copies never number
  different events alike; events queued before the copy keep the old id (both
  copies hold the very same events, which the collector then dedupes), and an
  incident tells the collector,
* the next sequence number per event type (assigned inside the committing
  transaction, so numbers are contiguous from 1 and never reused, across drains,
  restarts and processes sharing the file),
* the events themselves, in commit order,
* drop records (sequence ranges dropped on purpose, with the reason, until the
  collector has been told),
* dead letters (events the collector rejected),
* holds: (event type, schema fingerprint) pairs the collector does not know yet;
  their events stay in ``events`` (same ids, same sequence numbers) but are
  skipped by reads until the hold's ``next_try``, then offered again, and
* the shipping lease (so only one process at a time sends from the file).

Format versions: 1 as first released; 2 adds the ``holds`` table (a version 1
file is migrated in place when opened).

Table creation and migration go through sqlite-utils; the hot path (append,
read, ack) uses the raw connection with multi-row statements, because
``executemany`` releases the GIL once per row and a busy caller thread can then
starve the writer (a 1000-row ``executemany`` went from 2 ms to 2 s in a
measurement on a 2-core machine while another thread logged in a loop).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from .config import ClientConfig
from .errors import (
    QueueCorruptError,
    QueueError,
    QueueForeignFileError,
    QueuePathError,
    QueueVersionError,
)
from .settings import DropPolicy, QueueSettings
from .wire import DropNotice

logger = logging.getLogger("spotify_events.queue")

#: Bumped on every incompatible change of the file layout; stored as PRAGMA user_version.
FORMAT_VERSION = 2
#: Marks the file as ours (PRAGMA application_id), so a foreign SQLite file is not adopted.
APPLICATION_ID = 0x53455631  # "SEV1"
#: Bytes charged per queued event on top of its payload (row header, type, seq, fingerprint).
ROW_OVERHEAD = 48
#: Rows per multi-row INSERT; 6 columns x 150 rows stays under SQLite's historic 999-variable cap.
INSERT_CHUNK = 150

DROP_QUEUE_FULL = "queue_full"
DROP_BUFFER_FULL = "buffer_full"
DROP_WRITE_FAILED = "queue_write_failed"
DROP_REENTERED = "reentrant_buffer_full"


#: What the writer hands to :meth:`DurableQueue.append`: (event type, fingerprint,
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


class DurableQueue:
    """A bounded, multi-process-safe SQLite queue of encoded events.

    Each instance owns one connection guarded by a lock; a client gives its
    writer and its shipper separate instances on the same file so appends and
    reads do not serialise on a Python lock (WAL lets them proceed together).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: QueueSettings | None = None,
        *,
        verify: bool = False,
        claim_home: bool = True,
        clock: Callable[[], float] = time.time,  # wall-clock seconds; times the shipping lease
    ) -> None:
        """``settings`` default to :class:`~spotify_events.config.ClientConfig`'s."""
        if settings is None:
            settings = ClientConfig().queue_settings()
        self.settings = settings
        self.drop_policy = settings.drop_policy
        self.path = Path(path)
        self.max_queue_bytes = settings.max_queue_bytes
        self.fsync = settings.fsync
        self.busy_timeout = settings.busy_timeout
        self.clock = clock
        self._lock = threading.RLock()
        self._cache: _AppendCache | None = None
        self._closed = False
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file we opened
        self._conn: sqlite3.Connection | None = self._connect(verify=verify)
        self.host = socket.gethostname()
        self._legacy: _Legacy | None = None
        # Inspection tools look without claiming: a copy they open stays as it is.
        self.producer_id = self._claim_home() if claim_home else self._read_meta("producer_id")

    # -- connection and schema -----------------------------------------------
    def _connect(self, verify: bool = False) -> sqlite3.Connection:
        check_queue_path(self.path)
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
                cached_statements=INSERT_CHUNK + 64,
            )
        except sqlite3.Error as exc:
            raise QueueError(f"{self.path}: cannot open queue: {exc}") from exc
        try:
            self._check_identity(conn)
            if verify:
                self._quick_check(conn)
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._migrate(conn)
        except sqlite3.OperationalError as exc:  # locked, I/O, permissions: not corruption
            conn.close()
            raise QueueError(f"{self.path}: cannot open queue: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise QueueCorruptError(
                f"{self.path}: not a usable spotify-events queue: {exc}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._identity = _file_identity(self.path)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds the file.

        Leaving the rollback journal needs an exclusive lock and SQLite may answer
        SQLITE_BUSY at once instead of calling the busy handler, so two gunicorn
        workers opening a new queue file together failed with "database is locked"
        (tests/test_queue.py, racing-to-create)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        """Find damage now rather than at the first unlucky read (``verify=True``).

        ``PRAGMA quick_check`` reads every page once; on a queue of a million
        events it takes a fraction of a second, paid once at startup."""
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise QueueCorruptError(f"{self.path}: queue file is damaged: {'; '.join(problems)}")

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        """Refuse foreign and newer files before writing a byte to them."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_tables and app_id != APPLICATION_ID:
            raise QueueForeignFileError(
                f"{self.path}: is an SQLite database but not a spotify-events queue; refusing to modify it"
            )
        if version > FORMAT_VERSION:
            raise QueueVersionError(
                f"{self.path}: queue format version {version} was written by a newer spotify-events "
                f"(this one reads up to {FORMAT_VERSION}); upgrade the package or point queue_path elsewhere"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == FORMAT_VERSION:
            return
        db = sqlite_utils.Database(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-check under the lock
            if version == 0:
                _create_v1(db)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            if version < 2:
                _create_v2(conn)
            if version < FORMAT_VERSION:
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        """The open connection (caller holds ``_lock``); reopened lazily after a fork."""
        conn = self._conn
        if conn is None:
            if self._closed:
                raise QueueError(f"{self.path}: queue is closed")
            conn = self._conn = self._connect()  # verified at first open; not again
        return conn

    def _home(self) -> str:
        assert self._identity is not None
        return json.dumps(
            {"host": self.host, "path": os.path.realpath(self.path), "inode": self._identity[1]}
        )

    def _claim_home(self) -> str:
        """The producer id for new events; mints a new one when the file was copied or moved."""
        home = self._home()
        with self.atomic() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            producer = str(meta["producer_id"])
            recorded = meta.get("home")
            if recorded is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('home', ?)", (home,))
            elif recorded != home:
                producer = self._reidentify(conn, producer, recorded, home)
        self._legacy = self._load_legacy()
        return producer

    def _reidentify(self, conn: sqlite3.Connection, old: str, was: str, now: str) -> str:
        new = str(uuid.uuid4())
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        next_seq = dict(conn.execute("SELECT event_type, next_seq FROM sequences"))
        legacy = {"producer_id": old, "last_id": last_id, "next_seq": next_seq}
        conn.execute("DELETE FROM sequences")  # the new producer numbers from 1
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("producer_id", new), ("home", now), ("legacy", json.dumps(legacy))],
        )
        conn.execute(
            "INSERT INTO incidents (kind, detail, created_at) VALUES (?, ?, ?)",
            (
                "queue_file_copied",
                f"queue file found elsewhere (was {was}, now {now}): producer {old} continues "
                f"as {new}; events queued before (ids up to {last_id}) keep {old}",
                time.time(),
            ),
        )
        self._cache = None
        logger.warning(
            "spotify-events: queue file %s was copied or moved (it lived at %s); events logged "
            "from now on use a new producer id %s, so the copies never clash at the collector",
            self.path,
            was,
            new,
        )
        return new

    def _load_legacy(self) -> _Legacy | None:
        row = self._read("SELECT value FROM meta WHERE key = 'legacy'")
        if not row:
            return None
        data = json.loads(row[0][0])
        return _Legacy(str(data["producer_id"]), int(data["last_id"]), dict(data["next_seq"]))

    def producer_for(self, events: Sequence[QueuedEvent]) -> tuple[str, dict[str, int]]:
        """(producer id, next-sequence watermark) a batch of ``events`` is sent under:
        events queued before the file was copied keep their old producer."""
        legacy = self._legacy
        if legacy is not None and events and events[0].id <= legacy.last_id:
            return legacy.producer_id, legacy.next_seq
        return self.producer_id, self.next_seqs()

    def _read_meta(self, key: str) -> str:
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT value FROM meta WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            raise QueueCorruptError(f"{self.path}: queue metadata {key!r} is missing")
        return str(row[0])

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken eagerly (BEGIN IMMEDIATE) so that two
        processes serialise on SQLite's lock instead of failing on upgrade."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise _translate(self.path, exc) from exc
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise _translate(self.path, exc) from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise _translate(self.path, exc) from exc

    # -- append (writer thread) ----------------------------------------------
    def append(
        self, events: Sequence[PendingRow], overflow: Mapping[tuple[str, str], int] | None = None
    ) -> AppendResult:
        """Commit ``events`` in one transaction, numbering them per type.

        ``overflow`` counts events the caller had to drop before they reached
        the queue, keyed by (event type, reason); they consume sequence numbers
        too, recorded as drop ranges, so the collector sees "dropped" rather than
        an unexplained gap.
        """
        result = AppendResult()
        try:
            with self.atomic() as conn:
                state = self._append_locked(conn, events, overflow or {}, result)
        except sqlite3.DatabaseError as exc:
            self._cache = None
            raise _translate(self.path, exc) from exc
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
    ) -> _AppendCache:
        types = {e[0] for e in events} | {t for t, _ in overflow}
        cache = self._valid_cache(conn)
        known = cache.next_seq if cache else {}
        next_seq = {t: known[t] for t in types if t in known}
        if len(next_seq) < len(types):
            next_seq.update(self._load_next_seqs(conn, types - next_seq.keys()))
        now = time.time()
        drops: list[tuple[str, int, int, int, str, float]] = []
        for (event_type, reason), count in overflow.items():
            first = next_seq[event_type]
            next_seq[event_type] = first + count
            drops.append((event_type, first, first + count - 1, count, reason, now))
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
        self._insert_rows(conn, rows)
        stored = len(rows) // 6
        for event_type, seqs in refused.items():
            for first, last in _runs(seqs):
                drops.append((event_type, first, last, last - first + 1, DROP_QUEUE_FULL, now))
            result.count_drop(DROP_QUEUE_FULL, len(seqs))
        for item in next_seq.items():  # usually one type per commit: execute beats executemany
            conn.execute(
                "INSERT INTO sequences (event_type, next_seq) VALUES (?, ?) "
                "ON CONFLICT(event_type) DO UPDATE SET next_seq = excluded.next_seq",
                item,
            )
        queue_bytes += added
        _bump_counters(conn, added, stored)
        if self.drop_policy is DropPolicy.OLDEST and queue_bytes > self.max_queue_bytes:
            evicted, freed = self._evict_oldest(
                conn, queue_bytes - self.max_queue_bytes, now, drops
            )
            queue_bytes -= freed
            result.count_drop(DROP_QUEUE_FULL, evicted)
        if drops:
            _insert_drops(conn, drops)
        result.stored = stored
        version = (
            conn.execute("PRAGMA data_version").fetchone()[0]
            if cache is None
            else cache.data_version
        )
        return _AppendCache(version, {**known, **next_seq}, queue_bytes, conn.total_changes)

    def _valid_cache(self, conn: sqlite3.Connection) -> _AppendCache | None:
        """Our cached sequence numbers and byte count, if no other connection wrote
        since our last commit (PRAGMA data_version changes only for others' commits)
        and neither did this one outside append (ack, dead_letter: total_changes moves).
        Saves two reads per transaction on the ``commit`` durability path."""
        cache = self._cache
        if cache is None:
            return None
        if (
            conn.total_changes != cache.total_changes
            or conn.execute("PRAGMA data_version").fetchone()[0] != cache.data_version
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

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, flat: list[object]) -> None:
        width = 6 * INSERT_CHUNK
        for start in range(0, len(flat), width):
            chunk = flat[start : start + width]
            n = len(chunk) // 6
            conn.execute(_insert_sql(n), chunk)

    def _evict_oldest(
        self,
        conn: sqlite3.Connection,
        excess: int,
        now: float,
        drops: list[tuple[str, int, int, int, str, float]],
    ) -> tuple[int, int]:
        """Delete the oldest rows until ``excess`` bytes are freed; record their ranges.
        Returns (events evicted, bytes freed)."""
        freed = 0
        last_id = None
        victims: dict[str, list[int]] = {}
        for row_id, event_type, seq, size in conn.execute(
            "SELECT id, event_type, seq, size FROM events ORDER BY id"
        ):
            victims.setdefault(event_type, []).append(seq)
            freed += size
            last_id = row_id
            if freed >= excess:
                break
        if last_id is None:
            return 0, 0
        count = sum(len(s) for s in victims.values())
        conn.execute("DELETE FROM events WHERE id <= ?", (last_id,))
        _bump_counters(conn, -freed, -count)
        for event_type, seqs in victims.items():
            for first, last in _runs(sorted(seqs)):
                drops.append((event_type, first, last, last - first + 1, DROP_QUEUE_FULL, now))
        return count, freed

    # -- read / ack (shipper thread) -----------------------------------------
    def read_batch(
        self, *, after_id: int = 0, max_events: int = 1000, max_bytes: int = 1 << 20
    ) -> list[QueuedEvent]:
        """The oldest events after ``after_id``, in queue order, within both limits
        (at least one event when any is queued, whatever its size). Events of a
        held schema are left out until the hold's next try is due."""
        now = time.time()
        upper = 2**63 - 1
        legacy = self._legacy
        if legacy is not None:
            # A batch carries one producer id: never mix events from before and after a copy.
            if self._read("SELECT 1 FROM events WHERE id <= ? LIMIT 1", (legacy.last_id,)):
                upper = legacy.last_id if after_id < legacy.last_id else upper
            else:
                self._legacy = None  # the copy's old events are all delivered
        if self._read("SELECT 1 FROM holds WHERE next_try > ? LIMIT 1", (now,)):
            rows = self._read(
                "SELECT id, event_type, seq, fingerprint, timestamp, payload, size FROM events e "
                "WHERE id > ? AND id <= ? AND NOT EXISTS (SELECT 1 FROM holds h WHERE "
                "h.event_type = e.event_type AND h.fingerprint = e.fingerprint AND h.next_try > ?) "
                "ORDER BY id LIMIT ?",
                (after_id, upper, now, max_events),
            )
        else:
            rows = self._read(
                "SELECT id, event_type, seq, fingerprint, timestamp, payload, size FROM events "
                "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, upper, max_events),
            )
        batch: list[QueuedEvent] = []
        total = 0
        for row in rows:
            size = row[6]
            assert isinstance(size, int)
            if batch and total + size > max_bytes:
                break
            total += size
            batch.append(QueuedEvent(*row[:6]))
        return batch

    def ack(self, first_id: int, last_id: int, *, keep: Sequence[int] = ()) -> int:
        """Delete the events with ids in ``[first_id, last_id]``: the collector has them.
        ``keep`` names ids in that range that stay (held events)."""
        with self.atomic() as conn:
            if not keep:
                return self._delete_range(conn, first_id, last_id)
            deleted, start = 0, first_id
            for kept in sorted(keep):
                if kept > start:
                    deleted += self._delete_range(conn, start, kept - 1)
                start = max(start, kept + 1)
            if start <= last_id:
                deleted += self._delete_range(conn, start, last_id)
            return deleted

    @staticmethod
    def _delete_range(conn: sqlite3.Connection, first_id: int, last_id: int) -> int:
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE id BETWEEN ? AND ?",
            (first_id, last_id),
        ).fetchone()
        if count:
            conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (first_id, last_id))
            _bump_counters(conn, -size, -count)
        return int(count)

    # -- holds: schemas the collector does not know yet --------------------------------
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
        """Move rejected events out of the queue into ``dead_letters`` with ``reason``.

        ``notify_collector`` also records them as a drop notice: needed when the
        collector never saw them (a 400 batch), not when its 200 body already
        listed them as rejected.
        """
        if not events:
            return 0
        now = time.time()
        with self.atomic() as conn:
            conn.executemany(
                "INSERT INTO dead_letters (event_type, seq, fingerprint, timestamp, payload, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.event_type, e.seq, e.fingerprint, e.timestamp, e.payload, reason, now)
                    for e in events
                ],
            )
            moved = 0
            for first, last in _runs(sorted(e.id for e in events)):
                moved += self._delete_range(conn, first, last)
            if notify_collector:
                by_type: dict[str, list[int]] = {}
                for e in events:
                    by_type.setdefault(e.event_type, []).append(e.seq)
                _insert_drops(
                    conn,
                    [
                        (t, first, last, last - first + 1, f"rejected: {reason}", now)
                        for t, seqs in by_type.items()
                        for first, last in _runs(sorted(seqs))
                    ],
                )
        return moved

    def unreported_drops(self, limit: int = 1000) -> list[tuple[int, DropNotice]]:
        """Drop records the collector has not acknowledged yet, oldest first."""
        rows = self._read(
            "SELECT id, event_type, first_seq, last_seq, count, reason FROM drops ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(int(r[0]), DropNotice(*r[1:])) for r in rows]

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

    def last_drop_id(self) -> int:
        """Id of the newest drop record not yet acknowledged by the collector (0: none)."""
        return int(self._read("SELECT coalesce(max(id), 0) FROM drops")[0][0])

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

    def replay_dead_letters(self, event_type: str | None = None) -> int:
        """Put dead letters (all, or those of ``event_type``) back into the queue with
        their original sequence numbers; the collector then counts them received."""
        where, params = ("WHERE event_type = ?", (event_type,)) if event_type else ("", ())
        with self.atomic() as conn:
            rows = conn.execute(
                "SELECT id, event_type, seq, fingerprint, timestamp, payload FROM dead_letters "
                f"{where} ORDER BY id",
                params,
            ).fetchall()
            flat: list[object] = []
            for _, etype, seq, fingerprint, timestamp, payload in rows:
                flat += (etype, seq, fingerprint, timestamp, payload, len(payload) + ROW_OVERHEAD)
            self._insert_rows(conn, flat)
            _bump_counters(conn, sum(len(r[5]) + ROW_OVERHEAD for r in rows), len(rows))
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

    # -- incidents: what happened to the queue itself ----------------------------
    def record_incident(self, kind: str, detail: str) -> None:
        """Remember something the collector should hear about (e.g. a quarantined file)."""
        with self.atomic() as conn:
            conn.execute(
                "INSERT INTO incidents (kind, detail, created_at) VALUES (?, ?, ?)",
                (kind, detail, time.time()),
            )

    def unreported_incidents(self) -> list[tuple[int, dict[str, object]]]:
        rows = self._read(
            "SELECT id, kind, detail, created_at FROM incidents ORDER BY id LIMIT 100"
        )
        return [(int(r[0]), {"kind": r[1], "detail": r[2], "at": r[3]}) for r in rows]

    def mark_incidents_reported(self, ids: Sequence[int]) -> None:
        if ids:
            with self.atomic() as conn:
                conn.executemany("DELETE FROM incidents WHERE id = ?", [(i,) for i in ids])

    # -- shipping lease --------------------------------------------------------
    def acquire_lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the shipping lease; False while another live holder has it."""
        now = self.clock()
        with self.atomic() as conn:
            row = conn.execute(
                "SELECT holder, expires_at FROM lease WHERE name = 'shipper'"
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO lease (name, holder, expires_at) VALUES ('shipper', ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (holder, now + ttl),
            )
        return True

    def release_lease(self, holder: str) -> None:
        with self.atomic() as conn:
            conn.execute("DELETE FROM lease WHERE name = 'shipper' AND holder = ?", (holder,))

    def lease_holder(self) -> str | None:
        rows = self._read(
            "SELECT holder FROM lease WHERE name = 'shipper' AND expires_at > ?", (self.clock(),)
        )
        return str(rows[0][0]) if rows else None

    # -- lifecycle -------------------------------------------------------------
    def checkpoint(self) -> None:
        """Fold the WAL back into the main file (cheap when idle; keeps the WAL small)."""
        self._read("PRAGMA wal_checkpoint(PASSIVE)")

    # -- the file under us -------------------------------------------------------
    def file_state(self) -> str | None:
        """None while ``path`` is still the file our connection opened; else
        ``"deleted"`` or ``"replaced"`` (someone removed or swapped it while we run:
        our open connection still reaches the old file, nobody else will)."""
        if self._identity is None or self._conn is None:
            return None  # not open (forked child, closed): checked again at reopen
        identity = _file_identity(self.path)
        if identity == self._identity:
            return None
        return "deleted" if identity is None else "replaced"

    def restore_file(self, peers: Sequence[DurableQueue] = ()) -> str | None:
        """Put our file back at ``path`` if it was deleted or replaced; what was done.

        Copies everything through our still-open connection (SQLite's backup API,
        so committed WAL frames come along) into a new file beside ``path``, closes
        our connections and those of ``peers`` (other instances on the same file in
        this process; they reopen on next use) and renames the copy into place.
        A file that replaced ours is moved aside, never deleted. Nothing is lost:
        producer id, sequence numbers, events, drops and dead letters are the same."""
        queues = [self, *peers]
        for queue in queues:
            queue._lock.acquire()
        try:
            state = self.file_state()
            if state is None:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            copy = self.path.with_name(f"{self.path.name}.restoring-{os.getpid()}")
            target = sqlite3.connect(copy)
            try:
                self._connection().backup(target)
            finally:
                target.close()
            for queue in queues:
                conn, queue._conn, queue._cache = queue._conn, None, None
                if conn is not None:
                    with suppress(sqlite3.Error):
                        conn.close()
            aside = None
            if state == "replaced" and self.path.exists():
                aside = _move_aside(self.path, f"replaced-{stamp}")
            else:
                for suffix in ("-wal", "-shm"):  # companions of a file that is gone
                    with suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
            os.replace(copy, self.path)
            with self.atomic() as conn:  # reopened: a new inode, and still this file's home
                conn.execute("UPDATE meta SET value = ? WHERE key = 'home'", (self._home(),))
            detail = f"queue file {self.path} was {state} while in use; restored from the open copy"
            if aside is not None:
                detail += f"; the file found in its place was moved to {aside}"
            self.record_incident(f"queue_file_{state}", detail)
            return detail
        finally:
            for queue in reversed(queues):
                queue._lock.release()

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another process's lock from now on (close() cuts
        it so a busy peer cannot stretch interpreter exit)."""
        self.busy_timeout = seconds
        with self._lock:
            if self._conn is not None:
                self._conn.execute(f"PRAGMA busy_timeout={max(1, int(seconds * 1000))}")

    def before_fork(self) -> None:
        """Called just before ``os.fork()``: wait until no thread of ours is inside
        SQLite, then close our connection until the fork is done.

        Holding the lock keeps the child from inheriting one of SQLite's internal
        mutexes locked by a thread that does not exist there (the child hung in
        ``sqlite3.connect``). Closing matters too: SQLite tracks the POSIX locks a
        process holds in memory, so a child that inherited an open connection
        believed it already held the WAL's shared-memory lock and never took it;
        once the parent let go, another process reset the WAL index under the
        child and committed events vanished (in one test run: 34,500 committed,
        10,414 left). With no connection open at fork, the child starts clean."""
        self._lock.acquire()
        conn, self._conn = self._conn, None
        self._cache = None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def after_fork_in_parent(self) -> None:
        """In the parent after ``os.fork()``: carry on (the connection reopens on use)."""
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """In the child: a fresh lock (the old one is held by the forking thread's
        copy); the connection reopens on first use."""
        self._lock = threading.RLock()
        self._cache = None
        self._conn = None

    def stop(self, timeout: float) -> bool:
        """:class:`~spotify_events.lifecycle.Lifecycle`'s stop: close the connection."""
        self.close()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()

    def __repr__(self) -> str:
        return f"<DurableQueue {self.path} producer={self.producer_id}>"


class _Legacy(NamedTuple):
    """The producer a copied file had: its queued events still ship under it."""

    producer_id: str
    last_id: int
    next_seq: dict[str, int]


class _AppendCache(NamedTuple):
    data_version: int
    next_seq: dict[str, int]
    queue_bytes: int
    total_changes: int  # this connection's row changes when the cache was made


def _bump_counters(conn: sqlite3.Connection, size: int, events: int) -> None:
    conn.execute(
        "UPDATE counters SET value = value + (CASE name WHEN 'bytes' THEN ? ELSE ? END)",
        (size, events),
    )


def check_queue_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`QueuePathError` naming what keeps ``path`` from holding a queue.

    SQLite says only "unable to open database file" for all of these; this says
    which: the directory is missing, a permission is missing, or the path is a
    directory. (Whether an existing file is a queue is decided when it is opened.)"""
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise QueuePathError(f"queue_path {path}: is a directory, not a queue file")
    directory = target.parent
    if not directory.is_dir():
        raise QueuePathError(f"queue_path {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        # SQLite creates its -wal and -shm files beside the queue file
        raise QueuePathError(
            f"queue_path {path}: permission denied: cannot create files in {directory}"
        )
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        raise QueuePathError(
            f"queue_path {path}: permission denied: the file must be readable and writable"
        )


def quarantine(path: str | os.PathLike[str]) -> Path:
    """Move a damaged queue file (and its -wal/-shm companions) aside, never deleting
    it, so a fresh queue can start and someone can still inspect or salvage the old one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return _move_aside(Path(path), f"corrupt-{stamp}")


def _move_aside(source: Path, label: str) -> Path:
    """Rename ``source`` and its companions to ``source.<label>[-n]``; the new path."""
    target = source.with_name(f"{source.name}.{label}")
    n = 1
    while target.exists():
        n += 1
        target = source.with_name(f"{source.name}.{label}-{n}")
    for suffix in ("", "-wal", "-shm"):
        companion = Path(f"{source}{suffix}")
        if companion.exists():
            os.replace(companion, f"{target}{suffix}")
    return target


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _insert_drops(
    conn: sqlite3.Connection, drops: Iterable[tuple[str, int, int, int, str, float]]
) -> None:
    """Record drop ranges, extending the previous record of the same type and reason
    when the new range follows it: a full queue evicting on every commit then keeps
    one growing row instead of adding a row per commit (disk stays bounded)."""
    for event_type, first, last, count, reason, created_at in drops:
        extended = conn.execute(
            "UPDATE drops SET last_seq = ?, count = count + ? WHERE id = ("
            "SELECT id FROM drops WHERE event_type = ? AND reason = ? AND last_seq = ? "
            "ORDER BY id DESC LIMIT 1)",
            (last, count, event_type, reason, first - 1),
        ).rowcount
        if not extended:
            conn.execute(
                "INSERT INTO drops (event_type, first_seq, last_seq, count, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (event_type, first, last, count, reason, created_at),
            )


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("meta").insert_all(
        [
            {"key": "producer_id", "value": str(uuid.uuid4())},
            {"key": "created_at", "value": str(time.time())},
        ]
    )
    db.table("counters").create({"name": str, "value": int}, pk="name")
    db.table("counters").insert_all([{"name": "bytes", "value": 0}, {"name": "events", "value": 0}])
    db.table("sequences").create({"event_type": str, "next_seq": int}, pk="event_type")
    # AUTOINCREMENT: ids are never reused, even after eviction empties the table,
    # so an ack for a batch read earlier can never delete newer, unsent events.
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, "
        "seq INTEGER NOT NULL, fingerprint BLOB NOT NULL, timestamp INTEGER NOT NULL, "
        "payload BLOB NOT NULL, size INTEGER NOT NULL)"
    )
    # AUTOINCREMENT: a drop id is never reused, so acknowledging a notice can never
    # delete a newer record that took the id of one already forgotten.
    db.execute(
        "CREATE TABLE drops (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, "
        "first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL, "
        "reason TEXT NOT NULL, created_at FLOAT)"
    )
    db.table("dead_letters").create(
        {
            "id": int,
            "event_type": str,
            "seq": int,
            "fingerprint": bytes,
            "timestamp": int,
            "payload": bytes,
            "reason": str,
            "created_at": float,
        },
        pk="id",
    )
    db.table("lease").create({"name": str, "holder": str, "expires_at": float}, pk="name")
    db.table("incidents").create(
        {"id": int, "kind": str, "detail": str, "created_at": float}, pk="id"
    )


def _create_v2(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS holds (event_type TEXT NOT NULL, fingerprint BLOB NOT NULL, "
        "reason TEXT NOT NULL, since FLOAT NOT NULL, next_try FLOAT NOT NULL, "
        "attempts INTEGER NOT NULL, PRIMARY KEY (event_type, fingerprint))"
    )


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


def _runs(sorted_numbers: Sequence[int]) -> Iterator[tuple[int, int]]:
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


def _translate(path: Path, exc: sqlite3.DatabaseError) -> QueueError:
    """Only SQLite's plain DatabaseError ("malformed", "not a database") means damage;
    its subclasses are locks, full disks, closed connections and the like."""
    if type(exc) is sqlite3.DatabaseError:
        return QueueCorruptError(f"{path}: queue database error: {exc}")
    return QueueError(f"{path}: {exc}")
