"""Route (d) prototype: the ``commit`` level with derived counters, against format 2.

    python benchmarks/commit_format3.py [--events 20000] [--rounds 5] [--batch 500]

One thread commits one event per transaction, as a lone ``log()`` at ``durability="commit"``
does; every ``--batch`` commits a second connection on the same file acknowledges
(deletes) the oldest ``--batch`` events, as the shipper does, which also makes the
committing connection's cached sequence numbers and byte count stale (another
connection wrote). Per commit: wall time (p50 and mean) and the committing thread's CPU;
per acknowledgement: the acknowledging thread's CPU. Paths, each on a fresh file:

* **append**: today's ``DurableQueue.append([event])`` and ``DurableQueue.ack``.
* **format2**: the prototype's own Python (:class:`Prototype`) on today's layout:
  each commit also writes ``sequences`` and ``counters``, 4 pages (the events leaf,
  ``sqlite_sequence``, ``sequences``, ``counters``). Against **append** it shows what
  the Python around the statements costs; against the next two, what the layout does.
* **derived**: the same Python on a layout without per-commit bookkeeping: a commit
  writes only its ``events`` row (2 pages with ``sqlite_sequence``). The next sequence
  number per type and the queue's bytes are derived when the cache is stale: from the
  events still queued (``max(seq)``, ``total(size)``) and from ``marks``, which an
  AFTER DELETE trigger on ``events`` raises to the deleted row's ``seq + 1``, so
  numbers stay unique when every event of a type has left the queue. Acknowledging
  pays the trigger, once per deleted row.
* **derived_rowid**: as **derived** with ``id INTEGER PRIMARY KEY`` instead of
  AUTOINCREMENT: 1 page per commit. Not sound as it stands: SQLite then gives the
  next row ``max(id) + 1``, so once the queue empties ids are reused, and an
  acknowledgement read earlier could delete newer events. A format 3 would need its
  own high-water id (kept by the delete trigger, the same way as ``marks``).

Drop records, legacy (copied-file) ids, holds and eviction are not modelled: they do
not run on the path measured, but a format 3 must derive through them too (see
RESULTS.md, "Route (d)"). Before timing, each path's events are checked: every
sequence number 1..n exactly once. Rounds run the paths in a rotated order; medians
over rounds are printed and every value goes to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spotify_events.config import ClientConfig
from spotify_events.queue import ROW_OVERHEAD, DurableQueue, PendingRow

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("append", "format2", "derived", "derived_rowid")
EVENT: PendingRow = ("bench.EndSong", b"\x01" * 8, 1_763_158_400_000, b"x" * 90)

_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY{autoincrement}, event_type TEXT NOT NULL,
    seq INTEGER NOT NULL, fingerprint BLOB NOT NULL, timestamp INTEGER NOT NULL,
    payload BLOB NOT NULL, size INTEGER NOT NULL);
CREATE TABLE sequences (event_type TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('bytes', 0), ('events', 0);
CREATE TABLE marks (event_type TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
"""
_MARK_TRIGGER = """
CREATE TRIGGER events_marks AFTER DELETE ON events BEGIN
    INSERT INTO marks (event_type, next_seq) VALUES (old.event_type, old.seq + 1)
    ON CONFLICT (event_type) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq);
END;
"""
_INSERT = (
    "INSERT INTO events (event_type, seq, fingerprint, timestamp, payload, size) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class Prototype:
    """One connection committing one event per transaction, its next sequence numbers
    and byte count cached while no other connection writes (``PRAGMA data_version``),
    as ``QueueEvents.append`` caches them. ``bookkeeping``: write ``sequences`` and
    ``counters`` in every commit (format 2) instead of deriving them when stale."""

    def __init__(self, path: Path, *, bookkeeping: bool, autoincrement: bool) -> None:
        self.bookkeeping = bookkeeping
        self.conn = _connect(path)
        self.conn.executescript(
            _SCHEMA.format(autoincrement=" AUTOINCREMENT" if autoincrement else "")
            + ("" if bookkeeping else _MARK_TRIGGER)
        )
        self.cursor = self.conn.cursor()
        self.cache: tuple[int, int, dict[str, int], int] | None = (
            None  # version, changes, seqs, bytes
        )
        self.derivations = 0

    def append(self, event: PendingRow) -> None:
        conn, cursor = self.conn, self.cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            version = cursor.execute("PRAGMA data_version").fetchone()[0]
            cache = self.cache
            if cache is None or cache[0] != version or cache[1] != conn.total_changes:
                next_seq, queue_bytes = self._derive(cursor)
            else:
                next_seq, queue_bytes = cache[2], cache[3]
            event_type = event[0]
            seq = next_seq.get(event_type, 1)
            size = len(event[3]) + ROW_OVERHEAD
            cursor.execute(_INSERT, (event_type, seq, event[1], event[2], event[3], size))
            if self.bookkeeping:
                cursor.execute(
                    "INSERT INTO sequences (event_type, next_seq) VALUES (?, ?) "
                    "ON CONFLICT(event_type) DO UPDATE SET next_seq = excluded.next_seq",
                    (event_type, seq + 1),
                )
                cursor.execute(
                    "UPDATE counters SET value = value + (CASE name WHEN 'bytes' THEN ? ELSE ? END)",
                    (size, 1),
                )
            cursor.execute("COMMIT")
        except BaseException:
            self.cache = None
            if conn.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        next_seq[event_type] = seq + 1
        self.cache = (version, conn.total_changes, next_seq, queue_bytes + size)

    def _derive(self, cursor: sqlite3.Cursor) -> tuple[dict[str, int], int]:
        self.derivations += 1
        if self.bookkeeping:
            seqs = dict(cursor.execute("SELECT event_type, next_seq FROM sequences").fetchall())
            queue_bytes = cursor.execute(
                "SELECT value FROM counters WHERE name = 'bytes'"
            ).fetchone()[0]
            return seqs, int(queue_bytes)
        seqs = dict(cursor.execute("SELECT event_type, next_seq FROM marks").fetchall())
        for event_type, top in cursor.execute(
            "SELECT event_type, max(seq) FROM events GROUP BY event_type"
        ).fetchall():
            seqs[event_type] = max(seqs.get(event_type, 1), top + 1)
        queue_bytes = cursor.execute("SELECT total(size) FROM events").fetchone()[0]
        return seqs, int(queue_bytes)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _ack_oldest(conn: sqlite3.Connection, n: int, bookkeeping: bool) -> None:
    """The shipper's acknowledgement of the ``n`` oldest events, on its own connection."""
    conn.execute("BEGIN IMMEDIATE")
    first, last, count, size = conn.execute(
        "SELECT min(id), max(id), count(*), total(size) FROM "
        "(SELECT id, size FROM events ORDER BY id LIMIT ?)",
        (n,),
    ).fetchone()
    if count:
        conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (first, last))
        if bookkeeping:
            conn.execute(
                "UPDATE counters SET value = value - (CASE name WHEN 'bytes' THEN ? ELSE ? END)",
                (int(size), count),
            )
    conn.execute("COMMIT")


