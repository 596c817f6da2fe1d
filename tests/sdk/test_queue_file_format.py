"""The queue file as a format, on real SQLite files: a file of the first release
(format 1) upgraded in place with its undelivered events still shipping, what a new
file holds, the refusals (foreign, newer, damaged, unopenable) word for word, the
connection's settings, a file copied elsewhere, and transactions that fail."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from queue_helpers import FP, TS, A, B, MakeQueue, ev
from sdk_helpers import END_SONG, Sink
from support import SCHEMAS

import spotify_events.queue.store as store_module
from spotify_events import EventClient
from spotify_events.config import ClientConfig
from spotify_events.encoding import EventEncoder
from spotify_events.errors import (
    QueueCorruptError,
    QueueError,
    QueueForeignFileError,
    QueueVersionError,
)
from spotify_events.queue import APPLICATION_ID, FORMAT_VERSION, ROW_OVERHEAD, DurableQueue
from spotify_events.schemas import SchemaRegistry

MakeClient = Callable[..., EventClient]
OtherWriter = Callable[[], sqlite3.Connection]

#: The tables as the first release (format 1) created them, in SQLite's own words
#: (sqlite_master of a file it wrote): no ``holds`` table, and no ``home`` in ``meta``.
#: Written out here, not taken from the package, so the test keeps meaning "a file
#: an old SDK left behind" whatever the package creates today.
FORMAT_1_TABLES = [
    'CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" TEXT)',
    'CREATE TABLE "counters" ("name" TEXT PRIMARY KEY, "value" INTEGER)',
    'CREATE TABLE "sequences" ("event_type" TEXT PRIMARY KEY, "next_seq" INTEGER)',
    "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, "
    "seq INTEGER NOT NULL, fingerprint BLOB NOT NULL, timestamp INTEGER NOT NULL, "
    "payload BLOB NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE drops (id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, "
    "first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL, "
    "reason TEXT NOT NULL, created_at FLOAT)",
    'CREATE TABLE "dead_letters" ("id" INTEGER PRIMARY KEY, "event_type" TEXT, "seq" INTEGER, '
    '"fingerprint" BLOB, "timestamp" INTEGER, "payload" BLOB, "reason" TEXT, "created_at" REAL)',
    'CREATE TABLE "lease" ("name" TEXT PRIMARY KEY, "holder" TEXT, "expires_at" REAL)',
    'CREATE TABLE "incidents" ("id" INTEGER PRIMARY KEY, "kind" TEXT, "detail" TEXT, '
    '"created_at" REAL)',
]

#: What format 2 added: the ``holds`` table.
FORMAT_2_TABLES = [
    *FORMAT_1_TABLES,
    "CREATE TABLE holds (event_type TEXT NOT NULL, fingerprint BLOB NOT NULL, "
    "reason TEXT NOT NULL, since FLOAT NOT NULL, next_try FLOAT NOT NULL, "
    "attempts INTEGER NOT NULL, PRIMARY KEY (event_type, fingerprint))",
]

#: What format 3 added: the producer a drop record counts numbers of, and the one a dead
#: letter's event belongs to (NULL: the file's own).
FORMAT_3_TABLES = [
    *FORMAT_2_TABLES,
    "ALTER TABLE drops ADD COLUMN producer_id TEXT",
    "ALTER TABLE dead_letters ADD COLUMN producer_id TEXT",
]
FORMAT_4_TABLES = [
    *FORMAT_3_TABLES,
    "CREATE TABLE blocks (first_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, "
    "size INTEGER NOT NULL, timestamp INTEGER NOT NULL, summary TEXT NOT NULL, "
    "data BLOB NOT NULL)",
]


def layout(conn: sqlite3.Connection) -> dict[str, object]:
    """Each table's columns (name, declared type, NOT NULL, place in the primary key)
    and whether its ids autoincrement; names and types in one letter case, which
    SQLite ignores."""
    tables = [
        (name, ddl)
        for name, ddl in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
        if name != "sqlite_sequence"
    ]
    return {
        name.lower(): (
            [
                (column.lower(), declared.upper(), notnull, pk)
                for _, column, declared, notnull, _, pk in conn.execute(
                    f'PRAGMA table_info("{name}")'
                )
            ],
            "AUTOINCREMENT" in ddl.upper(),
        )
        for name, ddl in tables
    }


def write_format_1_file(
    path: Path,
    producer: str,
    events: list[tuple[str, int, bytes, bytes]],
    next_seq: dict[str, int],
    drops: tuple[tuple[str, int, int, str], ...] = (),
) -> None:
    """A queue file as the first release left it: ``events`` (type, seq, fingerprint,
    payload) queued, ``drops`` (type, first, last, reason) not yet reported, the next
    number of each type in ``next_seq``, in rollback-journal mode."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for sql in FORMAT_1_TABLES:
            conn.execute(sql)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("producer_id", producer), ("created_at", "1764000000.0")],
        )
        size = sum(len(payload) + ROW_OVERHEAD for _, _, _, payload in events)
        conn.executemany(
            "INSERT INTO counters VALUES (?, ?)", [("bytes", size), ("events", len(events))]
        )
        for event_type, seq, fingerprint, payload in events:
            conn.execute(
                "INSERT INTO events (event_type, seq, fingerprint, timestamp, payload, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (event_type, seq, fingerprint, TS, payload, len(payload) + ROW_OVERHEAD),
            )
        conn.executemany(
            "INSERT INTO drops (event_type, first_seq, last_seq, count, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?, 1764000000.0)",
            [(t, first, last, last - first + 1, reason) for t, first, last, reason in drops],
        )
        conn.executemany("INSERT INTO sequences VALUES (?, ?)", next_seq.items())
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute("PRAGMA user_version=1")
        conn.execute("COMMIT")
    finally:
        conn.close()


