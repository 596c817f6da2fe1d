"""The queue file's connection and identity: opening, checking, migrating, claiming.

One SQLite file in WAL mode, one connection per instance guarded by a lock,
reopened lazily after a fork. The file carries the producer id and its home
(host, path, inode): a file that finds itself elsewhere mints a new producer id
for new events (events queued before keep the old one, see ``producer_for``).

Format versions: 1 as first released; 2 adds the ``holds`` table; 3 adds
``drops.producer_id`` and ``dead_letters.producer_id`` (the earlier producer of a
copied file whose events a drop record counts, or whose event a dead letter is); 4 adds
the ``blocks`` table (commit groups as encoded envelopes, see :mod:`.blocks`): rows an
older file holds stay rows and ship as they are.
An older file is migrated in place when opened. Table creation and migration go through
sqlite-utils.
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
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlite_utils

from ..config import ClientConfig
from ..errors import (
    QueueBusyError,
    QueueCorruptError,
    QueueError,
    QueueForeignFileError,
    QueueVersionError,
)
from ..settings import QueueSettings
from .blocks import create_blocks_table
from .files import check_queue_path, file_identity
from .rows import INSERT_CHUNK, insert_incident, set_meta

logger = logging.getLogger("spotify_events.queue")

_T = TypeVar("_T")

#: Bumped on every incompatible change of the file layout; stored as PRAGMA user_version.
FORMAT_VERSION = 4
#: Marks the file as ours (PRAGMA application_id), so a foreign SQLite file is not adopted.
APPLICATION_ID = 0x53455631  # "SEV1"
#: The first and the longest pause between two tries for a lock another connection holds
#: (see ``QueueStore._retrying``).
LOCK_RETRY_FIRST = 0.0001
LOCK_RETRY_MAX = 0.002


class QueueStore:
    """One connection to a queue file, the file's identity, and its transactions.

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
        upgrade: bool = True,
    ) -> None:
        """``settings`` default to :class:`~spotify_events.config.ClientConfig`'s.

        ``upgrade=False`` (a process that only ships, never appends: the agent) leaves
        an existing format-3 file at format 3, adding only the empty ``blocks`` table
        its reads look at: a service on an older SDK that still writes the file would
        be refused at its next open (after a fork, say) by a newer format. Writers
        upgrade files; agents are upgraded first."""
        self._upgrade = upgrade
        if settings is None:
            settings = ClientConfig().queue_settings()
        self.settings = settings
        self.drop_policy = settings.drop_policy
        self.path = Path(path)
        self.max_queue_bytes = settings.max_queue_bytes
        self.fsync = settings.fsync
        # (monotonic time of the last set_busy_timeout(), the timeout it set): one tuple,
        # so a wait in another thread never reads the new timeout with the old time
        self._busy_since: tuple[float, float] = (0.0, settings.busy_timeout)
        self._callers = threading.local()  # .deadline: a calling thread's own (see waiting_until)
        self.clock = clock
        self._lock = threading.RLock()
        self._forking = False  # see before_fork
        self._cache: AppendCache | None = None
        self._cursor: sqlite3.Cursor | None = None  # see _cursor_of
        self._closed = False
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file we opened
        self._conn: sqlite3.Connection | None = self._connect(verify=verify)
        self.host = socket.gethostname()
        self._legacy: tuple[_Legacy, ...] = ()  # oldest first (see _load_legacy)
        self._legacy_delivered = False  # no event of theirs queued any more (see read_batch)
        # Inspection tools look without claiming: a copy they open stays as it is.
        self.producer_id = self._claim_home() if claim_home else self._read_meta("producer_id")

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
            self._migrate(conn)
            # From here on SQLite never waits for a lock itself: _retrying() does (finer
            # pauses, and a deadline close() can cut while a wait is under way).
            conn.execute("PRAGMA busy_timeout=0")
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
        self._identity = file_identity(self.path)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds the file.

        Leaving the rollback journal needs an exclusive lock and SQLite may answer
        SQLITE_BUSY at once instead of calling the busy handler, so two gunicorn
        workers opening a new queue file together failed with "database is locked"
        (tests/sdk/test_queue.py, racing-to-create)."""
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
            if version < 3:
                _create_v3(conn)
            create_blocks_table(conn)
            target = FORMAT_VERSION if self._upgrade or version == 0 else max(version, 3)
            if version < target:
                conn.execute(f"PRAGMA user_version={target}")
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

    def _cursor_of(self, conn: sqlite3.Connection) -> sqlite3.Cursor:
        """The one cursor of ``conn`` that write transactions and appends run their
        statements on (caller holds ``_lock``): ``conn.execute`` makes, registers and
        frees a cursor per statement, ~0.5 µs each, six per ``commit``-level event.
        Its reads are single rows, read to the end; a transaction ends on it with
        COMMIT or ROLLBACK; so it never holds a read open between transactions."""
        cursor = self._cursor
        if cursor is None or cursor.connection is not conn:
            cursor = self._cursor = conn.cursor()
        return cursor

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
        first_id, last_id = conn.execute(
            "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM (SELECT id FROM events "
            "UNION ALL SELECT first_id FROM blocks UNION ALL SELECT last_id FROM blocks)"
        ).fetchone()
        next_seq = dict(conn.execute("SELECT event_type, next_seq FROM sequences"))
        legacy: dict[str, Any] = {"producer_id": old, "last_id": last_id, "next_seq": next_seq}
        # A copy of a copy: the producers before ``old`` keep the events of theirs still
        # queued (numbered in their own sequences, which ``old``'s would collide with).
        row = conn.execute("SELECT value FROM meta WHERE key = 'legacy'").fetchone()
        older = [
            entry
            for entry in _legacy_entries(row[0] if row else None)
            if first_id and entry["last_id"] >= first_id
        ]
        if older:
            legacy["older"] = older
        conn.execute("DELETE FROM sequences")  # the new producer numbers from 1
        # drop records not yet reported count the old producer's numbers, not the new one's,
        # and the dead letters are the old producer's events
        for table in ("drops", "dead_letters"):
            conn.execute(f"UPDATE {table} SET producer_id = ? WHERE producer_id IS NULL", (old,))
        set_meta(conn, [("producer_id", new), ("home", now), ("legacy", json.dumps(legacy))])
        insert_incident(
            conn,
            "queue_file_copied",
            f"queue file found elsewhere (was {was}, now {now}): producer {old} continues "
            f"as {new}; events queued before (ids up to {last_id}) keep {old}",
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

    def _load_legacy(self) -> tuple[_Legacy, ...]:
        row = self._read("SELECT value FROM meta WHERE key = 'legacy'")
        return _legacy_chain(row[0][0] if row else None)

    def _follow_identity(self, conn: sqlite3.Connection | None = None) -> None:
        """Take up the producer the file has now, if another connection re-identified it
        since we read it (a process that found the file away from its home): from then on
        its events are numbered and sent under the new producer, ours before it under the
        old one. One indexed read; ``conn``: inside a transaction already open on it."""

        def meta(key: str) -> list[tuple[Any, ...]]:
            sql, params = "SELECT value FROM meta WHERE key = ?", (key,)
            if conn is None:
                return self._read(sql, params)
            return conn.execute(sql, params).fetchall()

        rows = meta("producer_id")
        if not rows or rows[0][0] == self.producer_id:
            return
        legacy = meta("legacy")
        self.producer_id = str(rows[0][0])
        self._legacy = _legacy_chain(legacy[0][0] if legacy else None)
        self._legacy_delivered = False

    def producer_of(self, event_id: int) -> str | None:
        """The earlier producer of a copied file that the queued event ``event_id``
        belongs to; None for the file's own producer."""
        for legacy in self._legacy:
            if event_id <= legacy.last_id:
                return legacy.producer_id
        return None

    def _read_meta(self, key: str) -> str:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            raise QueueCorruptError(f"{self.path}: queue metadata {key!r} is missing")
        return str(rows[0][0])

    def atomic(self, deadline: float | None = None) -> _Transaction:
        """One write transaction, taken eagerly (BEGIN IMMEDIATE) so that two
        processes serialise on SQLite's lock instead of failing on upgrade.
        ``deadline`` (``time.monotonic()``) ends its waits for a lock as
        :meth:`waiting_until` does, without the thread-local round trip that costs
        a ``commit``-level event ~0.5 µs; None: this thread's deadline, if any."""
        return _Transaction(self, deadline)

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._acquire()
        try:
            conn = self._connection()
            return self._retrying(lambda: conn.execute(sql, params).fetchall())
        except sqlite3.DatabaseError as exc:
            raise translate(self.path, exc) from exc
        finally:
            self._lock.release()

    def _acquire(self, deadline: float | None = None) -> None:
        """Take ``_lock``, giving up at ``deadline`` or else this thread's (see
        :meth:`waiting_until`) with :class:`QueueBusyError`: another thread of ours may
        hold it for as long as its own wait for another process's lock (the shipper
        thread acknowledging while a peer writes), which a flush reading through the
        same connection must not wait out."""
        if deadline is None:
            deadline = getattr(self._callers, "deadline", None)
        if deadline is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise QueueBusyError(
                f"{self.path}: another thread waited for the write lock past the caller's deadline"
            )

    def _retrying(self, statement: Callable[[], _T], deadline: float | None = None) -> _T:
        """Run ``statement`` until no other connection holds the lock it needs, or
        ``busy_timeout`` has passed (then SQLite's "database is locked" error stands),
        or ``deadline`` or else this thread's (see :meth:`waiting_until`) has.

        The connection's own busy handler is off: SQLite's sleeps 1 ms, then 2, 5,
        10 ms and more between tries, so a lock held for 0.2 ms (a group commit on
        one side of the queue, an acknowledgement on the other) cost the waiter
        1.1 ms; and its wait could not be cut short, so close() waited out a busy
        timeout of up to 10 s behind a writer thread stuck in a commit. Here the
        pauses start at 0.1 ms and stay under 2 ms, and the deadline is read again
        on every try (see set_busy_timeout)."""
        started = 0.0
        pause = LOCK_RETRY_FIRST
        while True:
            try:
                return statement()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                now = time.monotonic()
                started = started or now
                set_at, timeout = self._busy_since
                if now >= max(started, set_at) + timeout:
                    raise
                caller_deadline = (
                    deadline if deadline is not None else getattr(self._callers, "deadline", None)
                )
                if caller_deadline is not None and now >= caller_deadline:
                    raise QueueBusyError(
                        f"{self.path}: another process held the write lock past the caller's deadline"
                    ) from exc
                if self._forking:
                    raise QueueBusyError(
                        f"{self.path}: stopped waiting for another process's write lock: "
                        "this process is forking"
                    ) from exc
            time.sleep(pause)
            pause = min(2 * pause, LOCK_RETRY_MAX)

    def waiting_until(self, deadline: float | None) -> _CallerDeadline:
        """While the block runs, this thread's waits for a lock end at ``deadline``
        (``time.monotonic()``; None: no deadline of its own) with :class:`QueueBusyError`,
        so that ``flush(timeout)`` keeps to its timeout when another process writes:
        SQLite's lock, and this connection's lock while another thread of ours holds it.
        Other threads' waits are not affected."""
        return _CallerDeadline(self._callers, deadline)

    def checkpoint(self) -> None:
        """Fold the WAL back into the main file (cheap when idle; keeps the WAL small)."""
        self._read("PRAGMA wal_checkpoint(PASSIVE)")

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a statement waits for another process's lock from now on, also a
        wait already under way in another thread: close() cuts it so that neither a
        busy peer nor a writer thread stuck behind one can stretch interpreter exit.
        Takes no lock, which that writer thread may be holding."""
        self._busy_since = (time.monotonic(), seconds)

    @property
    def busy_timeout(self) -> float:
        """How long a statement waits for another process's lock (see set_busy_timeout)."""
        return self._busy_since[1]

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
        10,414 left). With no connection open at fork, the child starts clean.

        A thread of ours waiting for another process's write lock holds ``_lock``
        for as long as that process keeps it, up to the busy timeout, and the fork
        waited as long. Such a wait now ends at its next try (within
        ``LOCK_RETRY_MAX``) with :class:`QueueBusyError`, as a caller's deadline
        ends it, and its caller tries again after the fork: the writer keeps the
        events buffered, the shipper sends the batch again. Stepping aside and
        carrying on instead could deadlock: restoring the file holds the peers'
        locks too, which the fork takes next."""
        self._forking = True
        self._lock.acquire()
        conn, self._conn = self._conn, None
        self._cache = self._cursor = None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def after_fork_in_parent(self) -> None:
        """In the parent after ``os.fork()``: carry on (the connection reopens on use)."""
        self._forking = False
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """In the child: a fresh lock (the old one is held by the forking thread's
        copy); the connection reopens on first use."""
        self._lock = threading.RLock()
        self._forking = False
        self._cache = self._cursor = None
        self._conn = None

    def stop(self, timeout: float) -> bool:
        """:class:`~spotify_events.lifecycle.Lifecycle`'s stop: close the connection."""
        self.close()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            self._cursor = None
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} producer={self.producer_id}>"