def check_emptied_queue(workdir: Path) -> None:
    """The derived layouts keep numbering from where they were when the queue empties
    (``marks``), also after another connection's delete made the cache stale."""
    for name in ("derived", "derived_rowid"):
        proto = Prototype(
            workdir / f"check-{name}.db", bookkeeping=False, autoincrement=name == "derived"
        )
        other = _connect(workdir / f"check-{name}.db")
        for _ in range(3):
            proto.append(EVENT)
        _ack_oldest(other, 3, False)
        proto.append(EVENT)
        (seq,) = proto.conn.execute("SELECT seq FROM events").fetchone()
        if seq != 4 or proto.derivations != 2:
            raise SystemExit(f"{name}: after the queue emptied the next number was {seq}, not 4")
        proto.conn.close()
        other.close()


def run_path(name: str, workdir: Path, events: int, batch: int) -> dict[str, Any]:
    path = workdir / f"{name}.db"
    commit: Callable[[], object]
    ack: Callable[[], object]
    if name == "append":
        settings = ClientConfig().queue_settings()
        queue, shipper = DurableQueue(path, settings), DurableQueue(path, settings)

        def commit() -> object:
            return queue.append([EVENT])

        def ack() -> object:
            ((first, last),) = shipper._read(
                "SELECT min(id), max(id) FROM (SELECT id FROM events ORDER BY id LIMIT ?)",
                (batch,),
            )
            return shipper.ack(first, last)

        seqs: Callable[[], list[int]] = lambda: [  # noqa: E731
            s for (s,) in queue._read("SELECT seq FROM events ORDER BY id")
        ]
        closers: list[Callable[[], None]] = [queue.close, shipper.close]
    else:
        proto = Prototype(
            path, bookkeeping=name == "format2", autoincrement=name != "derived_rowid"
        )
        other = _connect(path)
        commit = lambda: proto.append(EVENT)  # noqa: E731
        ack = lambda: _ack_oldest(other, batch, proto.bookkeeping)  # noqa: E731
        seqs = lambda: [  # noqa: E731
            s for (s,) in proto.conn.execute("SELECT seq FROM events ORDER BY id")
        ]
        closers = [proto.conn.close, other.close]
    walls: list[int] = []
    commit_cpu = ack_cpu = 0.0
    acks = 0
    clock = time.perf_counter_ns
    # The queue starts a batch deep, as a shipper that keeps up leaves it.
    for _ in range(batch):
        commit()
    for i in range(1, events + 1):
        t0, c0 = clock(), time.thread_time()
        commit()
        commit_cpu += time.thread_time() - c0
        walls.append(clock() - t0)
        if i % batch == 0:
            c0 = time.thread_time()
            ack()
            ack_cpu += time.thread_time() - c0
            acks += 1
    numbers = seqs()
    first = numbers[0]
    if numbers != list(range(first, first + len(numbers))) or first + len(numbers) - 1 != (
        events + batch
    ):
        raise SystemExit(f"{name}: sequence numbers are not 1..{events + batch} in order")
    for close in closers:
        close()
    walls.sort()
    return {
        "p50_us": walls[len(walls) // 2] / 1000,
        "p99_us": walls[len(walls) * 99 // 100] / 1000,
        "mean_us": sum(walls) / len(walls) / 1000,
        "commit_cpu_us": commit_cpu / events * 1e6,
        "ack_cpu_us_per_event": ack_cpu / (acks * batch) * 1e6 if acks else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="commits per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="events per acknowledgement")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "commit_format3.json"
    )
    args = parser.parse_args()
    rounds: list[dict[str, dict[str, Any]]] = []
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="commit-format3-") as tmp:
        check_emptied_queue(Path(tmp))
    for r in range(args.rounds):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
        with tempfile.TemporaryDirectory(prefix="commit-format3-") as tmp:
            rounds.append(
                {name: run_path(name, Path(tmp), args.events, args.batch) for name in order}
            )
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{args.events:,} commits a path and round, an acknowledgement of {args.batch} every "
        f"{args.batch} commits; medians of {args.rounds} rounds (load {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{'path':<14} {'p50 µs':>7} {'mean µs':>8} {'p99 µs':>7} {'commit CPU µs':>14} "
        f"{'ack CPU µs/event':>17}"
    )
    for name in PATHS:

        def med(key: str, name: str = name) -> float:
            return statistics.median(r[name][key] for r in rounds)

        print(
            f"{name:<14} {med('p50_us'):>7.1f} {med('mean_us'):>8.1f} {med('p99_us'):>7.1f} "
            f"{med('commit_cpu_us'):>14.1f} {med('ack_cpu_us_per_event'):>17.2f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "rounds": rounds,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