def sql(path: Path, query: str) -> list[tuple[object, ...]]:
    """``query`` over a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


# -- a file of the first release -------------------------------------------------------


def test_a_first_release_queue_file_is_upgraded_and_its_undelivered_events_ship(
    sink: Sink, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    schema = SchemaRegistry(str(SCHEMAS)).get("EndSong")
    encoder = EventEncoder(schema)
    full_name = schema.full_name
    old_producer = str(uuid.uuid4())
    queued = [
        (full_name, seq, schema.fingerprint, encoder.encode({**END_SONG, "ms_played": seq}))
        for seq in (1, 2, 3)
    ]
    # 4 and 5 were dropped (the queue was full) and the collector not yet told
    write_format_1_file(
        path,
        old_producer,
        queued,
        next_seq={full_name: 6},
        drops=((full_name, 4, 5, "queue_full"),),
    )

    client = make_client(endpoint=sink.endpoint, queue_path=str(path))
    assert client.producer_id == old_producer  # no copy happened: the file claims its home
    client.log("EndSong", {**END_SONG, "ms_played": 6})
    assert client.flush(timeout=20)

    assert sink.seqs(full_name) == [1, 2, 3, 6]  # the old events once each, then numbering on
    assert {a.batch.producer_id for a in sink.arrivals} == {old_producer}
    notices = [d for a in sink.arrivals for d in a.batch.drops]
    assert [(d.event_type, d.first_seq, d.last_seq, d.reason) for d in notices] == [
        (full_name, 4, 5, "queue_full")
    ]
    assert sql(path, "PRAGMA user_version") == [(FORMAT_VERSION,)]
    assert sql(path, "SELECT count(*) FROM holds") == [(0,)]
    home = json.loads(str(sql(path, "SELECT value FROM meta WHERE key = 'home'")[0][0]))
    assert home["path"] == os.path.realpath(path)
    assert sql(path, "SELECT count(*) FROM incidents") == [(0,)]


def test_a_first_release_file_upgraded_in_place_keeps_every_row_and_numbers_on(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    producer = str(uuid.uuid4())
    write_format_1_file(
        queue_path,
        producer,
        [(A, 1, FP, b"a1"), (B, 1, FP, b"b1"), (A, 2, FP, b"a2")],
        next_seq={A: 5, B: 2},
        drops=((A, 3, 4, "queue_full"),),
    )
    queue = make_queue()
    assert queue.producer_id == producer
    batch = queue.read_batch()
    assert [(e.event_type, e.seq, e.payload) for e in batch] == [
        (A, 1, b"a1"),
        (B, 1, b"b1"),
        (A, 2, b"a2"),
    ]
    assert queue.producer_for(batch) == (producer, {A: 5, B: 2})
    assert [(d.event_type, d.first_seq, d.last_seq) for _, d in queue.unreported_drops()] == [
        (A, 3, 4)
    ]
    assert (queue.depth().events, queue.depth().bytes) == (3, 3 * (2 + ROW_OVERHEAD))
    queue.append([ev(A)])  # A 3 and 4 were dropped in the old file; 5 is the next
    assert [(e.event_type, e.seq) for e in queue.read_batch()][-1] == (A, 5)
    queue.hold([batch[0]], "unknown schema", lambda attempts: 3600.0)  # format 2's table
    assert [h.event_type for h in queue.holds()] == [A]
    assert sql(queue_path, "PRAGMA user_version") == [(4,)]
    assert sql(queue_path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    assert sql(queue_path, "PRAGMA journal_mode") == [("wal",)]


def test_a_new_queue_file_is_marked_as_ours_at_the_current_format(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    assert sql(queue_path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    assert sql(queue_path, "PRAGMA user_version") == [(FORMAT_VERSION,)]
    meta = dict(sql(queue_path, "SELECT key, value FROM meta"))
    assert meta["producer_id"] == queue.producer_id
    assert float(str(meta["created_at"])) > 1.7e9  # when, in seconds since the epoch
    assert json.loads(str(meta["home"])) == {
        "host": socket.gethostname(),
        "path": os.path.realpath(queue_path),
        "inode": queue_path.stat().st_ino,
    }
    assert dict(sql(queue_path, "SELECT name, value FROM counters")) == {"bytes": 0, "events": 0}
    assert sql(queue_path, "SELECT count(*) FROM incidents") == [(0,)]


def test_a_new_queue_file_has_exactly_the_format_4_layout(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """A change to the tables without a new FORMAT_VERSION would let an older SDK
    open a file it cannot use (or a newer one misread an older file)."""
    make_queue().close()
    expected = sqlite3.connect(":memory:")
    for ddl in FORMAT_4_TABLES:
        expected.execute(ddl)
    conn = sqlite3.connect(queue_path)
    try:
        assert layout(conn) == layout(expected)
    finally:
        conn.close()
        expected.close()
    assert FORMAT_VERSION == 4


def test_an_empty_file_becomes_a_queue(make_queue: MakeQueue, queue_path: Path) -> None:
    queue_path.write_bytes(b"")  # touched by a deploy script, say: no tables, nobody's data
    queue = make_queue()
    queue.append([ev()])
    assert [e.seq for e in queue.read_batch()] == [1]


# -- refusals --------------------------------------------------------------------------


def test_a_foreign_sqlite_file_is_refused_in_words_that_say_so(
    make_queue: MakeQueue, tmp_path: Path
) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(QueueForeignFileError) as err:
        make_queue(path)
    assert str(err.value) == (
        f"{path}: is an SQLite database but not a spotify-events queue; refusing to modify it"
    )


def test_a_newer_format_is_refused_with_both_versions_and_the_way_out(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    make_queue().close()
    conn = sqlite3.connect(queue_path)
    conn.execute(f"PRAGMA user_version={FORMAT_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueVersionError) as err:
        make_queue()
    assert str(err.value) == (
        f"{queue_path}: queue format version {FORMAT_VERSION + 1} was written by a newer "
        f"spotify-events (this one reads up to {FORMAT_VERSION}); upgrade the package or "
        "point queue_path elsewhere"
    )


def test_a_file_of_the_current_format_is_not_refused_as_newer(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    first = make_queue()
    first.append([ev()])
    first.close()
    assert [e.seq for e in make_queue().read_batch()] == [1]


def test_a_file_that_is_not_sqlite_is_refused_as_unusable(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue_path.write_bytes(b"not a database " * 100)
    with pytest.raises(QueueCorruptError) as err:
        make_queue()
    assert str(err.value) == (
        f"{queue_path}: not a usable spotify-events queue: file is not a database"
    )


def test_a_file_another_process_keeps_locked_is_an_error_not_damage(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """A locked file must not pass for a damaged one: the client moves a damaged
    file aside and starts afresh, and its events would no longer ship."""
    producer = str(uuid.uuid4())
    write_format_1_file(queue_path, producer, [(A, 1, FP, b"a1")], next_seq={A: 2})
    reader = sqlite3.connect(queue_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # holds a read lock
        with pytest.raises(QueueError) as err:
            make_queue(busy_timeout=0.05)
        assert type(err.value) is QueueError
        assert str(err.value) == f"{queue_path}: cannot open queue: database is locked"
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert sql(queue_path, "PRAGMA user_version") == [(1,)]  # untouched until it can be had
    queue = make_queue()
    assert queue.producer_id == producer
    assert [e.payload for e in queue.read_batch()] == [b"a1"]


def test_verify_finds_damage_that_opening_alone_does_not(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)] * 40)
    queue.close()
    assert DurableQueue(queue_path, verify=True).close() is None  # a healthy file passes
    conn = sqlite3.connect(queue_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(queue_path.read_bytes())
    data[2 * page_size + 1 : 2 * page_size + 3] = b"\xff\xff"  # page 3's first freeblock
    queue_path.write_bytes(bytes(data))
    plain = DurableQueue(queue_path)  # opens: nothing reads page 3 yet
    plain.before_fork()
    plain.after_fork_in_parent()
    assert plain.depth().events == 40  # reopened after a fork, not verified again
    with pytest.raises(QueueCorruptError) as err:
        DurableQueue(queue_path, verify=True)
    assert str(err.value).startswith(f"{queue_path}: queue file is damaged: ")
    assert "Page 3: free space corruption" in str(err.value)
    plain.close()


def test_damage_met_while_reading_is_named_as_damage(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    queue.append([ev(A)] * 40)
    queue.close()
    conn = sqlite3.connect(queue_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE lower(name) = 'events'"
    ).fetchone()
    conn.close()
    data = bytearray(queue_path.read_bytes())
    start = (root - 1) * page_size
    data[start + 3 : start + 5] = b"\xff\xff"  # the events page claims 65535 cells
    queue_path.write_bytes(bytes(data))
    damaged = make_queue()
    with pytest.raises(QueueCorruptError) as err:
        damaged.read_batch()
    assert str(err.value) == (
        f"{queue_path}: queue database error: database disk image is malformed"
    )


# -- the connection --------------------------------------------------------------------


@pytest.mark.parametrize(("fsync", "level"), [(True, 2), (False, 1)])  # FULL, NORMAL
def test_the_connection_syncs_as_configured_and_leaves_lock_waits_to_the_queue(
    make_queue: MakeQueue, fsync: bool, level: int
) -> None:
    queue = make_queue(fsync=fsync, busy_timeout=2.5)
    assert queue._read("PRAGMA synchronous") == [(level,)]
    assert queue.settings.fsync is fsync
    assert queue._read("PRAGMA busy_timeout") == [(0,)]  # SQLite's own sleeps never run
    assert queue.busy_timeout == 2.5


class LockClock:
    """The queue module's clock while another connection holds the write lock: each
    pause moves monotonic time on by its length, and ``on_pause`` acts in it (another
    process committing, close() cutting the wait)."""

    def __init__(self, on_pause: Callable[[int], None]) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []
        self.on_pause = on_pause

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(monotonic=lambda: self.now, time=time.time, sleep=self.sleep)

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        self.on_pause(len(self.pauses))


@pytest.fixture
def other_writer(queue_path: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Another connection to the (existing) queue file, taking its write lock."""
    conns: list[sqlite3.Connection] = []

    def take() -> sqlite3.Connection:
        conns.append(sqlite3.connect(queue_path, isolation_level=None))
        conns[-1].execute("BEGIN IMMEDIATE")
        return conns[-1]

    yield take
    for conn in conns:
        conn.close()


