"""Delivery: dedupe, ledger, hourly buckets — the stateful half of the collector.

Ingest hands each validated batch to a :class:`Delivery` (two methods:
``deliver`` and ``close``). Here, in the single-process default, that is a direct
call into :class:`LocalDelivery`; when the tier scales out (DESIGN.md) the same
seam becomes a JetStream publish on the ingest side and a consumer calling
``LocalDelivery.deliver`` on the other, with no change to either half.

Durability order inside :meth:`LocalDelivery.deliver`, under one lock (one writer):

1. dedupe by (producer, event type, seq) against the ledger's ranges;
2. append one container block per touched part file, fsync each file once;
3. commit the ledger (sequence numbers *and* each part's new committed length)
   in one SQLite transaction with ``synchronous=FULL``;
4. only then return, so the HTTP layer sends 200.

A crash between 2 and 3 leaves bytes past a part's committed length: startup
(:meth:`LocalDelivery._recover`) truncates them and deletes part files the ledger
never committed, so the SDK's retry (it got no 200) writes them exactly once.
Any failure inside ``deliver`` runs the same recovery, so in-memory state never
drifts from disk, and returns ``UNAVAILABLE`` (the HTTP layer answers 503).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..encoding import is_avro_full_name
from ..schemas import SchemaRegistry
from .accounting import account
from .buckets import (
    BUCKET_CODECS,
    HOUR_MS,
    PartFile,
    bucket_dir,
    container_block,
    container_header,
    fsync_dir,
    makedirs_durable,
    read_marker,
    truncate_to,
    write_marker,
)
from .ingest import IngestedBatch
from .ledger import (
    INCIDENT_PREFIX,
    BucketState,
    Ledger,
    LedgerState,
    PartState,
    ProducerInBucket,
    StreamState,
)
from .partitions import SINGLE, BucketLayout

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

    def __post_init__(self) -> None:
        if self.grace_period < 0:
            raise ValueError("grace_period must be >= 0")
        if self.lateness < 0:
            raise ValueError("lateness must be >= 0")
        if self.codec not in BUCKET_CODECS:
            raise ValueError(f"codec must be one of {BUCKET_CODECS}")
        if self.max_part_bytes < 1024:
            raise ValueError("max_part_bytes must be >= 1024")


#: Most batches one group commit takes (bounds the latency of the first in the group).
MAX_GROUP_BATCHES = 32


class _Run:
    """A run of consecutive events with one (type, schema, bucket) inside a batch."""

    __slots__ = ("add", "bucket", "duplicates", "payloads", "seqs", "skewed", "stream")

    def __init__(
        self, stream: StreamState, bucket: BucketState, skewed: bool, payloads: list[bytes]
    ) -> None:
        self.stream = stream
        self.bucket = bucket
        self.skewed = skewed
        self.payloads = payloads  # the part file's pending list, shared by runs
        self.add = stream.received.add
        self.seqs: list[int] = []
        self.duplicates = 0


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
    """Ledger + buckets in ``data_dir``; thread-safe, one writer at a time."""

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
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._closed = False
        self._needs_recovery = False
        self._crash_at, self._crash_after_commit = _failpoint()
        self._files: dict[str, PartFile] = {}
        self._open_buckets: dict[tuple[str, int], BucketState] = {}
        self._next_close_at = float("inf")
        self._active: dict[tuple[str, int, str], PartState] = {}
        os.makedirs(self.data_dir, exist_ok=True)
        self.ledger = Ledger(os.path.join(self.data_dir, layout.ledger_dir))
        self.state = LedgerState()
        with self._lock:
            self._recover()
            self.ledger.save(
                meta={
                    "grace_period": repr(self.config.grace_period),
                    "lateness": repr(self.config.lateness),
                }
            )

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
        """Flush and close part files and the ledger; idempotent."""
        with self._lock:
            if self._closed and not self._files:
                self.ledger.close()
                return
            self._closed = True
            for pf in self._files.values():
                try:
                    pf.sync()
                finally:
                    pf.close()
            self._files.clear()
            self.ledger.close()

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

    def lag_events(self) -> dict[str, int]:
        """Per producer: numbers below the watermark not yet accounted for (for metrics)."""
        out: dict[str, int] = {}
        with self._lock:
            for st in self.state.streams.values():
                a = account(st, self.clock(), self.config.grace_period, max_gap_ranges=0)
                out[st.producer_id] = out.get(st.producer_id, 0) + a.open_gaps + a.lost
        return out

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

    def _record_incidents(self, producer: str, incidents: list[dict[str, Any]]) -> None:
        """Keep a producer's queue incidents (e.g. a damaged file moved aside) for the
        report; keyed by producer, kind and time, so a retried batch adds nothing."""
        rows = [
            (
                f"{INCIDENT_PREFIX}{producer}:{i['kind']}:{i['at']}",
                json.dumps({"producer_id": producer, **i}),
            )
            for i in incidents
        ]
        with self.ledger.atomic() as conn:
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", rows)
        for key, value in rows:
            if key not in self.state.meta:
                self.state.meta[key] = value
                log.warning("producer %s reports a queue incident: %s", producer, value)

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
        max_seq: dict[str, int] = {}
        now_hour = int(now // 3600)

        # Events come in runs of one (type, schema, hour); per event only the dedupe
        # check and two appends happen, the counting is done once per run.
        last_key: tuple[str, bytes, int] | None = None
        run: _Run | None = None
        runs: list[_Run] = []
        for env in batch.events:
            key = (env.event_type, env.fingerprint, env.timestamp // HOUR_MS)
            if key != last_key:
                etype, fingerprint, hour = key
                skey = (producer, etype)
                stream = dirty_streams.get(skey) or streams.get(skey)
                if stream is None:
                    stream = streams[skey] = StreamState(producer, etype, first_seen=now)
                dirty_streams[skey] = stream
                skewed = (hour + 1) * 3600 + lateness <= now
                target_hour = now_hour if skewed else hour
                bucket = self._bucket(etype, target_hour, dirty_buckets)
                if bucket.closed:  # only if the clock went backwards; keep it immutable
                    skewed, target_hour = True, now_hour
                    bucket = self._bucket(etype, target_hour, dirty_buckets)
                part = self._part_for(etype, target_hour, fingerprint)
                touched[part.path] = part
                run = _Run(stream, bucket, skewed, pending.setdefault(part.path, []))
                runs.append(run)
                add, append_payload, append_seq = run.add, run.payloads.append, run.seqs.append
                last_key = key
            if add(env.seq):
                append_payload(env.payload)
                append_seq(env.seq)
            else:
                run.duplicates += 1  # type: ignore[union-attr]
        for run in runs:
            etype = run.stream.event_type
            pib = run.bucket.producers.get(producer)
            if pib is None:
                pib = run.bucket.producers[producer] = ProducerInBucket()
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

        for rej in batch.rejections:
            if is_avro_full_name(rej.event_type) and rej.seq >= 1:
                stream_for(rej.event_type).mark("reject", rej.reason).add(rej.seq)
                max_seq[rej.event_type] = max(max_seq.get(rej.event_type, 0), rej.seq)
        for drop in facts.drops:
            kind = "reject" if drop.reason.startswith("rejected:") else "drop"
            stream_for(drop.event_type).mark(kind, drop.reason).add_range(
                drop.first_seq, drop.last_seq
            )
            max_seq[drop.event_type] = max(max_seq.get(drop.event_type, 0), drop.last_seq)
        for etype, seq in max_seq.items():
            stream_for(etype).announce(seq + 1, now, grace)
        for etype, next_seq in facts.next_seq.items():
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
            pf = self._files.get(path)
            data = container_block(payloads, cfg.codec, bytes.fromhex(part.sync))
            if pf is None or part.committed_len == 0:
                pf = self._open_part(part)
                if part.committed_len == 0:
                    schema = self.registry.by_fingerprint(bytes.fromhex(part.fingerprint))
                    assert schema is not None  # ingest validated the fingerprint
                    data = container_header(schema, cfg.codec, bytes.fromhex(part.sync)) + data
            pf.append(data)
            part.committed_len += len(data)
            part.events += len(payloads)
            synced.append(pf)
        for pf in synced:
            pf.sync()
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
            b = self.state.buckets[key] = self._open_buckets[key] = BucketState(etype, hour)
            self._next_close_at = min(self._next_close_at, self._close_deadline(hour))
        dirty[key] = b
        return b

    def _part_for(self, etype: str, hour: int, fingerprint: bytes) -> PartState:
        fp_hex = fingerprint.hex()
        key = (etype, hour, fp_hex)
        part = self._active.get(key)
        if part is not None and part.committed_len < self.config.max_part_bytes:
            return part
        index = part.index + 1 if part is not None else 0
        if part is not None:
            old = self._files.pop(part.path, None)
            if old is not None:
                old.close()
        rel = os.path.join(bucket_dir(etype, hour), self.layout.part_name(fp_hex, index))
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
            return pf
        full = os.path.join(self.data_dir, part.path)
        directory = makedirs_durable(self.data_dir, os.path.dirname(part.path))
        new = not os.path.exists(full)
        pf = self._files[part.path] = PartFile(full)
        if new:
            fsync_dir(directory)
        return pf

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
                write_marker(directory, summary, self.layout.marker)
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
        """Make memory and disk agree with the ledger (startup, and after any failure)."""
        for pf in self._files.values():
            pf.close()
        self._files.clear()
        self._active.clear()
        state = self.ledger.load()
        root = self.data_dir
        for part in state.parts.values():
            bucket = state.buckets.get((part.event_type, part.hour))
            if bucket is not None and bucket.closed:
                continue
            full = os.path.join(root, part.path)
            cut = truncate_to(full, part.committed_len)
            if cut:
                log.warning("truncated %s by %d uncommitted bytes", part.path, cut)
            size = os.path.getsize(full) if os.path.exists(full) else 0
            if size < part.committed_len:
                log.error(
                    "%s is shorter (%d) than its committed length %d",
                    part.path,
                    size,
                    part.committed_len,
                )
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
        self._remove_uncommitted_files(state)
        self.state = state
        self._open_buckets = {k: b for k, b in state.buckets.items() if not b.closed}
        self._next_close_at = min(
            (self._close_deadline(b.hour) for b in self._open_buckets.values()),
            default=float("inf"),
        )

    def _remove_uncommitted_files(self, state: LedgerState) -> None:
        """Delete part files the ledger never committed (crash before the first commit)."""
        root = self.data_dir
        with os.scandir(root) as types:
            type_dirs = [e.name for e in types if e.is_dir() and is_avro_full_name(e.name)]
        for etype in type_dirs:
            for dirpath, _dirs, files in os.walk(os.path.join(root, etype)):
                if self.layout.marker in files:
                    continue
                for name in files:
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    if (name.endswith(".tmp") and name.startswith(self.layout.marker)) or (
                        self.layout.owns(name) and rel not in state.parts
                    ):
                        log.warning("removing uncommitted file %s", rel)
                        os.unlink(os.path.join(dirpath, name))


def _failpoint() -> tuple[int, bool]:
    """(N, after_commit) from :data:`FAILPOINT_ENV`; N == 0 means no failpoint."""
    value = os.environ.get(FAILPOINT_ENV, "")
    for prefix, after_commit in (("crash-after-write:", False), ("crash-after-commit:", True)):
        if value.startswith(prefix):
            return int(value[len(prefix) :]), after_commit
    return 0, False
