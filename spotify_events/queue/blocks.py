"""Blocks: a commit group's events stored as one row of encoded envelopes.

The writer's group commit numbers its events, encodes their envelopes once
(:func:`~spotify_events.wire.write_envelopes`) and stores them back to back as one
``blocks`` row; the shipper joins block bytes into a container without decoding
or re-encoding a record, and an acknowledgement deletes a few rows. Per event, the
read, the batch encode and the acknowledgement nearly vanish (benchmarks/RESULTS.md,
"Route (a)").

A block takes the ids ``first_id..last_id`` from the events' id space (AUTOINCREMENT's
``sqlite_sequence``), so every id-based rule keeps its meaning for blocks and rows
alike: flush's ``has_events_through``, ``max_event_id``, a prefetcher's ``after_id``,
a copied file's legacy ranges (a block never straddles one: a copy is noticed between
two commits). ``timestamp`` is its first event's (what ``depth()`` reports of the
queue's head, as of a row). Its ``summary`` holds, per event type, the count, the oldest timestamp,
the schema fingerprints and the sequence numbers as runs (a ``newest`` refusal leaves
a hole inside a group). ``size`` is what the events would be charged as rows, so the
``counters`` need no change when a block becomes rows.

Every rare path first **explodes** the blocks it touches into ordinary ``events`` rows
(same ids, same sequence numbers; :func:`explode`) inside its own transaction, then
runs the row code: a partial acknowledgement (413 split, 400 bisection, held events
kept), dead letters, holds, ``oldest`` eviction. One invariant keeps holds and drop
notices exact: no block holds an event of a held schema (:func:`explode_schemas` when a
hold is made; the writer stores rows while a group holds a held schema).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from itertools import accumulate
from typing import Any, NamedTuple, overload

from ..wire import EnvelopeFields, read_envelopes, write_envelopes
from .rows import ROW_OVERHEAD, QueuedEvent, bump_counters, insert_drops, insert_incident, runs

logger = logging.getLogger("spotify_events.queue")

#: Fewest events stored as a block: one event alone (the ``commit`` durability level, one
#: event per transaction) stays a row.
BLOCK_MIN_EVENTS = 2
#: Most events in one block: a batch holds whole blocks, so this is also the step in
#: which a shipping batch fills up (5 blocks make the default 5,000-event batch).
BLOCK_MAX_EVENTS = 1000
#: Most bytes (as charged: payload plus ``ROW_OVERHEAD``) in one block, a container block's worth.
BLOCK_MAX_BYTES = 1 << 20
#: Drop reason of the events of a block whose bytes no longer read back (the file was
#: damaged on disk; SQLite keeps no checksum of a value): its summary names their numbers.
DROP_BLOCK_UNREADABLE = "queue_block_unreadable"
#: What inspection names the events of a block whose summary and bytes both no longer
#: read back: their types are not known.
UNREADABLE_BLOCK = "(unreadable block)"

#: The earlier producer of a copied file that an event id belongs to (None: the file's own).
ProducerOf = Callable[[int], "str | None"]

_INSERT_BLOCK = (
    "INSERT INTO blocks (first_id, last_id, size, timestamp, summary, data) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def create_blocks_table(conn: sqlite3.Connection) -> None:
    """Format 4's table (``data`` last: reads of the other columns skip its pages)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS blocks (first_id INTEGER PRIMARY KEY, "
        "last_id INTEGER NOT NULL, size INTEGER NOT NULL, timestamp INTEGER NOT NULL, "
        "summary TEXT NOT NULL, data BLOB NOT NULL)"
    )