class _Transaction:
    """:meth:`QueueStore.atomic`: the store's lock and one write transaction, committed
    when the block ends normally and rolled back when it raises. A class rather than
    a generator context manager: at the ``commit`` level every event opens one, and
    the generator's frames cost a sizeable share of such a small transaction."""

    __slots__ = ("_conn", "_cursor", "_deadline", "_store")

    def __init__(self, store: QueueStore, deadline: float | None) -> None:
        self._store = store
        self._deadline = deadline

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._acquire(self._deadline)
        try:
            conn = store._connection()
            cursor = store._cursor_of(conn)
            store._retrying(lambda: cursor.execute("BEGIN IMMEDIATE"), self._deadline)
        except sqlite3.DatabaseError as exc:
            store._lock.release()
            raise translate(store.path, exc) from exc
        except BaseException:
            store._lock.release()
            raise
        self._conn = conn
        self._cursor = cursor
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        conn, cursor = self._conn, self._cursor
        try:
            if exc_type is not None:
                if conn.in_transaction:
                    cursor.execute("ROLLBACK")
                return
            try:
                cursor.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    cursor.execute("ROLLBACK")
                raise translate(self._store.path, exc) from exc
        finally:
            self._store._lock.release()


class _CallerDeadline:
    """:meth:`QueueStore.waiting_until`: sets and restores one thread's deadline."""

    __slots__ = ("_before", "_callers", "_deadline")

    def __init__(self, callers: threading.local, deadline: float | None) -> None:
        self._callers = callers
        self._deadline = deadline
        self._before: float | None = None

    def __enter__(self) -> None:
        self._before = getattr(self._callers, "deadline", None)
        self._callers.deadline = self._deadline

    def __exit__(self, *exc: object) -> None:
        self._callers.deadline = self._before


