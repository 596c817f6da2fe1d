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

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import SpotifyEventsError
from .buckets import CLOSED_MARKER, part_name, read_marker
from .datadir import O_CLOEXEC, O_DIRECTORY, fsync_dir
from .ledger import (
    COLLECTOR_INCIDENT_PREFIX,
    COLLECTOR_SOURCE,
    LEDGER_FILE,
    BucketState,
    Ledger,
    LedgerState,
    ProducerInBucket,
    StreamState,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

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


class HourClosedError(SpotifyEventsError):
    """A partition's first part file in an hour that every partition has closed."""


@contextlib.contextmanager
def hour_lock(hour_dir: str) -> Iterator[None]:
    """An exclusive ``flock`` on an hour directory. A partition creates its first part
    file in the hour under it, after checking there is no ``_CLOSED.json``, and the
    marker is written under it from the part files then present: either the marker
    counts the partition, or the partition sees the marker and writes elsewhere."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(hour_dir, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


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
    """The ledger of a data directory: the root's, or every partition's added up; a
    partition directory without a ledger is a collector incident of the result."""
    dirs = ledger_dirs(data_dir) or [os.fspath(data_dir)]  # the last one raises "no ledger"
    merged = LedgerState()
    for directory in dirs:
        ledger = Ledger(directory, read_only=True)
        try:
            _merge(merged, ledger.load(), several=len(dirs) > 1)
        finally:
            ledger.close()
    parts = os.path.join(os.fspath(data_dir), PARTITIONS_DIR)
    for name in sorted(os.listdir(parts)) if os.path.isdir(parts) else []:
        directory = os.path.join(parts, name)
        if directory not in dirs and os.path.isdir(directory):
            merged.meta[f"{COLLECTOR_INCIDENT_PREFIX}no-ledger:{name}"] = json.dumps(
                {
                    "producer_id": COLLECTOR_SOURCE,
                    "kind": "partition_ledger_missing",
                    "detail": f"{PARTITIONS_DIR}/{name} has no ledger: the events of that "
                    "partition are not counted here (restore its ledger from a backup)",
                    "at": os.stat(directory).st_mtime,
                }
            )
    return merged


def _merge(into: LedgerState, state: LedgerState, *, several: bool) -> None:
    for name, value in state.meta.items():
        into.meta.setdefault(name, value)
    into.parts.update(state.parts)
    for skey, st in state.streams.items():
        mine = into.streams.get(skey)
        if mine is None:
            into.streams[skey] = st
            continue
        twice = _merge_stream(mine, st)
        if twice:  # each ledger deduplicated only its own: these are in the buckets twice
            producer, etype = skey
            key = f"{COLLECTOR_INCIDENT_PREFIX}twice:{producer}:{etype}"
            earlier = json.loads(into.meta[key])["count"] if key in into.meta else 0
            into.meta[key] = json.dumps(
                {
                    "producer_id": COLLECTOR_SOURCE,
                    "kind": "delivered_by_two_partitions",
                    "count": earlier + twice,
                    "detail": f"{earlier + twice} event(s) of producer {producer}, {etype}, "
                    "were delivered by more than one partition (a batch retried across a "
                    "change of partition count): they are in the buckets twice",
                    "at": mine.last_seen,
                }
            )
    for bkey, b in state.buckets.items():
        mine_b = into.buckets.get(bkey)
        if mine_b is None:
            if several:  # a closed partition's summary covers only that partition
                b.summary = None
            into.buckets[bkey] = b
        else:
            _merge_bucket(mine_b, b)


def _merge_stream(a: StreamState, b: StreamState) -> int:
    """One (producer, type) seen by two partitions: only after a change of partition count.
    Adds ``b`` into ``a``; returns how many numbers both had received."""
    separately = a.received.count() + b.received.count()
    a.received.update(b.received)
    twice = separately - a.received.count()
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
    return twice


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


def finalize_hours(
    data_dir: str | os.PathLike[str], *, now: float, lateness: float, settle: float
) -> list[str]:
    """Write ``_CLOSED.json`` in each hour directory every partition has closed.

    An hour is closed for partition p when p wrote ``_CLOSED.<tag>.json`` there; a
    partition without part files in the directory had nothing for that hour, and
    after the hour's deadline (hour end + lateness) it never will: delivery puts
    later arrivals in the current hour. ``settle`` covers a commit that began just
    before the deadline; one that reaches the hour later still finds the marker under
    :func:`hour_lock` and fails (its messages come back, for the current hour) rather
    than add a partition the marker does not count. The marker is written under a unique temporary name and
    linked into place, so two workers finishing the same hour never overwrite each
    other. Returns the directories closed now.
    """
    root = os.fspath(data_dir)
    closed = []
    with os.scandir(root) as entries:
        type_dirs = [e.path for e in entries if e.is_dir() and not e.name.startswith("_")]
    for type_dir in type_dirs:
        for day in _subdirs(type_dir):
            for hour_dir in _subdirs(day):
                if os.path.exists(os.path.join(hour_dir, CLOSED_MARKER)):
                    continue
                hour = _hour_of_dir(day, hour_dir)
                if hour is None or now < (hour + 1) * 3600 + lateness + settle:
                    continue
                with hour_lock(hour_dir):
                    if _close_hour(hour_dir, now):
                        closed.append(hour_dir)
    return closed


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.path for e in entries if e.is_dir())


def _hour_of_dir(day_dir: str, hour_dir: str) -> int | None:
    try:
        when = datetime.strptime(
            f"{os.path.basename(day_dir)} {os.path.basename(hour_dir)}", "%Y-%m-%d %H"
        ).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(when.timestamp()) // 3600


def _close_hour(hour_dir: str, now: float) -> bool:
    names = os.listdir(hour_dir)
    tags = {n.split("-")[1] for n in names if n.startswith("part-p") and n.endswith(".avro")}
    summaries = []
    for tag in sorted(tags):
        summary = read_marker(hour_dir, f"_CLOSED.{tag}.json")
        if summary is None:
            return False  # that partition has not closed the hour yet
        summaries.append(summary)
    if not summaries:
        return False
    events = sum(s["events"] for s in summaries)
    missing = sum(s["missing"] for s in summaries)
    merged = {
        "event_type": summaries[0]["event_type"],
        "hour": summaries[0]["hour"],
        "path": summaries[0]["path"],
        "closed": True,
        "closed_at": now,
        "partitions": sorted(tags),
        "events": events,
        "skewed": sum(s["skewed"] for s in summaries),
        "duplicates": sum(s["duplicates"] for s in summaries),
        "missing": missing,
        "completeness": round(events / (events + missing), 6) if events + missing else 1.0,
        "parts": [p for s in summaries for p in s["parts"]],
        "producers": [p for s in summaries for p in s["producers"]],
    }
    final = os.path.join(hour_dir, CLOSED_MARKER)
    tmp = os.path.join(hour_dir, f".{CLOSED_MARKER}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(merged, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, final)  # fails if another worker closed the hour first
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    fsync_dir(hour_dir)
    return True
