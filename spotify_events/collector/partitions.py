"""One data directory, many partitions: where each partition's delivery writes, and
how the report reads them all back as one ledger.

When delivery workers share the partitions of a JetStream stream (``spotify-events
deliver``), each partition has its own :class:`~.delivery.LocalDelivery` (one
writer per ledger) over the same ``DATA_DIR``::

    DATA_DIR/_partitions/p0003/_ledger.db          partition 3's ledger
    DATA_DIR/<type>/<YYYY-MM-DD>/<HH>/part-p0003-<fingerprint>-<index>.avro
    DATA_DIR/<type>/<YYYY-MM-DD>/<HH>/_CLOSED.p0003.json   partition 3 closed the hour
    DATA_DIR/<type>/<YYYY-MM-DD>/<HH>/_CLOSED.json         every partition closed it

A partition's delivery only ever touches its own part files and marker (recovery
included), so partitions never step on each other's bytes. The single-process
collector uses :data:`SINGLE` (ledger at the root, ``part-<fp>-<index>.avro``,
``_CLOSED.json``), which is the layout it always had.

A producer's events all go to one partition, so a (producer, event type) stream
lives in one ledger; an hourly bucket is spread over the partitions that had
events for it, and :func:`load_state` adds them up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .buckets import CLOSED_MARKER, part_name
from .ledger import LEDGER_FILE, BucketState, Ledger, LedgerState, ProducerInBucket, StreamState

PARTITIONS_DIR = "_partitions"


@dataclass(frozen=True)
class BucketLayout:
    """Where one delivery keeps its ledger, how it names its part files and its marker."""

    ledger_dir: str = ""  # relative to the data dir
    part_tag: str = ""  # "p0003": part-p0003-<fp>-<index>.avro
    marker: str = CLOSED_MARKER

    def part_name(self, fingerprint_hex: str, index: int) -> str:
        name = part_name(fingerprint_hex, index)
        return name.replace("part-", f"part-{self.part_tag}-", 1) if self.part_tag else name

    def owns(self, filename: str) -> bool:
        """Whether a file in a bucket directory is one of this delivery's part files."""
        prefix = f"part-{self.part_tag}-" if self.part_tag else "part-"
        return filename.startswith(prefix) and filename.endswith(".avro")


SINGLE = BucketLayout()


def partition_tag(partition: int) -> str:
    return f"p{partition:04d}"


def partition_layout(partition: int) -> BucketLayout:
    tag = partition_tag(partition)
    return BucketLayout(
        ledger_dir=os.path.join(PARTITIONS_DIR, tag),
        part_tag=tag,
        marker=f"_CLOSED.{tag}.json",
    )


def ledger_dirs(data_dir: str | os.PathLike[str]) -> list[str]:
    """Every directory under ``data_dir`` holding a ledger: the root, then partitions."""
    root = os.fspath(data_dir)
    found = [root] if os.path.exists(os.path.join(root, LEDGER_FILE)) else []
    parts = os.path.join(root, PARTITIONS_DIR)
    if os.path.isdir(parts):
        for name in sorted(os.listdir(parts)):
            if os.path.exists(os.path.join(parts, name, LEDGER_FILE)):
                found.append(os.path.join(parts, name))
    return found


def load_state(data_dir: str | os.PathLike[str]) -> LedgerState:
    """The ledger of a data directory: the root's, or every partition's added up."""
    dirs = ledger_dirs(data_dir) or [os.fspath(data_dir)]  # the last one raises "no ledger"
    merged = LedgerState()
    for directory in dirs:
        ledger = Ledger(directory, read_only=True)
        try:
            _merge(merged, ledger.load(), several=len(dirs) > 1)
        finally:
            ledger.close()
    return merged


def _merge(into: LedgerState, state: LedgerState, *, several: bool) -> None:
    for name, value in state.meta.items():
        into.meta.setdefault(name, value)
    into.parts.update(state.parts)
    for skey, st in state.streams.items():
        mine = into.streams.get(skey)
        into.streams[skey] = st if mine is None else _merge_stream(mine, st)
    for bkey, b in state.buckets.items():
        mine_b = into.buckets.get(bkey)
        if mine_b is None:
            if several:  # a closed partition's summary covers only that partition
                b.summary = None
            into.buckets[bkey] = b
        else:
            _merge_bucket(mine_b, b)


def _merge_stream(a: StreamState, b: StreamState) -> StreamState:
    """One (producer, type) seen by two partitions: only after a change of partition count."""
    a.received.update(b.received)
    a.duplicates += b.duplicates
    a.next_seq = max(a.next_seq, b.next_seq)
    a.steps = sorted({*a.steps, *b.steps})
    for key, ranges in b.marks.items():
        a.marks.setdefault(key, type(ranges)()).update(ranges)
    a.first_seen = min(a.first_seen, b.first_seen)
    if b.last_seen > a.last_seen:
        a.last_seen, a.service, a.host, a.sdk_version = (
            b.last_seen,
            b.service,
            b.host,
            b.sdk_version,
        )
    return a


def _merge_bucket(a: BucketState, b: BucketState) -> None:
    a.closed = a.closed and b.closed
    a.closed_at = max(a.closed_at or 0.0, b.closed_at or 0.0) if a.closed else None
    a.events += b.events
    a.skewed += b.skewed
    a.duplicates += b.duplicates
    a.summary = None
    for pid, pb in b.producers.items():
        mine = a.producers.get(pid)
        if mine is None:
            a.producers[pid] = pb
            continue
        a.producers[pid] = ProducerInBucket(
            events=mine.events + pb.events,
            skewed=mine.skewed + pb.skewed,
            duplicates=mine.duplicates + pb.duplicates,
            min_seq=min(x for x in (mine.min_seq, pb.min_seq) if x)
            if mine.min_seq or pb.min_seq
            else 0,
            max_seq=max(mine.max_seq, pb.max_seq),
        )