class Block(NamedTuple):
    """A stored block as a read gives it: ids, charged size, per-type summary, envelope bytes."""

    first_id: int
    last_id: int
    size: int
    summary: str
    data: bytes

    @property
    def event_count(self) -> int:
        """How many events it holds (its ids are contiguous)."""
        return self.last_id - self.first_id + 1

    def events(self) -> list[QueuedEvent]:
        """Its events as rows would hold them. ValueError when its bytes do not read
        back as exactly its ids' worth of envelopes (the file damaged on disk: rows
        would take the next block's ids, or events numbers that are not theirs)."""
        envelopes = read_envelopes(self.data)
        if len(envelopes) != self.event_count:
            raise ValueError(f"{len(envelopes)} envelopes in a block of {self.event_count} ids")
        first = self.first_id
        return [
            QueuedEvent(first + i, event_type, seq, fingerprint, timestamp, payload)
            for i, (seq, event_type, fingerprint, timestamp, payload) in enumerate(envelopes)
        ]

    def schemas(self) -> set[tuple[str, bytes]]:
        """(event type, fingerprint) of its events, from its summary (ValueError when
        the summary does not read back: the file damaged on disk)."""
        try:
            return {
                (event_type, bytes.fromhex(fp))
                for event_type, info in json.loads(self.summary).items()
                for fp in info["fingerprints"]
            }
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"unreadable block summary: {exc!r}") from exc


def store_blocks(
    cursor: sqlite3.Cursor,
    envelopes: list[EnvelopeFields],
    sizes: list[int],
    last_id: int | None = None,
) -> int:
    """Insert numbered ``envelopes`` (with their charged ``sizes``) as blocks of at most
    :data:`BLOCK_MAX_EVENTS` events and :data:`BLOCK_MAX_BYTES`, taking their ids from
    the events' id space (``last_id``: its last id, when the caller knows it still is).
    Inside the caller's transaction; every envelope is encoded before anything is
    written, so a ValueError (an envelope no reader could read) leaves the transaction
    as it was. Returns the id space's new last id."""
    n = len(envelopes)
    ends = list(accumulate(sizes))
    chunks: list[tuple[int, int, int, int, str, bytes]] = []  # ids relative to the first
    start = 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = max(
            start + 1, min(start + BLOCK_MAX_EVENTS, bisect_right(ends, base + BLOCK_MAX_BYTES))
        )
        chunk = envelopes[start:stop]
        data = b"".join([d for _, d in write_envelopes(chunk)])
        chunks.append(
            (
                start,
                stop - 1,
                ends[stop - 1] - base,
                chunk[0][3],
                _summary(chunk),
                data,
            )
        )
        start = stop
    if last_id is None:
        row = cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        last_id = row[0] if row else 0
    first_id = last_id + 1
    # an upsert: the row exists once anything took an id
    cursor.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'events', ? WHERE NOT EXISTS "
        "(SELECT 1 FROM sqlite_sequence WHERE name = 'events')",
        (first_id + n - 1,),
    )
    cursor.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (first_id + n - 1,))
    for first, last, size, oldest, summary, data in chunks:
        cursor.execute(
            _INSERT_BLOCK, (first_id + first, first_id + last, size, oldest, summary, data)
        )
    return first_id + n - 1


def _summary(chunk: list[EnvelopeFields]) -> str:
    """Per event type: count, oldest timestamp, fingerprints (hex), sequence runs."""
    by_type: dict[str, list[EnvelopeFields]] = {}
    if len({e[1] for e in chunk}) == 1:
        by_type[chunk[0][1]] = chunk
    else:
        for envelope in chunk:
            by_type.setdefault(envelope[1], []).append(envelope)
    out: dict[str, Any] = {}
    for event_type, envelopes in by_type.items():
        first, last = envelopes[0][0], envelopes[-1][0]
        out[event_type] = {
            "count": len(envelopes),
            "oldest": min([e[3] for e in envelopes]),
            "fingerprints": sorted({e[2].hex() for e in envelopes}),
            "runs": [[first, last]]
            if last - first + 1 == len(envelopes)
            else [list(r) for r in runs([e[0] for e in envelopes])],
        }
    return json.dumps(out, separators=(",", ":"))


def insert_numbered_rows(conn: sqlite3.Connection, events: Iterable[QueuedEvent]) -> None:
    conn.executemany(
        "INSERT INTO events (id, event_type, seq, fingerprint, timestamp, payload, size) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(*e, len(e.payload) + ROW_OVERHEAD) for e in events],
    )


