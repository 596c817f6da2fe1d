"""The ledger: what the collector knows about every stream, bucket and part file.

Owns ``DATA_DIR/_ledger.db`` (SQLite, WAL, ``synchronous=FULL`` because a 200 is
a promise: once the ledger commit returns, the acknowledged events' sequence
numbers and their part files' committed lengths are on disk). State is kept in
memory as small dataclasses and each changed row is written back as one JSON
document per stream / bucket / part inside a single transaction, through one
:meth:`Ledger.atomic` helper. The report reads the same rows, so it works on a
stopped collector's data directory.

Loss accounting per (producer, event type):

* ``received``: sequence numbers written to a bucket (compact ranges).
* ``marks``: ranges announced by drop notices, keyed by (kind, reason), where kind
  is ``drop`` or ``reject`` (drop notices whose reason starts with ``rejected:`` and
  events the collector itself rejected). Received beats rejected beats dropped.
  Kind ``held``: numbers the collector answered ``unknown_schema``, which the
  producer keeps and sends again once the schema is deployed; missing, never lost.
* ``next_seq``: the highest announced next sequence number (the heartbeat
  watermark), raised implicitly past every number seen; ``steps`` records when
  each raise happened, so a missing number's age is known: it is an *open gap*
  until it has been below the watermark for the grace period, then *lost*.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .datadir import O_NOFOLLOW, DataDirError, FileModes
from .ranges import RangeSet

LEDGER_FILE = "_ledger.db"
SCHEMA_VERSION = 1
#: Keep at most this many watermark steps per stream; older ones are merged.
MAX_STEPS = 256
#: Reasons come from clients (drop notices) or embed client values (a rejected
#: timestamp), so a stream keeps at most this many distinct (kind, reason) marks, each
#: reason cut to MAX_REASON_CHARS; further reasons are counted under OTHER_REASONS.
#: Unbounded, 5000 rejections with distinct timestamps grew one stream's ledger row by
#: 1.3 MB per batch, rewritten on every later batch (tests/faults/test_hostile_input.py).
MAX_REASONS = 64
#: The kinds of :attr:`StreamState.marks` (see the module docstring).
MARK_KINDS = ("drop", "reject", "held")
MAX_REASON_CHARS = 200
OTHER_REASONS = "(other reasons)"

#: meta keys holding incidents (JSON), shown in the report: producers' queue incidents
#: and the collector's own (``incident:collector:...``, e.g. a damaged part file).
INCIDENT_PREFIX = "incident:"
COLLECTOR_INCIDENT_PREFIX = INCIDENT_PREFIX + "collector:"
#: Who the collector's own incidents are attributed to in the report; no producer id.
COLLECTOR_SOURCE = "(collector)"


def incident_identity(incident: dict[str, Any]) -> tuple[object, object, object]:
    """What tells one queue incident from another: the wire carries no id, and kind,
    time (the producer's float clock) and detail are one however often it is sent."""
    return incident.get("kind"), incident.get("at"), incident.get("detail")


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    producer_id TEXT NOT NULL, event_type TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (producer_id, event_type));
CREATE TABLE IF NOT EXISTS buckets (
    event_type TEXT NOT NULL, hour INTEGER NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (event_type, hour));
