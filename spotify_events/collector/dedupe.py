"""Dedupe and accounting of one batch in memory, before anything is written.

Per event only the dedupe check against the ledger's ranges, a checksum and two
appends happen; counting is done once per run of events of one (type, schema,
hour). A number that comes again with another payload is a *conflict* (two
producers sharing one id), told apart from a retry by :class:`RecentPayloads`.
"""

from __future__ import annotations

import json
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

from .accounting import missing_count
from .buckets import HOUR_MS
from .closer import BucketCloser
from .delivery_base import log
from .ingest import IngestedBatch, Rejection
from .ledger import (
    INCIDENT_PREFIX,
    BucketState,
    PartState,
    ProducerInBucket,
    StreamState,
    incident_identity,
)
from .ranges import TooManyRanges
from .seam import DeliveryResult, DeliveryStatus

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
        "fingerprint",
        "newest",
        "payloads",
        "seqs",
        "skewed",
        "stream",
    )

    def __init__(
        self, stream: StreamState, bucket: BucketState, skewed: bool, fingerprint: bytes
    ) -> None:
        self.stream = stream
        self.bucket = bucket
        self.skewed = skewed
        self.fingerprint = fingerprint
        self.payloads: list[bytes] = []  # new events, for the part file chosen afterwards
        self.add = stream.received.add
        self.seqs: list[int] = []
        self.duplicates = 0
        self.newest = 0  # newest event time (ms) in the run, duplicates included
        self.conflicts = 0


@dataclass
class Group:
    """What one group commit has changed, to be written, fsynced and committed together."""

    now: float
    streams: dict[tuple[str, str], StreamState] = field(default_factory=dict)
    buckets: dict[tuple[str, int], BucketState] = field(default_factory=dict)
    payloads: dict[str, list[bytes]] = field(default_factory=dict)
    parts: dict[str, PartState] = field(default_factory=dict)


#: Rejection codes recorded in the ledger as rejected numbers. ``unknown_schema``
#: events are held by the producer and arrive later (``held`` marks); a ``conflict``
#: number was received.
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