def explode(
    conn: sqlite3.Connection, first_id: int, last_id: int, producer_of: ProducerOf
) -> tuple[int, int]:
    """Rewrite every block holding an id in ``[first_id, last_id]`` as ``events`` rows
    with the same ids and sequence numbers (the counters stay: a block is charged as
    its rows). Inside the caller's transaction, so a crash leaves either the block or
    its rows. A block whose bytes no longer read back is deleted instead and its
    numbers recorded as dropped (:func:`drop_unreadable`): kept, it would stop every
    path that explodes it, and the shipping of everything behind it, for good.
    Returns (events, bytes) so dropped."""
    blocks = conn.execute(
        "SELECT first_id, last_id, size, summary, data FROM blocks "
        "WHERE first_id <= ? AND last_id >= ?",
        (last_id, first_id),
    ).fetchall()
    lost = lost_bytes = 0
    for row in blocks:
        block = Block(*row)
        try:
            events = block.events()
        except ValueError as exc:
            drop_unreadable(conn, block, producer_of(block.first_id), exc)
            lost, lost_bytes = lost + block.event_count, lost_bytes + block.size
        else:
            insert_numbered_rows(conn, events)
        conn.execute("DELETE FROM blocks WHERE first_id = ?", (row[0],))
    return lost, lost_bytes


def drop_unreadable(
    conn: sqlite3.Connection, block: Block, producer: str | None, error: ValueError
) -> None:
    """Account for a block that is about to be deleted because its bytes do not read
    back: its numbers as drop records (its summary, stored apart from the bytes, holds
    them per type), an incident naming its ids, the counters lowered by its charge."""
    try:
        summary = json.loads(block.summary)
        ranges = [
            (event_type, first, last, last - first + 1)
            for event_type, info in summary.items()
            for first, last in info["runs"]
        ]
    except (ValueError, TypeError, KeyError):  # its summary damaged too: the incident tells
        ranges = []
    now = time.time()
    insert_drops(
        conn,
        [(t, first, last, n, DROP_BLOCK_UNREADABLE, now, producer) for t, first, last, n in ranges],
    )
    detail = (
        f"queue block of ids {block.first_id}..{block.last_id} ({block.event_count} events) "
        f"does not read back ({error}); its numbers are reported dropped"
    )
    insert_incident(conn, DROP_BLOCK_UNREADABLE, detail)
    bump_counters(conn, -block.size, -block.event_count)
    logger.error("spotify-events: %s", detail)


def explode_schemas(
    conn: sqlite3.Connection, keys: AbstractSet[tuple[str, bytes]], producer_of: ProducerOf
) -> int:
    """Explode every block holding an event of one of the schemas ``keys`` (type,
    fingerprint): a hold keeps such events as rows, which reads skip until its next try."""
    if not keys:
        return 0
    victims = [
        (first_id, last_id)
        for first_id, last_id, summary in conn.execute(
            "SELECT first_id, last_id, summary FROM blocks"
        ).fetchall()
        if _may_hold(Block(first_id, last_id, 0, summary, b""), keys)
    ]
    for first_id, last_id in victims:
        explode(conn, first_id, last_id, producer_of)
    return len(victims)


def _may_hold(block: Block, keys: AbstractSet[tuple[str, bytes]]) -> bool:
    """Whether ``block`` may hold an event of one of the schemas ``keys``: yes when its
    summary does not say (exploded, its events name their schemas as rows)."""
    try:
        return not keys.isdisjoint(block.schemas())
    except ValueError:
        return True


