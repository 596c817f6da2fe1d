"""Delivery: dedupe, ledger, hourly buckets — the stateful half of the collector.

:class:`LocalDelivery` is what stands behind the :class:`~.seam.Delivery` seam in
the single-process collector, and in each partition of a delivery worker. This
module holds its construction and the group commit; its roles are parts of their
own: dedupe and accounting (:mod:`.dedupe`), part files (:mod:`.parts`), bucket
closing (:mod:`.closer`), recovery (:mod:`.recovery`).

Durability order inside :meth:`LocalDelivery.deliver`, under one lock (one writer):

1. dedupe by (producer, event type, seq) against the ledger's ranges;
2. append one container block per touched part file, fsync each file once;
3. commit the ledger (sequence numbers *and* each part's new committed length)
   in one SQLite transaction with ``synchronous=FULL``;
4. only then return, so the HTTP layer sends 200.

A crash between 2 and 3 leaves bytes past a part's committed length: startup
(:meth:`.recovery.Recovery._recover`) moves them, and part files the ledger never
committed, to the quarantine (:mod:`.datadir`) and records an incident, so the
SDK's retry (it got no 200) writes them exactly once and, should the ledger be an
older copy, nothing acknowledged is destroyed. A part file whose committed prefix
is damaged is quarantined too and never appended to; a closed bucket is never
written again, whatever the clock says. Any failure inside ``deliver`` runs the
same recovery, so in-memory state never drifts from disk, and returns
``UNAVAILABLE`` (the HTTP layer answers 503).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..schemas import SchemaRegistry
from .buckets import PartFile, container_block, container_header
from .datadir import DataDirLock, Quarantine, make_dirs
from .dedupe import BatchApplier, Group
from .delivery_base import log
from .ingest import IngestedBatch
from .ledger import LEDGER_FILE, Ledger, LedgerState
from .partitions import SINGLE, BucketLayout
from .recovery import (
    Recovery,
    check_type_names,
    foreign_entries,
    owned_part_files,
    prepare_data_dir,
)
from .seam import DeliveryConfig, DeliveryResult, DeliveryStatus

if TYPE_CHECKING:
    from .metrics import CompletenessGauges

#: The points of a group commit a ``failpoint`` hook is called at (see
#: :class:`LocalDelivery`): after the part files are written and fsynced but before
#: the ledger commit (the window recovery must handle), and right after the ledger
#: commit, before any 200 is sent (the client retries events already durable).
FAILPOINT_AFTER_WRITE = "after-write"
FAILPOINT_AFTER_COMMIT = "after-commit"

#: Longest a scrape serves the previous completeness gauges before walking the ledger again.
COMPLETENESS_MAX_AGE = 5.0

#: Most batches one group commit takes (bounds the latency of the first in the group).
MAX_GROUP_BATCHES = 32


class _Ticket:
    __slots__ = ("batch", "result")

    def __init__(self, batch: IngestedBatch) -> None:
        self.batch = batch
        self.result: DeliveryResult | None = None


class LocalDelivery(Recovery, BatchApplier):
    """Ledger + buckets in ``data_dir``; thread-safe, one writer at a time.

    Holds the data directory's lock from construction to :meth:`close`.
    ``failpoint``, when given, is called with :data:`FAILPOINT_AFTER_WRITE` and
    :data:`FAILPOINT_AFTER_COMMIT` as each group commit passes those points: crash
    tests inject one that kills the process there (tests/failpoints.py).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        registry: SchemaRegistry,
        *,
        config: DeliveryConfig | None = None,
        clock: Callable[[], float] = time.time,
        layout: BucketLayout = SINGLE,
        failpoint: Callable[[str], None] | None = None,
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
        self._failpoint = failpoint
        self._files = OrderedDict()
        self._open_buckets = {}
        self._next_close_at = float("inf")
        self._marker_retry = {}
        self._active = {}
        self._recent = {}
        self._missing = {}
        self._missing_total = 0
        self._completeness: tuple[float, CompletenessGauges | None] = (float("-inf"), None)
        self._incidents = 0
        self._incidents_kept = {}
        self._incidents_refused = set()
        self._incidents_seen = set()
        self._range_limited = set()
        modes = self.config.modes
        prepare_data_dir(self.data_dir, modes)
        # A partition's ledger and lock live in its own directory: workers share DATA_DIR.
        ledger_dir = os.path.join(self.data_dir, layout.ledger_dir)
        if layout.ledger_dir:
            make_dirs(self.data_dir, layout.ledger_dir, modes)
        check_type_names(self.data_dir, self._types)
        self._dir_lock = DataDirLock(ledger_dir, modes)
        try:
            existing = foreign_entries(ledger_dir)
            refusal = ""
            ledger_file = os.path.join(ledger_dir, LEDGER_FILE)
            if layout.ledger_dir and not (
                os.path.exists(ledger_file) and os.path.getsize(ledger_file)
            ):
                # A partition's part files are not under its ledger directory.
                existing += owned_part_files(self.data_dir, self._types, layout)
            if existing and not self.config.adopt_data_dir and layout.ledger_dir:
                refusal = (
                    f"{ledger_dir} has no ledger, but the partition has files "
                    f"({', '.join(existing[:5])}). If its ledger was lost, restore it from a "
                    "backup; to start a new one anyway, move the partition's part files out "
                    "of the data directory first."
                )
            elif existing and not self.config.adopt_data_dir:
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
        """Close every bucket whose hour plus lateness has passed; returns how many.

        A close that fails part way (a marker written, the ledger commit not) leaves
        memory ahead of the ledger: as after a failed group commit, memory is rebuilt
        from the ledger (and the markers on disk) before anything else is closed.
        """
        with self._lock:
            if self._closed:
                return 0
            try:
                if self._needs_recovery:
                    self._recover()
                    self._needs_recovery = False
                return self._close_due(self.clock())
            except Exception:
                self._needs_recovery = True
                raise

    def report(self) -> dict[str, Any]:
        """The delivery report (:func:`.report.build_report`) as of one moment.

        The lock is held only to copy the state: building the report walks every
        stream and bucket, and group commits would wait for all of it.
        """
        from .report import build_report

        with self._lock:
            state, now = self.state.copy(), self.clock()
        return build_report(
            state, now=now, grace=self.config.grace_period, lateness=self.config.lateness
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
            group = Group(now)
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

    def _flush(self, group: Group) -> None:
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
        if self._failpoint is not None:
            self._failpoint(FAILPOINT_AFTER_WRITE)
        self.ledger.save(
            streams=list(group.streams.values()),
            buckets=[b for b in group.buckets.values() if b.events or b.duplicates],
            parts=[p for p in group.parts.values() if p.committed_len],
        )
        if self._failpoint is not None:
            self._failpoint(FAILPOINT_AFTER_COMMIT)