def test_a_write_waits_in_short_pauses_for_another_connections_lock(
    make_queue: MakeQueue, other_writer: OtherWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's busy handler would sleep 1 ms at least: a lock held for a fraction of
    that (a group commit, an acknowledgement) cost the waiter a millisecond each time."""
    queue = make_queue(busy_timeout=30.0)
    lock = other_writer()
    clock = LockClock(lambda n: lock.execute("COMMIT") if n == 7 else None)
    monkeypatch.setattr(store_module, "time", clock.module())
    queue.append([ev()])
    assert clock.pauses == [0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.002, 0.002]
    assert queue.depth().events == 1


def test_a_write_gives_up_once_its_busy_timeout_has_passed(
    make_queue: MakeQueue, other_writer: OtherWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(busy_timeout=0.05)
    other_writer()
    clock = LockClock(lambda n: None)
    monkeypatch.setattr(store_module, "time", clock.module())
    with pytest.raises(QueueError, match=r"database is locked$"):
        queue.append([ev()])
    assert 0.05 <= sum(clock.pauses) < 0.05 + 0.002
    assert queue.depth().events == 0


def test_a_cut_of_the_busy_timeout_ends_a_wait_already_under_way(
    make_queue: MakeQueue, other_writer: OtherWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() cuts the wait from another thread while the writer thread is in it: the
    wait ends at the cut's time plus the new timeout, not at its own start plus the old one."""
    queue = make_queue(busy_timeout=3600.0)
    other_writer()
    cut_at: list[float] = []

    def cut(n: int) -> None:
        if n == 10:
            cut_at.append(clock.now)
            queue.set_busy_timeout(0.01)

    clock = LockClock(cut)
    monkeypatch.setattr(store_module, "time", clock.module())
    with pytest.raises(QueueError, match=r"database is locked$"):
        queue.append([ev()])
    assert cut_at[0] + 0.01 <= clock.now < cut_at[0] + 0.01 + 0.002


def test_a_closed_queue_says_so_and_stays_closed(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    assert queue.stop(timeout=1.0) is True
    with pytest.raises(QueueError) as err:
        queue.depth()
    assert str(err.value) == f"{queue_path}: queue is closed"
    queue.close()  # twice is fine


def test_after_a_fork_the_connection_reopens_on_first_use(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev()])
    before = queue._conn
    assert before is not None
    queue.before_fork()
    assert queue._conn is None and queue._cache is None  # nothing open across the fork
    with pytest.raises(sqlite3.ProgrammingError):
        before.execute("SELECT 1")  # closed, not merely put aside
    queue.after_fork_in_parent()
    queue.append([ev()])
    assert [e.seq for e in queue.read_batch()] == [1, 2]
    queue.before_fork()
    queue.after_fork_in_child()  # the child's lock is a new one: the parent's is still held
    assert queue._lock.acquire(blocking=False)
    queue._lock.release()
    queue.append([ev()])
    assert [e.seq for e in queue.read_batch()] == [1, 2, 3]


def test_repr_names_the_file_and_the_producer(make_queue: MakeQueue, queue_path: Path) -> None:
    queue = make_queue()
    assert repr(queue) == f"<DurableQueue {queue_path} producer={queue.producer_id}>"


# -- a file that finds itself elsewhere ------------------------------------------------


def test_a_copy_reopened_keeps_its_new_producer_and_still_ships_the_old_events_as_old(
    make_queue: MakeQueue, queue_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = make_queue()
    original.append([ev(A), ev(A), ev(B)])
    old = original.producer_id
    original.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(queue_path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="spotify_events.queue"):
        clone = make_queue(copy)
    new = clone.producer_id
    assert new != old and str(uuid.UUID(new)) == new
    home = json.dumps(
        {"host": socket.gethostname(), "path": os.path.realpath(copy), "inode": copy.stat().st_ino}
    )
    was = json.dumps(
        {
            "host": socket.gethostname(),
            "path": os.path.realpath(queue_path),
            "inode": queue_path.stat().st_ino,
        }
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"spotify-events: queue file {copy} was copied or moved (it lived at {was}); events "
        f"logged from now on use a new producer id {new}, so the copies never clash at the "
        "collector"
    ]
    (incident,) = [i for _, i in clone.unreported_incidents()]
    assert incident["kind"] == "queue_file_copied"
    assert incident["detail"] == (
        f"queue file found elsewhere (was {was}, now {home}): producer {old} continues as "
        f"{new}; events queued before (ids up to 3) keep {old}"
    )
    clone.append([ev(A)])
    clone.close()

    reopened = make_queue(copy)  # at home now: no second new producer, no second incident
    assert reopened.producer_id == new
    assert len(reopened.unreported_incidents()) == 1
    old_events = reopened.read_batch()
    assert [(e.event_type, e.seq) for e in old_events] == [(A, 1), (A, 2), (B, 1)]
    assert reopened.producer_for(old_events) == (old, {A: 3, B: 2})
    reopened.ack(old_events[0].id, old_events[-1].id)
    new_events = reopened.read_batch()
    assert [(e.event_type, e.seq) for e in new_events] == [(A, 1)]  # the new producer's first
    assert reopened.producer_for(new_events) == (new, {A: 2})


def test_an_inspection_of_a_copy_changes_nothing_in_it(
    queue_path: Path, make_queue: MakeQueue, tmp_path: Path
) -> None:
    original = make_queue()
    original.append([ev(A)])
    old = original.producer_id
    original.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(queue_path.read_bytes())
    meta_before = sql(copy, "SELECT key, value FROM meta ORDER BY key")
    looker = DurableQueue(copy, claim_home=False)
    assert looker.producer_id == old
    assert looker.producer_for(looker.read_batch()) == (old, {A: 2})
    looker.close()
    assert sql(copy, "SELECT key, value FROM meta ORDER BY key") == meta_before
    assert sql(copy, "SELECT count(*) FROM incidents") == [(0,)]


def test_a_file_without_its_producer_id_is_refused_by_name(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    make_queue().close()
    conn = sqlite3.connect(queue_path)
    conn.execute("DELETE FROM meta WHERE key = 'producer_id'")
    conn.commit()
    conn.close()
    with pytest.raises(QueueCorruptError) as err:
        DurableQueue(queue_path, claim_home=False)
    assert str(err.value) == f"{queue_path}: queue metadata 'producer_id' is missing"


# -- transactions ----------------------------------------------------------------------


def test_a_transaction_that_raises_leaves_nothing_and_lets_go_of_the_lock(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue()
    with pytest.raises(RuntimeError), queue.atomic() as conn:
        conn.execute("INSERT INTO incidents (kind, detail) VALUES ('k', 'd')")
        raise RuntimeError("half-way")
    assert sql(queue_path, "SELECT count(*) FROM incidents") == [(0,)]
    other = make_queue()
    other.append([ev()])  # the write lock is free again, and so is the instance's own lock
    queue.append([ev()])
    assert [e.seq for e in queue.read_batch()] == [1, 2]


def test_a_commit_that_fails_is_rolled_back_and_named(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """A deferred constraint fails at COMMIT itself: the transaction must not stay open."""
    queue = make_queue()
    with queue.atomic() as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    queue._read("PRAGMA foreign_keys=ON")
    with pytest.raises(QueueError) as err, queue.atomic() as conn:
        conn.execute("INSERT INTO child VALUES (7)")
    assert type(err.value) is QueueError  # a constraint, not damage
    assert str(err.value) == f"{queue_path}: FOREIGN KEY constraint failed"
    assert queue._read("SELECT count(*) FROM child") == [(0,)]
    queue.append([ev()])  # neither the transaction nor the lock was left behind
    assert make_queue().depth().events == 1


def test_a_transaction_that_cannot_begin_lets_go_of_the_lock(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    queue = make_queue(busy_timeout=0.05)
    holder = sqlite3.connect(queue_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(QueueError) as err, queue.atomic():
            pass
        assert str(err.value) == f"{queue_path}: database is locked"
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert queue._lock.acquire(blocking=False)  # not left held by the failed attempt
    queue._lock.release()
    queue.append([ev()])
    assert queue.depth().events == 1


def test_only_sqlites_plain_database_error_means_damage(tmp_path: Path) -> None:
    from spotify_events.queue.store import translate

    damage = translate(tmp_path, sqlite3.DatabaseError("database disk image is malformed"))
    assert type(damage) is QueueCorruptError
    assert str(damage) == f"{tmp_path}: queue database error: database disk image is malformed"
    for exc in (sqlite3.OperationalError("disk I/O error"), sqlite3.IntegrityError("x")):
        other = translate(tmp_path, exc)
        assert type(other) is QueueError
        assert str(other) == f"{tmp_path}: {exc}"


def test_a_queue_opened_in_one_thread_is_used_from_another(make_queue: MakeQueue) -> None:
    """The client opens its queues in the caller's thread; its writer and shipper
    threads use them."""
    queue = make_queue()
    errors: list[BaseException] = []

    def use() -> None:
        try:
            queue.append([ev()])
            queue.read_batch()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=use)
    worker.start()
    worker.join(timeout=10)
    assert errors == []
    assert queue.depth().events == 1


def test_an_inspection_opens_a_queue_while_a_writer_holds_the_write_lock(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    make_queue().append([ev()])
    writer = sqlite3.connect(queue_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process mid-commit, for a long while
        settings = replace(ClientConfig().queue_settings(), busy_timeout=0.05)
        looker = DurableQueue(queue_path, settings, claim_home=False)
        assert looker.depth().events == 1
        looker.close()
        writer.execute("ROLLBACK")
    finally:
        writer.close()


@pytest.mark.parametrize("released", [True, False], ids=["released", "held-throughout"])
def test_switching_an_old_file_to_wal_waits_while_another_process_writes(
    make_queue: MakeQueue, queue_path: Path, monkeypatch: pytest.MonkeyPatch, released: bool
) -> None:
    """Leaving the rollback journal needs the file to itself, and SQLite answers "locked"
    at once, without waiting, while another connection holds the write lock; the
    queue retries until that connection lets go, or gives up at busy_timeout."""
    producer = str(uuid.uuid4())
    write_format_1_file(queue_path, producer, [(A, 1, FP, b"a1")], next_seq={A: 2})
    writer = sqlite3.connect(queue_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    pauses: list[float] = []
    if released:

        def pause(seconds: float) -> None:  # the other process commits while we pause
            pauses.append(seconds)
            if writer.in_transaction:
                writer.execute("COMMIT")

        # only the queue's module sees the new pause; time.sleep stays as it is elsewhere
        clock = types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=pause)
        monkeypatch.setattr(store_module, "time", clock)
    try:
        if released:
            queue = make_queue(busy_timeout=30.0)
            assert len(pauses) == 1 and 0 < pauses[0] <= 0.01
            assert queue.producer_id == producer
            assert [e.payload for e in queue.read_batch()] == [b"a1"]
            assert sql(queue_path, "PRAGMA journal_mode") == [("wal",)]
        else:
            with pytest.raises(QueueError) as err:
                make_queue(busy_timeout=0.05)
            assert type(err.value) is QueueError
            assert str(err.value) == f"{queue_path}: cannot open queue: database is locked"
            assert sql(queue_path, "PRAGMA user_version") == [(1,)]
    finally:
        writer.close()


def test_a_migration_that_fails_changes_nothing_and_says_why(
    make_queue: MakeQueue, queue_path: Path
) -> None:
    """A file marked as ours but at version 0 with a table already there (say, a
    creation that some other tool interfered with): creating the layout fails, and
    the whole migration is rolled back."""
    conn = sqlite3.connect(queue_path)
    conn.execute("CREATE TABLE incidents (id INTEGER PRIMARY KEY)")  # the last one created
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.commit()
    conn.close()
    with pytest.raises(QueueError) as err:
        make_queue()
    assert type(err.value) is QueueError
    # (SQLite names the table as the statement spelt it, in whatever letter case)
    assert str(err.value).lower() == (
        f'{queue_path}: cannot open queue: table "incidents" already exists'.lower()
    )
    tables = [name for (name,) in sql(queue_path, "SELECT name FROM sqlite_master")]
    assert tables == ["incidents"]  # meta, events and the rest created before it: gone
    assert sql(queue_path, "PRAGMA user_version") == [(0,)]


def test_a_path_sqlite_cannot_open_is_a_queue_error_naming_it(
    make_queue: MakeQueue, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    path.symlink_to(tmp_path / "gone" / "events.db")  # a link into a directory that is not there
    with pytest.raises(QueueError) as err:
        make_queue(path)
    assert str(err.value) == f"{path}: cannot open queue: unable to open database file"