def delete_range(
    conn: sqlite3.Connection, first_id: int, last_id: int, producer_of: ProducerOf
) -> int:
    """Delete the events with ids in ``[first_id, last_id]``, blocks and rows, keeping
    the counters right. A block the range cuts is exploded first and loses only its
    rows inside the range."""
    for block_first, block_last in conn.execute(
        "SELECT first_id, last_id FROM blocks WHERE (first_id < ? AND last_id >= ?) "
        "OR (first_id <= ? AND last_id > ?)",
        (first_id, first_id, last_id, last_id),
    ).fetchall():
        explode(conn, block_first, block_last, producer_of)
    in_blocks, block_bytes = conn.execute(
        "SELECT coalesce(sum(last_id - first_id + 1), 0), coalesce(sum(size), 0) FROM blocks "
        "WHERE first_id >= ? AND last_id <= ?",
        (first_id, last_id),
    ).fetchone()
    if in_blocks:
        conn.execute("DELETE FROM blocks WHERE first_id >= ? AND last_id <= ?", (first_id, last_id))
    count, size = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE id BETWEEN ? AND ?",
        (first_id, last_id),
    ).fetchone()
    if count:
        conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (first_id, last_id))
    if count or in_blocks:
        bump_counters(conn, -(size + block_bytes), -(count + in_blocks))
    return int(count + in_blocks)


class QueuedBatch(Sequence[QueuedEvent]):
    """Events read for shipping, in id order: whole blocks and single rows.

    A shipper sends it as :meth:`encoded` (block bytes as stored, rows encoded) and
    acknowledges it by :meth:`spans`, neither decoding a block. Anything that looks at
    its events one by one (a split, rejections, dead letters) gets them decoded, as
    rows would give them; the queue explodes the blocks those paths change."""

    __slots__ = ("_count", "_events", "_pieces")

    def __init__(self, pieces: list[Block | QueuedEvent]) -> None:
        self._pieces = pieces
        self._count = sum(p.event_count if isinstance(p, Block) else 1 for p in pieces)
        self._events: list[QueuedEvent] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> QueuedEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[QueuedEvent]: ...

    def __getitem__(self, index: int | slice) -> QueuedEvent | list[QueuedEvent]:
        return self.events()[index]

    def __iter__(self) -> Iterator[QueuedEvent]:
        return iter(self.events())

    def events(self) -> list[QueuedEvent]:
        if self._events is None:
            out: list[QueuedEvent] = []
            for piece in self._pieces:
                if isinstance(piece, Block):
                    out += piece.events()
                else:
                    out.append(piece)
            self._events = out
        return self._events

    @property
    def first_id(self) -> int:
        piece = self._pieces[0]
        return piece.first_id if isinstance(piece, Block) else piece.id

    @property
    def last_id(self) -> int:
        piece = self._pieces[-1]
        return piece.last_id if isinstance(piece, Block) else piece.id

    def spans(self) -> list[tuple[int, int]]:
        """Its ids as inclusive runs (one, unless a held row was skipped)."""
        ids: list[tuple[int, int]] = []
        for piece in self._pieces:
            first, last = (
                (piece.first_id, piece.last_id)
                if isinstance(piece, Block)
                else (piece.id, piece.id)
            )
            if ids and ids[-1][1] + 1 == first:
                ids[-1] = (ids[-1][0], last)
            else:
                ids.append((first, last))
        return ids

    def schemas(self) -> set[tuple[str, bytes]]:
        """(event type, fingerprint) of its events."""
        out: set[tuple[str, bytes]] = set()
        for piece in self._pieces:
            if isinstance(piece, Block):
                try:
                    out |= piece.schemas()
                except ValueError:  # its summary damaged: its events say
                    out |= {(e.event_type, e.fingerprint) for e in piece.events()}
            else:
                out.add((piece.event_type, piece.fingerprint))
        return out

    def encoded(self) -> list[tuple[int, bytes]]:
        """Its envelopes in Avro binary, as (record count, bytes) pieces in id order."""
        out: list[tuple[int, bytes]] = []
        rows: list[EnvelopeFields] = []
        for piece in self._pieces:
            if isinstance(piece, Block):
                if rows:
                    out += write_envelopes(rows)
                    rows = []
                out.append((piece.event_count, piece.data))
            else:
                rows.append(
                    (piece.seq, piece.event_type, piece.fingerprint, piece.timestamp, piece.payload)
                )
        if rows:
            out += write_envelopes(rows)
        return out