class BatchApplier(BucketCloser):
    """Applies batches to the in-memory ledger state and queues their payloads."""

    _recent: dict[tuple[str, str], RecentPayloads]  # per (producer, type)

    def _apply(self, batch: IngestedBatch, group: Group) -> DeliveryResult:
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
                run = _Run(stream, bucket, skewed, fingerprint)
                runs.append(run)
                room = cfg.max_ranges_per_stream - stream.mark_ranges()  # for received
                add, append_payload, append_seq = run.add, run.payloads.append, run.seqs.append
                put, conflicts = recent.put, recent.conflicts
            if run is None:
                refused.append(Rejection(env.event_type, env.seq, "too_many_hours", too_many))
                continue
            checksum = zlib.crc32(env.payload, env.timestamp & 0xFFFFFFFF)
            if env.timestamp > run.newest:
                run.newest = env.timestamp
            try:
                added = add(env.seq, room)
            except TooManyRanges:
                refused.append(self._too_many_ranges(run.stream, env.seq))
                continue
            if added:
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
        # A bucket, its producer entry and a part file are made only for a run that
        # counts something into them: a refused run leaves none behind.
        for run in runs:
            etype = run.stream.event_type
            if run.newest > run.stream.newest_event_ms:
                run.stream.newest_event_ms = run.newest
            run.stream.conflicts += run.conflicts
            if not (run.seqs or run.duplicates):
                continue
            self._keep(run.bucket)
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
            part = self._part_for(etype, run.bucket.hour, run.fingerprint)
            touched[part.path] = part
            pending.setdefault(part.path, []).extend(run.payloads)
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

        ranges_of: dict[str, int] = {}  # each marked stream's ranges, kept up to date

        def mark(etype: str, kind: str, reason: str, first: int, last: int) -> None:
            """Record [first, last] under (kind, reason), within the stream's range limit:
            past it the numbers are not recorded (they count as missing), said once."""
            st = stream_for(etype)
            ranges = st.mark(kind, reason)
            total = ranges_of.get(etype)
            if total is None:
                total = len(st.received) + st.mark_ranges()
            before = len(ranges)
            try:
                ranges.add_range(first, last, cfg.max_ranges_per_stream - (total - before))
            except TooManyRanges:
                self._too_many_ranges(st, first)
                if not ranges:  # made just now: it would hold a reason's place for nothing
                    st.marks = {key: r for key, r in st.marks.items() if r}
            ranges_of[etype] = total + len(ranges) - before

        # Streams exist only for registered types (at most one per producer and type);
        # conflicts are already received. A refused number the stream has received
        # (in an earlier batch, or this one) is answered as a duplicate: the producer
        # may forget its copy. Events of an unknown schema are held by the
        # producer: below its watermark, they must not age into "lost".
        received_before = result.received_before
        for rej in [*batch.rejections, *refused]:
            if rej.event_type not in self._types or rej.seq < 1:
                continue
            known = streams.get((producer, rej.event_type))
            if rej.code != "conflict" and known is not None and rej.seq in known.received:
                stream_for(rej.event_type).duplicates += 1
                dup_by_type[rej.event_type] = dup_by_type.get(rej.event_type, 0) + 1
                received_before.add((rej.event_type, rej.seq))
                continue
            if rej.code in _MARKED_CODES:
                mark(rej.event_type, "reject", rej.reason, rej.seq, rej.seq)
                max_seq[rej.event_type] = max(max_seq.get(rej.event_type, 0), rej.seq)
            elif rej.code == "unknown_schema":
                mark(rej.event_type, "held", rej.code, rej.seq, rej.seq)  # one key
        for drop in facts.drops:
            if drop.event_type not in self._types:
                continue
            kind = "reject" if drop.reason.startswith("rejected:") else "drop"
            mark(drop.event_type, kind, drop.reason, drop.first_seq, drop.last_seq)
            max_seq[drop.event_type] = max(max_seq.get(drop.event_type, 0), drop.last_seq)
        for etype, seq in max_seq.items():
            stream_for(etype).announce(seq + 1, now, grace)
        for etype, next_seq in facts.next_seq.items():
            if etype in self._types:
                stream_for(etype).announce(next_seq, now, grace)
        for st in dirty_streams.values():
            st.last_seen = now
            st.service, st.host, st.sdk_version = facts.service, facts.host, facts.sdk_version
        if received_before:
            refused[:] = [
                r
                for r in refused
                if r.code == "conflict" or (r.event_type, r.seq) not in received_before
            ]
        group.streams.update(dirty_streams)
        result.accepted = sum(acc_by_type.values())
        result.duplicates = sum(dup_by_type.values())
        return result

    def _too_many_ranges(self, stream: StreamState, seq: int) -> Rejection:
        """Refuse ``seq``: recording it would take ``stream`` past its range limit. The
        first time per stream and process, an incident names the stream."""
        limit = self.config.max_ranges_per_stream
        key = (stream.producer_id, stream.event_type)
        if key not in self._range_limited:
            self._range_limited.add(key)
            self._collector_incident(
                self.state,
                "too_many_ranges",
                f"producer {stream.producer_id!r}, {stream.event_type}: its sequence numbers "
                f"need more than {limit} ranges (numbers out of order with gaps); numbers "
                "that would open a new range are refused (events, code too_many_ranges) or "
                "not recorded (drop notices, rejections: they count as missing). Raise "
                "--max-ranges-per-stream if the producer is genuine",
            )
        return Rejection(
            stream.event_type,
            seq,
            "too_many_ranges",
            f"this stream's sequence numbers need more than {limit} ranges (out of order "
            "with gaps); the collector keeps no more",
        )

    def _count_missing(self, streams: Any) -> None:
        for st in streams:
            key = (st.producer_id, st.event_type)
            n = missing_count(st)
            self._missing_total += n - self._missing.get(key, 0)
            self._missing[key] = n

    def _record_incidents(self, producer: str, incidents: list[dict[str, Any]]) -> None:
        """Keep a producer's queue incidents (e.g. a damaged file moved aside) for the
        report. One is known by its kind, time and detail, whichever producer id brings
        it (the SDK sends them with whatever batch goes next), so one sent again after
        a retry or a crash adds nothing."""
        kept = self._incidents_kept.get(producer, 0)
        seen = self._incidents_seen
        rows = []
        for i in incidents:
            key = f"{INCIDENT_PREFIX}{producer}:{i['kind']}:{i['at']}"
            if key in self.state.meta or incident_identity(i) in seen:
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
            seen.add(incident_identity(i))
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
