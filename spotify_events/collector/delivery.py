"""Delivery: dedupe, ledger, hourly buckets — the stateful half of the collector.

Ingest hands each validated batch to a :class:`Delivery` (two methods:
``deliver`` and ``close``). Here, in the single-process default, that is a direct
call into :class:`LocalDelivery`; when the tier scales out (docs/architecture.md) the same
seam becomes a JetStream publish on the ingest side and a consumer calling
``LocalDelivery.deliver`` on the other, with no change to either half.

Durability order inside :meth:`LocalDelivery.deliver`, under one lock (one writer):

1. dedupe by (producer, event type, seq) against the ledger's ranges;
2. append one container block per touched part file, fsync each file once;
3. commit the ledger (sequence numbers *and* each part's new committed length)
   in one SQLite transaction with ``synchronous=FULL``;
4. only then return, so the HTTP layer sends 200.

A crash between 2 and 3 leaves bytes past a part's committed length: startup
(:meth:`LocalDelivery._recover`) moves them, and part files the ledger never
committed, to the quarantine (:mod:`.datadir`) and records an incident, so the
SDK's retry (it got no 200) writes them exactly once and, should the ledger be an
older copy, nothing acknowledged is destroyed. A part file whose committed prefix
is damaged is quarantined too and never appended to; a closed bucket is never
written again, whatever the clock says. Any failure inside ``deliver`` runs the
same recovery, so in-memory state never drifts from disk, and returns
``UNAVAILABLE`` (the HTTP layer answers 503).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
import zlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from ..schemas import SchemaRegistry
from .accounting import missing_count
from .buckets import (
    BUCKET_CODECS,
    HOUR_MS,
    PartFile,
    bucket_dir,
    container_block,
    container_header,
    header_length,
    part_damage,
    read_marker,
    write_marker,
)
from .datadir import (
    LOCK_FILE,
    DataDirError,
    DataDirLock,
    FileModes,
    Quarantine,
    fsync_dir,
    make_dirs,
    open_part,
)
from .ingest import IngestedBatch, Rejection
from .ledger import (
    COLLECTOR_INCIDENT_PREFIX,
    COLLECTOR_SOURCE,
    INCIDENT_PREFIX,
    LEDGER_FILE,
    BucketState,
    Ledger,
    LedgerState,
    PartState,
    ProducerInBucket,
    StreamState,
)
from .partitions import SINGLE, BucketLayout

if TYPE_CHECKING:
    from .metrics import CompletenessGauges

log = logging.getLogger(__name__)

#: Fault injection for crash tests: ``crash-after-write:N`` makes the process die
#: (``os._exit``, as abrupt as SIGKILL) on the Nth batch, after its bucket bytes are
#: written and fsynced but before the ledger commit: the window recovery must handle.
#: ``crash-after-commit:N`` dies right after the Nth ledger commit, before any 200 is
#: sent: the client retries events that are already durable (counted as duplicates).
FAILPOINT_ENV = "SPOTIFY_EVENTS_COLLECTOR_FAILPOINT"


class DeliveryStatus(enum.Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # not durable; the client must retry (HTTP 503)


@dataclass
class DeliveryResult:
    """Outcome of one ``deliver`` call; never an exception for the caller to catch."""

    status: DeliveryStatus
    accepted: int = 0
    duplicates: int = 0
    skewed: int = 0
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    duplicates_by_type: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)  # refused by delivery
    message: str = ""


class Delivery(Protocol):
    """The seam between ingest and delivery (a direct call today, a stream hop later).

    ``deliver`` returns only once the accepted events are durable (or says
    ``UNAVAILABLE``); it never raises for a batch. ``close`` flushes and releases.
    """

    def deliver(self, batch: IngestedBatch) -> DeliveryResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeliveryConfig:
    """Delivery settings, validated at construction."""

    grace_period: float = 300.0  # seconds a missing number may stay an open gap
    lateness: float = 600.0  # seconds after an hour ends before its bucket closes
    codec: str = "deflate"  # bucket file codec: readable by every Avro implementation
    max_part_bytes: int = 256 << 20  # roll over to a new part file past this size
    max_open_files: int = 256  # part files kept open; the least recently used is closed
    max_hours_per_batch: int = 32  # distinct (type, hour) buckets one batch may write to
    conflict_window: int = 1024  # last N numbers per stream whose payload checksum is kept
    modes: FileModes = field(default_factory=FileModes)
    adopt_data_dir: bool = False  # start a new ledger in a data dir that has files

    def __post_init__(self) -> None:
        if self.grace_period < 0:
            raise ConfigError("grace_period must be >= 0")
        if self.lateness < 0:
            raise ConfigError("lateness must be >= 0")
        if self.codec not in BUCKET_CODECS:
            raise ConfigError(f"codec must be one of {BUCKET_CODECS}")
        if self.max_part_bytes < 1024:
            raise ConfigError("max_part_bytes must be >= 1024")
        for name in ("max_open_files", "max_hours_per_batch", "conflict_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


#: Longest a scrape serves the previous completeness gauges before walking the ledger again.
COMPLETENESS_MAX_AGE = 5.0

#: Most batches one group commit takes (bounds the latency of the first in the group).
MAX_GROUP_BATCHES = 32

#: Most queue incidents the ledger keeps per producer (up to 16 arrive per batch); later
#: ones are logged, once per producer and process, and not kept.
MAX_INCIDENTS_PER_PRODUCER = 100


class RecentPayloads:
    """Checksums of the payloads of a stream's last ``size`` sequence numbers (memory only).

    A number that arrives again is a retry when its checksum matches and a
    *conflict* (two producers sharing one id, e.g. a copied queue file) when it
    does not. 12 bytes per slot; a number older than the window, or one written
    before the collector started, can no longer be told apart and counts as a
    duplicate. CRC-32 misses one conflict in 2**32.
    """

    __slots__ = ("seqs", "size", "sums")

    def __init__(self, size: int) -> None:
        self.size = size
        self.seqs = array("q", bytes(8 * size))
        self.sums = array("I", bytes(4 * size))

    def put(self, seq: int, checksum: int) -> None:
        i = seq % self.size
        self.seqs[i] = seq
        self.sums[i] = checksum

    def conflicts(self, seq: int, checksum: int) -> bool:
        i = seq % self.size
        return self.seqs[i] == seq and self.sums[i] != checksum


class _Run:
    """A run of consecutive events with one (type, schema, bucket) inside a batch."""

    __slots__ = (
        "add",
        "bucket",
        "conflicts",
        "duplicates",
        "newest",
        "payloads",
        "recent",
        "seqs",
        "skewed",
        "stream",
    )

    def __init__(
        self,
        stream: StreamState,
        bucket: BucketState,
        skewed: bool,
        payloads: list[bytes],
        recent: RecentPayloads,
    ) -> None:
        self.stream = stream
        self.bucket = bucket
        self.skewed = skewed
        self.payloads = payloads  # the part file's pending list, shared by runs
        self.recent = recent
        self.add = stream.received.add
        self.seqs: list[int] = []
        self.duplicates = 0
        self.newest = 0  # newest event time (ms) in the run, duplicates included
        self.conflicts = 0


class _Ticket:
    __slots__ = ("batch", "result")

    def __init__(self, batch: IngestedBatch) -> None:
        self.batch = batch
        self.result: DeliveryResult | None = None


@dataclass
class _Group:
    """What one group commit has changed, to be written, fsynced and committed together."""

    now: float
    streams: dict[tuple[str, str], StreamState] = field(default_factory=dict)
    buckets: dict[tuple[str, int], BucketState] = field(default_factory=dict)
    payloads: dict[str, list[bytes]] = field(default_factory=dict)
    parts: dict[str, PartState] = field(default_factory=dict)


class LocalDelivery:
    """Ledger + buckets in ``data_dir``; thread-safe, one writer at a time.

    Holds the data directory's lock from construction to :meth:`close`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        registry: SchemaRegistry,
        *,
        config: DeliveryConfig | None = None,
        clock: Callable[[], float] = time.time,
        layout: BucketLayout = SINGLE,
    ) -> None:
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.layout = layout
        self.registry = registry
        self.config = config or DeliveryConfig()
        self.clock = clock
        self._types = frozenset(registry.event_types)
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._closed = False
        self._needs_recovery = False
        self._crash_at, self._crash_after_commit = _failpoint()
        self._files: OrderedDict[str, PartFile] = OrderedDict()
        self._open_buckets: dict[tuple[str, int], BucketState] = {}
        self._next_close_at = float("inf")
        self._active: dict[tuple[str, int, str], PartState] = {}
        self._recent: dict[tuple[str, str], RecentPayloads] = {}
        self._missing: dict[tuple[str, str], int] = {}
        self._missing_total = 0
        self._completeness: tuple[float, CompletenessGauges | None] = (float("-inf"), None)
        self._incidents = 0
        self._incidents_kept: dict[str, int] = {}  # queue incidents in the ledger, by producer
        self._incidents_refused: set[str] = set()
        modes = self.config.modes
        _prepare_data_dir(self.data_dir, modes)
        # A partition's ledger and lock live in its own directory: workers share DATA_DIR.
        ledger_dir = os.path.join(self.data_dir, layout.ledger_dir)
        if layout.ledger_dir:
            make_dirs(self.data_dir, layout.ledger_dir, modes)
        check_type_names(self.data_dir, self._types)
        self._dir_lock = DataDirLock(ledger_dir, modes)
        try:
            existing = _foreign_entries(ledger_dir)
            refusal = ""
            if existing and not self.config.adopt_data_dir:
                refusal = (
                    f"{self.data_dir} holds files ({', '.join(existing[:5])}) but no collector "
                    "ledger. If the ledger was lost, restore it from a backup; to start a new "
                    "ledger here anyway, pass --adopt-data-dir (bucket files the new ledger "
                    "does not know are moved to _quarantine, nothing is deleted)."
                )
            self.ledger = Ledger(ledger_dir, modes=modes, refuse_new=refusal)
            self._quarantine = Quarantine(self.data_dir, modes)
            self.state = LedgerState()
            with self._lock:
                self._recover()
                self.ledger.save(
                    meta={
                        "grace_period": repr(self.config.grace_period),
                        "lateness": repr(self.config.lateness),
                    }
                )
        except BaseException:
            self._dir_lock.release()
            raise

    # -- the seam -------------------------------------------------------------
    def deliver(self, batch: IngestedBatch) -> DeliveryResult:
        """Make ``batch`` durable; returns once it is (or says UNAVAILABLE).

        Group commit: concurrent callers queue their batch; whichever holds the lock
        applies every queued batch, then writes, fsyncs each touched file once and
        commits the ledger once for all of them. Callers whose batch went with an
        earlier group find their result set when they get the lock.
        """
        ticket = _Ticket(batch)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._lock:
            while ticket.result is None:  # ours is queued: each round takes at least one
                with self._queue_lock:
                    group = self._queue[:MAX_GROUP_BATCHES]
                    del self._queue[:MAX_GROUP_BATCHES]
                results = self._deliver_group([t.batch for t in group])
                for t, r in zip(group, results, strict=True):
                    t.result = r
        assert ticket.result is not None
        return ticket.result

    def deliver_all(
        self, batches: list[IngestedBatch], fence: Callable[[], None] | None = None
    ) -> list[DeliveryResult]:
        """Make ``batches`` durable in one group commit (a stream consumer's fetch).

        ``fence`` runs under the writer lock before anything is written; if it raises
        (the caller no longer owns what it writes to), nothing is and every result is
        UNAVAILABLE.
        """
        with self._lock:
            if fence is not None:
                try:
                    fence()
                except Exception as exc:
                    message = f"not written: {exc}"
                    return [DeliveryResult(DeliveryStatus.UNAVAILABLE, message=message)] * len(
                        batches
                    )
            return self._deliver_group(batches)

    def close(self) -> None:
        """Flush and close part files and the ledger, release the data dir; idempotent."""
        with self._lock:
            self._closed = True
            try:
                while self._files:
                    self._files.popitem()[1].close()
            finally:
                self.ledger.close()
                self._dir_lock.release()

    # -- timers and queries ---------------------------------------------------
    def close_due_buckets(self) -> int:
        """Close every bucket whose hour plus lateness has passed; returns how many."""
        with self._lock:
            if self._closed:
                return 0
            return self._close_due(self.clock())

    def report(self) -> dict[str, Any]:
        from .report import build_report

        with self._lock:
            return build_report(
                self.state,
                now=self.clock(),
                grace=self.config.grace_period,
                lateness=self.config.lateness,
            )

    def completeness(self) -> CompletenessGauges | None:
        """The ledger's loss and bucket gauges for ``/metrics`` (see :mod:`.metrics`).

        Walking every stream needs the delivery lock, so a scrape never waits for it and
        never takes it more often than every ``COMPLETENESS_MAX_AGE`` seconds: while the
        lock is busy (a group commit fsyncing) or the last walk is recent, the previous
        figures are served. Any number of scrapers therefore costs ingest at most one
        walk per interval. None before the first walk: no figure rather than zeros,
        which an alert comparing with an earlier value would read as a change.
        """
        from .metrics import completeness_gauges

        now = self.clock()
        cached_at, cached = self._completeness
        fresh_enough = abs(now - cached_at) < COMPLETENESS_MAX_AGE  # abs: a clock step back
        if fresh_enough or not self._lock.acquire(blocking=False):
            return cached
        try:
            fresh = completeness_gauges(
                self.state,
                now,
                grace=self.config.grace_period,
                lateness=self.config.lateness,
            )
            self._completeness = (now, fresh)  # before the lock goes: no second walk
        finally:
            self._lock.release()
        return fresh

    def missing_events(self) -> int:
        """Numbers below producers' watermarks not yet accounted for (open gaps + lost).

        Kept up to date per changed stream at each commit, so reading it takes no
        lock and costs nothing however many streams there are (for ``/metrics``).
        """
        return self._missing_total

    def open_files(self) -> int:
        return len(self._files)

    # -- internals ------------------------------------------------------------
    def _deliver_group(self, batches: list[IngestedBatch]) -> list[DeliveryResult]:
        if self._closed:
            return [
                DeliveryResult(DeliveryStatus.UNAVAILABLE, message="collector is shutting down")
                for _ in batches
            ]
        try:
            if self._needs_recovery:
                self._recover()
                self._needs_recovery = False
            now = self.clock()
            self._close_due(now)
            group = _Group(now)
            results = [self._apply(batch, group) for batch in batches]
            self._flush(group)
            self._count_missing(group.streams.values())
            return results
        except Exception as exc:
            # Memory may now be ahead of disk: rebuild it from the ledger, now or (if
            # the disk is still failing) before the next batch.
            log.exception("delivery failed; recovering from the ledger")
            self._needs_recovery = True
            try:
                self._recover()
                self._needs_recovery = False
            except Exception:
                log.exception("recovery failed; will retry before the next batch")
            message = f"delivery failed: {type(exc).__name__}"
            return [DeliveryResult(DeliveryStatus.UNAVAILABLE, message=message) for _ in batches]

    def _count_missing(self, streams: Any) -> None:
        for st in streams:
            key = (st.producer_id, st.event_type)
            n = missing_count(st)
            self._missing_total += n - self._missing.get(key, 0)
            self._missing[key] = n

    def _record_incidents(self, producer: str, incidents: list[dict[str, Any]]) -> None:
        """Keep a producer's queue incidents (e.g. a damaged file moved aside) for the
        report; keyed by producer, kind and time, so a retried batch adds nothing."""
        kept = self._incidents_kept.get(producer, 0)
        rows = []
        for i in incidents:
            key = f"{INCIDENT_PREFIX}{producer}:{i['kind']}:{i['at']}"
            if key in self.state.meta:
                continue
            if kept >= MAX_INCIDENTS_PER_PRODUCER:
                if producer not in self._incidents_refused:
                    self._incidents_refused.add(producer)
                    log.warning(
                        "producer %s has reported %d queue incidents; further ones are not kept",
                        producer,
                        kept,
                    )
                break
            kept += 1
            rows.append((key, json.dumps({"producer_id": producer, **i})))
        self._incidents_kept[producer] = kept
        if not rows:
            return
        with self.ledger.atomic() as conn:
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", rows)
        for key, value in rows:
            if key not in self.state.meta:
                self.state.meta[key] = value
                log.warning("producer %s reports a queue incident: %s", producer, value)

    def _collector_incident(self, state: LedgerState, kind: str, detail: str) -> None:
        """Record (durably, at once) something the collector itself found wrong on disk."""
        now = time.time()
        self._incidents += 1
        key = f"{COLLECTOR_INCIDENT_PREFIX}{now:.6f}:{os.getpid()}:{self._incidents}"
        value = json.dumps(
            {"producer_id": COLLECTOR_SOURCE, "kind": kind, "detail": detail, "at": now}
        )
        self.ledger.save(meta={key: value})
        state.meta[key] = value
        log.warning("%s: %s", kind, detail)

    def _apply(self, batch: IngestedBatch, group: _Group) -> DeliveryResult:
        """Dedupe and account one batch in memory; queue its payloads on ``group``."""
        now = group.now
        cfg = self.config
        grace = cfg.grace_period
        lateness = cfg.lateness
        facts = batch.facts
        producer = facts.producer_id
        if facts.incidents:
            self._record_incidents(producer, facts.incidents)
        streams = self.state.streams
        dirty_streams: dict[tuple[str, str], StreamState] = {}  # this batch's streams
        dirty_buckets = group.buckets
        pending = group.payloads
        touched = group.parts
        result = DeliveryResult(DeliveryStatus.OK)
        acc_by_type = result.accepted_by_type
        dup_by_type = result.duplicates_by_type
        refused = result.rejections
        max_seq: dict[str, int] = {}
        now_hour = int(now // 3600)
        batch_buckets: set[tuple[str, int]] = set()
        too_many = (
            f"batch spreads over more than {cfg.max_hours_per_batch} hourly buckets; "
            "send fewer hours per batch"
        )

        # Events come in runs of one (type, schema, hour); per event only the dedupe
        # check, a checksum and two appends happen, the counting is done once per run.
        last_key: tuple[str, bytes, int] | None = None
        run: _Run | None = None
        runs: list[_Run] = []
        for env in batch.events:
            key = (env.event_type, env.fingerprint, env.timestamp // HOUR_MS)
            if key != last_key:
                last_key = key
                etype, fingerprint, hour = key
                skewed = (hour + 1) * 3600 + lateness <= now
                target_hour = now_hour if skewed else hour
                bucket = self._bucket(etype, target_hour, dirty_buckets)
                while bucket.closed:  # only if the clock went backwards: closed is immutable
                    skewed, target_hour = True, max(target_hour, now_hour) + 1
                    bucket = self._bucket(etype, target_hour, dirty_buckets)
                if (etype, target_hour) not in batch_buckets:
                    if len(batch_buckets) >= cfg.max_hours_per_batch:
                        run = None
                        refused.append(Rejection(etype, env.seq, "too_many_hours", too_many))
                        continue
                    batch_buckets.add((etype, target_hour))
                skey = (producer, etype)
                stream = dirty_streams.get(skey) or streams.get(skey)
                if stream is None:
                    stream = streams[skey] = StreamState(producer, etype, first_seen=now)
                dirty_streams[skey] = stream
                recent = self._recent.get(skey)
                if recent is None:
                    recent = self._recent[skey] = RecentPayloads(cfg.conflict_window)
                part = self._part_for(etype, target_hour, fingerprint)
                touched[part.path] = part
                run = _Run(stream, bucket, skewed, pending.setdefault(part.path, []), recent)
                runs.append(run)
                add, append_payload, append_seq = run.add, run.payloads.append, run.seqs.append
                put, conflicts = recent.put, recent.conflicts
            if run is None:
                refused.append(Rejection(env.event_type, env.seq, "too_many_hours", too_many))
                continue
            checksum = zlib.crc32(env.payload, env.timestamp & 0xFFFFFFFF)
            if env.timestamp > run.newest:
                run.newest = env.timestamp
            if add(env.seq):
                append_payload(env.payload)
                append_seq(env.seq)
                put(env.seq, checksum)
            elif conflicts(env.seq, checksum):
                run.conflicts += 1
                refused.append(
                    Rejection(
                        env.event_type,
                        env.seq,
                        "conflict",
                        f"seq {env.seq} was already delivered with a different payload "
                        "(two producers share one producer id?)",
                    )
                )
            else:
                run.duplicates += 1
        for run in runs:
            etype = run.stream.event_type
            pib = run.bucket.producers.get(producer)
            if pib is None:
                pib = run.bucket.producers[producer] = ProducerInBucket()
            if run.newest > run.stream.newest_event_ms:
                run.stream.newest_event_ms = run.newest
            run.stream.conflicts += run.conflicts
            if run.duplicates:
                run.stream.duplicates += run.duplicates
                run.bucket.duplicates += run.duplicates
                pib.duplicates += run.duplicates
                dup_by_type[etype] = dup_by_type.get(etype, 0) + run.duplicates
            n = len(run.seqs)
            if not n:
                continue
            lo, hi = min(run.seqs), max(run.seqs)
            pib.events += n
            pib.min_seq = lo if not pib.min_seq else min(pib.min_seq, lo)
            pib.max_seq = max(pib.max_seq, hi)
            run.bucket.events += n
            if run.skewed:
                pib.skewed += n
                run.bucket.skewed += n
                result.skewed += n
            acc_by_type[etype] = acc_by_type.get(etype, 0) + n
            max_seq[etype] = max(max_seq.get(etype, 0), hi)

        def stream_for(etype: str) -> StreamState:
            skey = (producer, etype)
            st = streams.get(skey)
            if st is None:
                st = streams[skey] = StreamState(producer, etype, first_seen=now)
            dirty_streams[skey] = st
            return st

        # Streams exist only for registered types (at most one per producer and type);
        # unknown schemas are held by the producer, conflicts are already received.
        for rej in [*batch.rejections, *refused]:
            if rej.event_type in self._types and rej.seq >= 1 and rej.code in _MARKED_CODES:
                stream_for(rej.event_type).mark("reject", rej.reason).add(rej.seq)
                max_seq[rej.event_type] = max(max_seq.get(rej.event_type, 0), rej.seq)
        for drop in facts.drops:
            if drop.event_type not in self._types:
                continue
            kind = "reject" if drop.reason.startswith("rejected:") else "drop"
            stream_for(drop.event_type).mark(kind, drop.reason).add_range(
                drop.first_seq, drop.last_seq
            )
            max_seq[drop.event_type] = max(max_seq.get(drop.event_type, 0), drop.last_seq)
        for etype, seq in max_seq.items():
            stream_for(etype).announce(seq + 1, now, grace)
        for etype, next_seq in facts.next_seq.items():
            if etype in self._types:
                stream_for(etype).announce(next_seq, now, grace)
        for st in dirty_streams.values():
            st.last_seen = now
            st.service, st.host, st.sdk_version = facts.service, facts.host, facts.sdk_version
        group.streams.update(dirty_streams)
        result.accepted = sum(acc_by_type.values())
        result.duplicates = sum(dup_by_type.values())
        return result

    def _flush(self, group: _Group) -> None:
        """Write, fsync, then commit: the order that makes a 200 a promise."""
        cfg = self.config
        synced: list[PartFile] = []
        for path, payloads in group.payloads.items():
            if not payloads:
                continue
            part = group.parts[path]
            data = container_block(payloads, cfg.codec, bytes.fromhex(part.sync))
            if part.committed_len == 0:
                schema = self.registry.by_fingerprint(bytes.fromhex(part.fingerprint))
                assert schema is not None  # ingest validated the fingerprint
                data = container_header(schema, cfg.codec, bytes.fromhex(part.sync)) + data
            pf = self._open_part(part)
            if pf.size() != part.committed_len:  # changed under us: recovery quarantines it
                raise OSError(f"{part.path} is not its committed length; not appending")
            pf.append(data)
            part.committed_len += len(data)
            part.events += len(payloads)
            synced.append(pf)
        for pf in synced:
            pf.sync()  # a file closed early by the open-file limit was fsynced then
        if self._crash_at and not self._crash_after_commit:
            self._crash_at -= 1
            if not self._crash_at:
                os._exit(137)
        self.ledger.save(
            streams=list(group.streams.values()),
            buckets=[b for b in group.buckets.values() if b.events or b.duplicates],
            parts=[p for p in group.parts.values() if p.committed_len],
        )
        if self._crash_at and self._crash_after_commit:
            self._crash_at -= 1
            if not self._crash_at:
                os._exit(137)

    def _bucket(
        self, etype: str, hour: int, dirty: dict[tuple[str, int], BucketState]
    ) -> BucketState:
        key = (etype, hour)
        b = self.state.buckets.get(key)
        if b is None:
            b = self.state.buckets[key] = BucketState(etype, hour)
            marker = read_marker(
                os.path.join(self.data_dir, bucket_dir(etype, hour)), self.layout.marker
            )
            if marker is not None:  # closed under a ledger that was lost: still immutable
                b.closed, b.closed_at, b.summary = True, marker.get("closed_at"), marker
            else:
                self._open_buckets[key] = b
                self._next_close_at = min(self._next_close_at, self._close_deadline(hour))
        dirty[key] = b
        return b

    def _part_for(self, etype: str, hour: int, fingerprint: bytes) -> PartState:
        """The part file to append to, never one that is full, damaged, unwritable or not
        ours."""
        fp_hex = fingerprint.hex()
        key = (etype, hour, fp_hex)
        part = self._active.get(key)
        if (
            part is not None
            and part.committed_len < self.config.max_part_bytes
            and (
                part.path in self._files
                or not (self._damaged(part, self.state) or self._unwritable(part))
            )
        ):
            return part
        index = part.index + 1 if part is not None else 0
        if part is not None:
            old = self._files.pop(part.path, None)
            if old is not None:
                old.close()
        directory = bucket_dir(etype, hour)
        while True:  # a name no ledger row and no file has: O_EXCL will not fail
            rel = os.path.join(directory, self.layout.part_name(fp_hex, index))
            if rel not in self.state.parts and not os.path.lexists(
                os.path.join(self.data_dir, rel)
            ):
                break
            index += 1
        part = PartState(
            path=rel,
            event_type=etype,
            hour=hour,
            fingerprint=fp_hex,
            index=index,
            sync=os.urandom(16).hex(),
        )
        self.state.parts[rel] = part
        self._active[key] = part
        return part

    def _open_part(self, part: PartState) -> PartFile:
        pf = self._files.get(part.path)
        if pf is not None:
            self._files.move_to_end(part.path)
            return pf
        while len(self._files) >= self.config.max_open_files:
            self._files.popitem(last=False)[1].close()  # fsyncs: what it got is durable
        full = os.path.join(self.data_dir, part.path)
        directory = make_dirs(self.data_dir, os.path.dirname(part.path), self.config.modes)
        new = part.committed_len == 0
        pf = self._files[part.path] = PartFile(full, open_part(full, self.config.modes, new=new))
        if new:
            fsync_dir(directory)
        return pf

    def _damaged(self, part: PartState, state: LedgerState) -> bool:
        """Check a part file before reopening it; a damaged one is quarantined for good."""
        full = os.path.join(self.data_dir, part.path)
        damage = part_damage(full, part.committed_len, bytes.fromhex(part.sync))
        if damage is None:
            return False
        where = "(file missing)"
        if os.path.lexists(full):
            where = self._quarantine.move(part.path, f"damaged: {damage}")
        part.quarantined = where
        self.ledger.save(parts=[part])
        self._collector_incident(
            state,
            "damaged_part_file",
            f"{part.path} is {damage}; its {part.events} acknowledged events may be lost "
            f"or partly readable; moved to {where}; new events go to a new part file",
        )
        return True

    def _unwritable(self, part: PartState) -> bool:
        """Whether an intact part file cannot be appended to (made read-only or immutable
        behind the collector's back). It is left as it is, intact and in the ledger, and
        new events go to a new part: appending would fail every batch of its hour."""
        full = os.path.join(self.data_dir, part.path)
        if not part.committed_len or os.access(full, os.W_OK):
            return False
        self._collector_incident(
            self.state,
            "part_file_not_writable",
            f"{part.path} cannot be written to; its {part.events} events stay in it "
            "untouched; new events of its hour go to a new part file",
        )
        return True

    def _close_deadline(self, hour: int) -> float:
        return (hour + 1) * 3600 + self.config.lateness

    def _close_due(self, now: float) -> int:
        if now < self._next_close_at:  # the per-batch fast path: nothing is due yet
            return 0
        due = [b for b in self._open_buckets.values() if self._close_deadline(b.hour) <= now]
        for b in due:
            directory = os.path.join(self.data_dir, bucket_dir(b.event_type, b.hour))
            parts = [
                p
                for p in self.state.parts.values()
                if p.event_type == b.event_type and p.hour == b.hour
            ]
            for p in parts:
                pf = self._files.pop(p.path, None)
                if pf is not None:
                    pf.close()
                self._active.pop((p.event_type, p.hour, p.fingerprint), None)
            summary = self._summary(b, parts, now)
            summary["closed"] = True
            summary["closed_at"] = now
            if os.path.isdir(directory):
                write_marker(directory, summary, self.config.modes, self.layout.marker)
            b.closed, b.closed_at, b.summary = True, now, summary
        if due:
            self.ledger.save(buckets=due)
            for b in due:
                del self._open_buckets[(b.event_type, b.hour)]
        self._next_close_at = min(
            (self._close_deadline(b.hour) for b in self._open_buckets.values()),
            default=float("inf"),
        )
        return len(due)

    def _summary(self, b: BucketState, parts: list[PartState], now: float) -> dict[str, Any]:
        from .report import bucket_summary

        return bucket_summary(b, parts, self.state, now=now, grace=self.config.grace_period)

    def _recover(self) -> None:
        """Make memory and disk agree with the ledger (startup, and after any failure).

        Nothing is deleted or truncated away: bytes past a part's committed length
        (a crash between write and commit, or a ledger older than the files) are
        copied to the quarantine before the part is cut back; a part whose committed
        prefix is damaged, and part files no ledger row knows, are moved there.
        """
        while self._files:
            self._files.popitem()[1].close()
        self._active.clear()
        state = self.ledger.load()
        root = self.data_dir
        for part in state.parts.values():
            bucket = state.buckets.get((part.event_type, part.hour))
            if part.quarantined or (bucket is not None and bucket.closed):
                continue
            if self._damaged(part, state):
                continue
            self._move_tail_aside(part, state)
            key = (part.event_type, part.hour, part.fingerprint)
            active = self._active.get(key)
            if active is None or part.index > active.index:
                self._active[key] = part
        # A marker without a closed ledger row: we crashed between the two; trust the marker.
        for b in state.buckets.values():
            if not b.closed:
                marker = read_marker(
                    os.path.join(root, bucket_dir(b.event_type, b.hour)), self.layout.marker
                )
                if marker is not None:
                    b.closed, b.closed_at, b.summary = True, marker.get("closed_at"), marker
                    self.ledger.save(buckets=[b])
        self._quarantine_unknown_parts(state)
        self.state = state
        self._open_buckets = {k: b for k, b in state.buckets.items() if not b.closed}
        self._next_close_at = min(
            (self._close_deadline(b.hour) for b in self._open_buckets.values()),
            default=float("inf"),
        )
        self._missing.clear()
        self._missing_total = 0
        self._count_missing(state.streams.values())
        self._incidents_kept = Counter(
            str(json.loads(value).get("producer_id"))
            for key, value in state.meta.items()
            if key.startswith(INCIDENT_PREFIX)
        )

    def _move_tail_aside(self, part: PartState, state: LedgerState) -> None:
        """Bytes past the committed length: keep a readable copy, then cut the part back."""
        full = os.path.join(self.data_dir, part.path)
        size = os.lstat(full).st_size if os.path.lexists(full) else 0
        if size <= part.committed_len:
            return
        sync = bytes.fromhex(part.sync)
        with open(full, "r+b") as fh:
            head = fh.read(header_length(full, sync)) if part.committed_len else b""
            fh.seek(part.committed_len)
            tail = fh.read()
            where = self._quarantine.keep_copy(
                part.path,
                head + tail,
                f"{len(tail)} bytes past the committed length {part.committed_len}",
            )
            fh.truncate(part.committed_len)
            fh.flush()
            os.fsync(fh.fileno())
        self._collector_incident(
            state,
            "uncommitted_bytes",
            f"{part.path} had {len(tail)} bytes past its committed length (a crash before "
            f"the ledger commit, whose events the producer retries, or a ledger older than "
            f"the files); they are kept in {where}",
        )

    def _quarantine_unknown_parts(self, state: LedgerState) -> None:
        """Move part files no ledger row knows out of open buckets, into the quarantine.

        Only real directories of registered event types are walked (no symlink is
        followed), only regular ``part-*.avro`` files are moved, closed buckets are
        left as they are, and nothing is deleted.
        """
        root = self.data_dir
        for etype in sorted(self._types):
            top = os.path.join(root, etype)
            if not os.path.isdir(top) or os.path.islink(top):
                continue
            stack = [top]
            while stack:
                directory = stack.pop()
                with os.scandir(directory) as it:
                    entries = list(it)
                if any(e.name == self.layout.marker for e in entries):
                    continue
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif (
                        e.is_file(follow_symlinks=False)
                        and self.layout.owns(e.name)
                        and os.path.relpath(e.path, root) not in state.parts
                    ):
                        rel = os.path.relpath(e.path, root)
                        size = e.stat(follow_symlinks=False).st_size
                        where = self._quarantine.move(rel, "no ledger row knows this part file")
                        self._collector_incident(
                            state,
                            "unknown_part_file",
                            f"{rel} ({size} bytes) is not in "
                            f"the ledger (a crash before its first commit, or a lost or older "
                            f"ledger); moved to {where}",
                        )


#: Rejection codes recorded in the ledger as rejected numbers. ``unknown_schema``
#: events are held by the producer and arrive later; a ``conflict`` number was received.
_MARKED_CODES = frozenset(
    {
        "invalid_payload",
        "invalid_type",
        "invalid_seq",
        "invalid_timestamp",
        "too_far_in_future",
        "too_many_hours",
    }
)


def _prepare_data_dir(data_dir: str, modes: FileModes) -> None:
    """Create the data dir (owner-only) if needed; a clear error naming it if unusable."""
    try:
        if not os.path.lexists(data_dir):
            os.makedirs(data_dir, modes.directory)
            os.chmod(data_dir, modes.directory)
        if not os.path.isdir(data_dir):
            raise DataDirError(f"data directory {data_dir} is not a directory")
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise DataDirError(
                f"data directory {data_dir} is not writable by this user (uid {os.getuid()})"
            )
    except OSError as exc:
        raise DataDirError(f"cannot use data directory {data_dir}: {exc.strerror}") from exc


def check_type_names(data_dir: str, event_types: frozenset[str]) -> None:
    """Refuse event types whose directory cannot exist here, or exists as a symlink.

    A full name longer than the file system allows would fail every batch of that
    type the same way (ENAMETOOLONG): found at startup instead, naming the type.
    """
    try:
        name_max = os.pathconf(data_dir, "PC_NAME_MAX")
        path_max = os.pathconf(data_dir, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    # DATA_DIR/<type>/YYYY-MM-DD/HH/part-<16 hex>-NNNN.avro, and its quarantine copy
    longest_rest = len("/_quarantine/YYYYMMDDTHHMMSSZ-4194304/") + len(
        "/YYYY-MM-DD/HH/part-0123456789abcdef-0000.avro.tail.avro.99"
    )
    for etype in sorted(event_types):
        size = len(etype.encode())
        if size > name_max or len(data_dir.encode()) + size + longest_rest > path_max:
            raise DataDirError(
                f"event type {etype!r} ({size} bytes) is too long for a directory name under "
                f"{data_dir} (the file system allows {name_max} bytes per name, {path_max} "
                "per path); shorten its namespace or name"
            )
        top = os.path.join(data_dir, etype)
        if os.path.islink(top) or (os.path.lexists(top) and not os.path.isdir(top)):
            raise DataDirError(
                f"{top} is a symlink or not a directory; the collector writes only into "
                "directories it created. Move it out of the data directory."
            )


def _foreign_entries(data_dir: str) -> list[str]:
    """Names in the data dir other than the lock and the ledger's own files."""
    own = {LOCK_FILE, LEDGER_FILE, LEDGER_FILE + "-wal", LEDGER_FILE + "-shm"}
    with os.scandir(data_dir) as it:
        return sorted(e.name for e in it if e.name not in own)


def _failpoint() -> tuple[int, bool]:
    """(N, after_commit) from :data:`FAILPOINT_ENV`; N == 0 means no failpoint."""
    value = os.environ.get(FAILPOINT_ENV, "")
    for prefix, after_commit in (("crash-after-write:", False), ("crash-after-commit:", True)):
        if value.startswith(prefix):
            return int(value[len(prefix) :]), after_commit
    return 0, False