CREATE TABLE IF NOT EXISTS parts (path TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


@dataclass
class StreamState:
    """Everything known about one (producer, event type) sequence."""

    producer_id: str
    event_type: str
    received: RangeSet = field(default_factory=RangeSet)
    duplicates: int = 0
    conflicts: int = 0  # numbers that arrived again with a different payload
    next_seq: int = 1
    steps: list[tuple[int, float]] = field(default_factory=list)
    marks: dict[tuple[str, str], RangeSet] = field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0
    service: str = ""
    host: str = ""
    sdk_version: str = ""
    newest_event_ms: int = 0  # newest event time acknowledged on this stream (for lag)

    def announce(self, next_seq: int, now: float, grace: float) -> None:
        """Raise the watermark to ``next_seq`` (never lowers it), remembering when."""
        if next_seq <= self.next_seq:
            return
        self.next_seq = next_seq
        self.steps.append((next_seq, now))
        self._compact_steps(now, grace)

    def _compact_steps(self, now: float, grace: float) -> None:
        # Steps older than the grace period can be merged into the newest such step:
        # every number below any of them is already past grace, and stays so.
        steps = self.steps
        old = [i for i, (_, since) in enumerate(steps) if since <= now - grace]
        if len(old) > 1:
            keep = old[-1]
            self.steps = steps[keep:]
        while len(self.steps) > MAX_STEPS:  # merging makes gaps look younger, never older
            (_, _), (ns2, t2) = self.steps[0], self.steps[1]
            self.steps[0:2] = [(ns2, t2)]

    def mark_ranges(self) -> int:
        """Ranges held by all marks (with ``len(received)``, what the collector's
        ``max_ranges_per_stream`` bounds)."""
        return sum(len(ranges) for ranges in self.marks.values())

    def mark(self, kind: str, reason: str) -> RangeSet:
        key = (kind, reason[:MAX_REASON_CHARS])
        ranges = self.marks.get(key)
        if ranges is None:
            if len(self.marks) >= MAX_REASONS:
                key = (kind, OTHER_REASONS)
                ranges = self.marks.get(key)
            if ranges is None:
                ranges = self.marks[key] = RangeSet()
        return ranges

    def copy(self) -> StreamState:
        """A copy that later changes to this stream do not reach."""
        new = copy.copy(self)
        new.received = self.received.copy()
        new.steps = list(self.steps)
        new.marks = {key: ranges.copy() for key, ranges in self.marks.items()}
        return new

    def to_json(self) -> str:
        return json.dumps(
            {
                "received": self.received.to_list(),
                "duplicates": self.duplicates,
                "conflicts": self.conflicts,
                "next_seq": self.next_seq,
                "steps": self.steps,
                "marks": [[k, r, rs.to_list()] for (k, r), rs in self.marks.items()],
                "first_seen": self.first_seen,
                "last_seen": self.last_seen,
                "service": self.service,
                "host": self.host,
                "sdk_version": self.sdk_version,
                "newest_event_ms": self.newest_event_ms,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, producer_id: str, event_type: str, text: str) -> StreamState:
        d = json.loads(text)
        return cls(
            producer_id=producer_id,
            event_type=event_type,
            received=RangeSet.from_list(d["received"]),
            duplicates=d["duplicates"],
            conflicts=d.get("conflicts", 0),
            next_seq=d["next_seq"],
            steps=[(int(n), float(t)) for n, t in d["steps"]],
            marks={(k, r): RangeSet.from_list(rs) for k, r, rs in d["marks"]},
            first_seen=d["first_seen"],
            last_seen=d["last_seen"],
            service=d.get("service", ""),
            host=d.get("host", ""),
            sdk_version=d.get("sdk_version", ""),
            newest_event_ms=d.get("newest_event_ms", 0),
        )


@dataclass
class ProducerInBucket:
    """One producer's share of one bucket: counts and the seq span it covers."""

    events: int = 0
    skewed: int = 0
    duplicates: int = 0
    min_seq: int = 0
    max_seq: int = 0

    def add(self, seq: int, skewed: bool) -> None:
        self.events += 1
        if skewed:
            self.skewed += 1
        if not self.min_seq or seq < self.min_seq:
            self.min_seq = seq
        if seq > self.max_seq:
            self.max_seq = seq


@dataclass
class BucketState:
    """One hourly bucket of one event type; ``hour`` is hours since the epoch (UTC)."""

    event_type: str
    hour: int
    closed: bool = False
    closed_at: float | None = None
    events: int = 0
    skewed: int = 0
    duplicates: int = 0
    producers: dict[str, ProducerInBucket] = field(default_factory=dict)
    summary: dict[str, Any] | None = None  # the _CLOSED.json content once closed

    def copy(self) -> BucketState:
        """A copy that later changes to this bucket do not reach (``summary`` is shared:
        it is set once, when the bucket closes, and never changed)."""
        new = copy.copy(self)
        new.producers = {p: copy.copy(pb) for p, pb in self.producers.items()}
        return new

    def to_json(self) -> str:
        return json.dumps(
            {
                "closed": self.closed,
                "closed_at": self.closed_at,
                "events": self.events,
                "skewed": self.skewed,
                "duplicates": self.duplicates,
                "producers": {
                    p: [s.events, s.skewed, s.duplicates, s.min_seq, s.max_seq]
                    for p, s in self.producers.items()
                },
                "summary": self.summary,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, event_type: str, hour: int, text: str) -> BucketState:
        d = json.loads(text)
        return cls(
            event_type=event_type,
            hour=hour,
            closed=d["closed"],
            closed_at=d["closed_at"],
            events=d["events"],
            skewed=d["skewed"],
            duplicates=d["duplicates"],
            producers={p: ProducerInBucket(*v) for p, v in d["producers"].items()},
            summary=d.get("summary"),
        )


@dataclass
class PartState:
    """One part file: ``committed_len`` bytes of it are acknowledged; the rest is not."""

    path: str  # relative to the data dir
    event_type: str
    hour: int
    fingerprint: str  # hex
    index: int
    sync: str  # hex of the 16-byte container sync marker
    committed_len: int = 0
    events: int = 0
    quarantined: str = ""  # where a damaged file went; such a part is never written again

    def to_json(self) -> str:
        return json.dumps(
            {
                "quarantined": self.quarantined,
                "event_type": self.event_type,
                "hour": self.hour,
                "fingerprint": self.fingerprint,
                "index": self.index,
                "sync": self.sync,
                "committed_len": self.committed_len,
                "events": self.events,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, path: str, text: str) -> PartState:
        d = json.loads(text)
        return cls(path=path, **d)


@dataclass
class LedgerState:
    """The whole ledger in memory."""

    streams: dict[tuple[str, str], StreamState] = field(default_factory=dict)
    buckets: dict[tuple[str, int], BucketState] = field(default_factory=dict)
    parts: dict[str, PartState] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def copy(self) -> LedgerState:
        """A copy that later changes to this state do not reach: taken under the delivery
        lock, it lets a report be built outside it from the numbers of one moment."""
        return LedgerState(
            streams={key: st.copy() for key, st in self.streams.items()},
            # a closed bucket is never changed again (events of its hour go elsewhere)
            buckets={key: b if b.closed else b.copy() for key, b in self.buckets.items()},
            parts={path: copy.copy(p) for path, p in self.parts.items()},
            meta=dict(self.meta),
        )


class Ledger:
    """SQLite persistence of :class:`LedgerState`; one writer, serialised by the caller."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        read_only: bool = False,
        modes: FileModes | None = None,
        refuse_new: str = "",
    ) -> None:
        """``refuse_new``: if set, a ledger that holds no schema version (created just now,
        or emptied: SQLite reads a zero-byte file as an empty database) is not started;
        DataDirError with this text instead."""
        self.path = os.path.join(os.fspath(data_dir), LEDGER_FILE)
        if read_only and not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no collector ledger here")
        if not read_only:
            modes = modes or FileModes()
            # SQLite gives its -wal and -shm files the database file's mode
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW, modes.file)
            except OSError as exc:
                raise DataDirError(f"cannot open the ledger {self.path}: {exc.strerror}") from exc
            try:
                os.fchmod(fd, modes.file)
            finally:
                os.close(fd)
        try:
            # Not mode=ro: reading a WAL database needs the -shm file, which a reader may create.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout=5000")
            if not read_only:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")  # the 200 promises durability
                self._conn.executescript(_DDL)
                with self.atomic() as conn:
                    row = conn.execute(
                        "SELECT value FROM meta WHERE key = 'schema_version'"
                    ).fetchone()
                    if row is None and refuse_new:
                        raise DataDirError(refuse_new)
                    if row is None:
                        conn.execute(
                            "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),),
                        )
                    elif row[0] != str(SCHEMA_VERSION):
                        raise DataDirError(
                            f"{self.path} has ledger version {row[0]!r}; this collector "
                            f"reads version {SCHEMA_VERSION}. Run a matching spotify-events."
                        )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            if not isinstance(exc, sqlite3.Error):
                raise
            raise DataDirError(
                f"{self.path} is not a usable collector ledger ({exc}). Stop every collector "
                "on this data directory, move the file aside, and restore the ledger from "
                "a backup; without one, start with --adopt-data-dir to begin a new ledger "
                "(bucket files the new ledger does not know are moved to _quarantine)."
            ) from exc

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """The one transaction helper: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def load(self) -> LedgerState:
        conn = self._conn
        state = LedgerState()
        try:
            state.meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for producer, event_type, text in conn.execute(
                "SELECT producer_id, event_type, state FROM streams"
            ):
                state.streams[(producer, event_type)] = StreamState.from_json(
                    producer, event_type, text
                )
            for event_type, hour, text in conn.execute(
                "SELECT event_type, hour, state FROM buckets"
            ):
                state.buckets[(event_type, hour)] = BucketState.from_json(event_type, hour, text)
            for path, text in conn.execute("SELECT path, state FROM parts"):
                state.parts[path] = PartState.from_json(path, text)
        except sqlite3.Error as exc:
            raise DataDirError(f"{self.path}: not a collector ledger ({exc})") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DataDirError(
                f"{self.path}: a ledger row does not parse ({type(exc).__name__}: {exc}); "
                "restore the ledger from a backup"
            ) from exc
        return state

    def save(
        self,
        *,
        streams: Iterator[StreamState] | list[StreamState] = (),  # type: ignore[assignment]
        buckets: Iterator[BucketState] | list[BucketState] = (),  # type: ignore[assignment]
        parts: Iterator[PartState] | list[PartState] = (),  # type: ignore[assignment]
        meta: dict[str, str] | None = None,
    ) -> None:
        """Write the given rows in one durable transaction."""
        with self.atomic() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO streams(producer_id, event_type, state) VALUES (?, ?, ?)",
                [(s.producer_id, s.event_type, s.to_json()) for s in streams],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO buckets(event_type, hour, state) VALUES (?, ?, ?)",
                [(b.event_type, b.hour, b.to_json()) for b in buckets],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO parts(path, state) VALUES (?, ?)",
                [(p.path, p.to_json()) for p in parts],
            )
            if meta:
                conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items())
                )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