class _Legacy(NamedTuple):
    """A producer a copied file had: its queued events still ship under it."""

    producer_id: str
    last_id: int
    next_seq: dict[str, int]


def _legacy_chain(value: str | None) -> tuple[_Legacy, ...]:
    """The producers the file had before it was copied, oldest first: each one's events
    are those with ids above the previous one's ``last_id`` up to its own."""
    return tuple(
        _Legacy(str(entry["producer_id"]), int(entry["last_id"]), dict(entry["next_seq"]))
        for entry in _legacy_entries(value)
    )


def _legacy_entries(value: str | None) -> list[dict[str, Any]]:
    """The ``legacy`` meta row as a list of producers, oldest first: the producer the
    file had before its last copy, and under ``older`` those before that whose events
    were still queued then (a file written before ``older`` existed has just the one)."""
    if value is None:
        return []
    data = json.loads(value)
    return [*data.pop("older", []), data]


class AppendCache(NamedTuple):
    """What the last append of this connection knew (see ``QueueEvents._valid_cache``);
    dropped whenever the connection is closed or the file changes identity."""

    data_version: int
    next_seq: dict[str, int]
    queue_bytes: int
    total_changes: int  # this connection's row changes when the cache was made
    last_id: int | None  # the events' id space's last id (None: not known)
    held: frozenset[tuple[str, bytes]] | None  # the held schemas (None: not read)


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


def _create_v3(conn: sqlite3.Connection) -> None:
    for table in ("drops", "dead_letters"):
        if "producer_id" not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN producer_id TEXT")


def translate(path: Path, exc: sqlite3.DatabaseError) -> QueueError:
    """Only SQLite's plain DatabaseError ("malformed", "not a database") means damage;
    its subclasses are locks, full disks, closed connections and the like."""
    if type(exc) is sqlite3.DatabaseError:
        return QueueCorruptError(f"{path}: queue database error: {exc}")
    return QueueError(f"{path}: {exc}")
