"""In-process tests of the delivery half: ledger, dedupe, loss, buckets, closing, recovery.

Time is a :class:`FakeClock` the tests move, so bucket closing and the grace
period are exercised without waiting.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest
from collector_helpers import (
    END_SONG,
    HOUR,
    PAGE_VIEW,
    T0,
    BatchMaker,
    FakeClock,
    closed_markers,
    expected_uids,
    ingest,
    ms,
    part_files,
    read_uids,
    stream,
)
from support import SCHEMAS

from spotify_events.collector.delivery import (
    FAILPOINT_AFTER_COMMIT,
    FAILPOINT_AFTER_WRITE,
    LocalDelivery,
)
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.ranges import RangeSet
from spotify_events.collector.report import load_report
from spotify_events.collector.seam import DeliveryStatus
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import DropNotice


def test_rangeset_add_merge_difference() -> None:
    r = RangeSet()
    assert all(r.add(n) for n in (1, 2, 3, 7, 5, 6))
    assert not r.add(2)
    assert list(r) == [(1, 3), (5, 7)]
    r.add(4)
    assert list(r) == [(1, 7)]
    r.add_range(10, 12)
    r.add_range(8, 9)
    assert list(r) == [(1, 12)]
    assert r.difference(RangeSet([(3, 4), (10, 20)])).to_list() == [[1, 2], [5, 9]]
    assert r.clipped(5, 100).to_list() == [[5, 12]]
    assert RangeSet.from_json(r.to_json()) == r
    assert r.count() == 12


def test_exactly_once_and_duplicates(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    d = open_delivery()
    body = maker.body(maker.envelopes(END_SONG, range(1, 501), ms(T0 + 30)))
    first = d.deliver(ingest(collector_registry, body, clock))
    again = d.deliver(ingest(collector_registry, body, clock))
    assert (first.status, first.accepted, first.duplicates) == (DeliveryStatus.OK, 500, 0)
    assert (again.accepted, again.duplicates) == (0, 500)
    data = tmp_path / "data"
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 501))
    s = stream(d.report(), "producer-a", END_SONG)
    assert (s["received"], s["duplicates"], s["open_gaps"], s["lost"]) == (500, 500, 0, 0)
    # the files are plain Avro containers with the event's own schema
    (part,) = part_files(data)
    assert part.parent.relative_to(data).as_posix() == f"{END_SONG}/2026-01-01/10"
    with open(part, "rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.writer_schema["name"] == END_SONG
        assert sum(1 for _ in reader) == 500


def test_failpoint_hook_is_called_after_the_fsync_and_after_the_ledger_commit(
    tmp_path: Path, collector_registry: SchemaRegistry, maker: BatchMaker, clock: FakeClock
) -> None:
    """Crash tests stop the process at these two points (tests/failpoints.py): the hook
    is the only way in, called once per group commit at each, in this order."""
    data = tmp_path / "data"
    seen: list[tuple[str, int]] = []

    def failpoint(name: str) -> None:
        seen.append((name, sum(p.stat().st_size for p in part_files(data))))

    d = LocalDelivery(data, collector_registry, clock=clock, failpoint=failpoint)
    try:
        body = maker.body(maker.envelopes(END_SONG, range(1, 11), ms(T0 + 30)))
        assert d.deliver(ingest(collector_registry, body, clock)).accepted == 10
    finally:
        d.close()
    (written, written_size), (committed, committed_size) = seen
    assert (written, committed) == (FAILPOINT_AFTER_WRITE, FAILPOINT_AFTER_COMMIT)
    assert written_size > 0 and committed_size == written_size  # bytes fsynced before either


def test_drop_notice_is_dropped_not_lost(
    open_delivery: Any, collector_registry: SchemaRegistry, maker: BatchMaker, clock: FakeClock
) -> None:
    d = open_delivery()
    envs = maker.envelopes(END_SONG, [1, 2, 3, 8, 9, 10], ms(T0))
    drops = [
        DropNotice(END_SONG, 4, 6, 3, "queue full"),
        DropNotice(END_SONG, 7, 7, 1, "rejected: schema mismatch"),
        DropNotice(END_SONG, 2, 2, 1, "queue full"),  # received anyway: counts as received
    ]
    d.deliver(ingest(collector_registry, maker.body(envs, drops=drops), clock))
    clock.now += 10_000  # far past the grace period
    s = stream(d.report(), "producer-a", END_SONG)
    assert s["received"] == 6
    assert (s["dropped"], s["dropped_reasons"]) == (3, {"queue full": 3})
    assert (s["rejected"], s["rejected_reasons"]) == (1, {"rejected: schema mismatch": 1})
    assert (s["open_gaps"], s["lost"]) == (0, 0)


def test_gap_is_open_then_lost_after_grace(
    open_delivery: Any, collector_registry: SchemaRegistry, maker: BatchMaker, clock: FakeClock
) -> None:
    d = open_delivery(grace_period=120.0)
    envs = maker.envelopes(END_SONG, [1, 2, 4, 5], ms(T0))
    d.deliver(ingest(collector_registry, maker.body(envs, next_seq={END_SONG: 8}), clock))
    s = stream(d.report(), "producer-a", END_SONG)
    assert (s["open_gaps"], s["lost"], s["gap_ranges"]) == (3, 0, [[3, 3], [6, 7]])
    clock.now += 60
    # a heartbeat raises the watermark later: 8..9 start their own grace period
    heartbeat = maker.body([], next_seq={END_SONG: 10})
    assert d.deliver(ingest(collector_registry, heartbeat, clock)).accepted == 0
    clock.now += 61
    s = stream(d.report(), "producer-a", END_SONG)
    assert (s["lost"], s["open_gaps"]) == (3, 2)
    clock.now += 60
    s = stream(d.report(), "producer-a", END_SONG)
    assert (s["lost"], s["open_gaps"]) == (5, 0)
    # a late arrival turns a lost number back into received
    d.deliver(ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [3], ms(T0))), clock))
    s = stream(d.report(), "producer-a", END_SONG)
    assert (s["received"], s["lost"]) == (5, 4)


def test_bucket_closes_with_marker_and_skewed_event_goes_to_open_bucket(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    d = open_delivery(lateness=600.0)
    data = tmp_path / "data"
    d.deliver(
        ingest(
            collector_registry,
            maker.body(maker.envelopes(END_SONG, range(1, 11), ms(T0 + 5))),
            clock,
        )
    )
    assert d.close_due_buckets() == 0  # the hour is not over
    clock.now = T0 + HOUR + 599
    assert d.close_due_buckets() == 0  # within the lateness window
    clock.now = T0 + HOUR + 600
    assert d.close_due_buckets() == 1
    (marker,) = closed_markers(data)
    assert marker["closed"] is True
    assert (marker["events"], marker["skewed"], marker["completeness"]) == (10, 0, 1.0)
    closed_dir = data / END_SONG / "2026-01-01" / "10"
    before = {p.name: p.stat().st_size for p in closed_dir.iterdir()}
    # an event for the closed hour is skewed into the bucket open now (11:00), never dropped
    late = maker.envelopes(END_SONG, [11], ms(T0 + 10))
    result = d.deliver(ingest(collector_registry, maker.body(late), clock))
    assert (result.accepted, result.skewed) == (1, 1)
    assert {p.name: p.stat().st_size for p in closed_dir.iterdir()} == before
    open_dir = data / END_SONG / "2026-01-01" / "11"
    assert [p.name.startswith("part-") for p in open_dir.iterdir()] == [True]
    report = d.report()
    buckets = {b["path"]: b for b in report["buckets"]}
    assert buckets[f"{END_SONG}/2026-01-01/11"]["skewed"] == 1
    assert buckets[f"{END_SONG}/2026-01-01/11"]["closed"] is False
    assert buckets[f"{END_SONG}/2026-01-01/10"]["closed"] is True
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 12))


def test_closing_happens_at_ingest_time_too(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    d = open_delivery(lateness=0.0)
    d.deliver(
        ingest(collector_registry, maker.body(maker.envelopes(PAGE_VIEW, [1], ms(T0))), clock)
    )
    clock.now = T0 + HOUR
    d.deliver(ingest(collector_registry, maker.body([], next_seq={PAGE_VIEW: 2}), clock))
    assert len(closed_markers(tmp_path / "data")) == 1


def test_schema_versions_get_separate_part_files(
    tmp_path: Path, maker: BatchMaker, clock: FakeClock
) -> None:
    base = maker.registry.get(END_SONG).raw
    v2 = dict(base)
    v2["fields"] = [*base["fields"], {"name": "extra", "type": "int", "default": 0}]
    registry = SchemaRegistry([base, v2])
    d = LocalDelivery(tmp_path / "data", registry, clock=clock)
    try:
        m1 = BatchMaker(registry, "p")
        schema1, schema2 = registry.versions(END_SONG)
        env1 = m1.envelope(END_SONG, 1, ms(T0))._replace(
            fingerprint=schema1.fingerprint,
            payload=fastavro_payload(schema1.parsed, _end_song()),
        )
        payload2 = fastavro_payload(schema2.parsed, {**_end_song(), "extra": 5})
        env2 = env1._replace(seq=2, fingerprint=schema2.fingerprint, payload=payload2)
        batch = Ingest(registry, clock=clock).parse(m1.body([env1, env2]))
        assert batch.rejections == []
        assert d.deliver(batch).accepted == 2
    finally:
        d.close()
    names = sorted(p.name for p in part_files(tmp_path / "data"))
    assert len(names) == 2 and names[0] != names[1]
    for p in part_files(tmp_path / "data"):
        with open(p, "rb") as fh:
            assert len(list(fastavro.reader(fh))) == 1


def _end_song() -> dict[str, Any]:
    return {
        "user_id": "u",
        "track_id": "t",
        "ms_played": 1,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "ios",
        "shuffle": False,
        "offline": False,
        "context_uri": None,
        "conn_country": None,
    }


def fastavro_payload(parsed: Any, record: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def test_restart_moves_uncommitted_tail_and_unknown_parts_to_quarantine(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    d = open_delivery()
    d.deliver(
        ingest(
            collector_registry,
            maker.body(maker.envelopes(END_SONG, range(1, 101), ms(T0))),
            clock,
        )
    )
    d.close()
    (part,) = part_files(data)
    good_size = part.stat().st_size
    # simulate a crash after the write, before the ledger commit: a torn tail ...
    with open(part, "ab") as fh:
        fh.write(b"\x00garbage-from-a-torn-write" * 10)
    # ... and a part file of a bucket the ledger never heard of
    stray = data / PAGE_VIEW / "2026-01-01" / "10" / "part-0000000000000000-0000.avro"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"Obj\x01partial")
    d2 = open_delivery()
    assert part.stat().st_size == good_size
    assert not stray.exists()
    # nothing deleted: both sit in the quarantine, beside a note, reported as incidents
    kept = {p.name: p.read_bytes() for p in (data / "_quarantine").rglob("part-*")}
    assert kept[stray.name] == b"Obj\x01partial"
    tail = kept[part.name + ".tail.avro"]
    assert tail.endswith(b"\x00garbage-from-a-torn-write" * 10) and tail.startswith(b"Obj\x01")
    assert len(list((data / "_quarantine").rglob("NOTE.txt"))) == 1
    kinds = {i["kind"] for i in d2.report()["incidents"]}
    assert kinds == {"uncommitted_bytes", "unknown_part_file"}
    # the ledger survived: re-posting is all duplicates, new numbers append cleanly
    body = maker.body(maker.envelopes(END_SONG, range(1, 111), ms(T0)))
    result = d2.deliver(ingest(collector_registry, body, clock))
    assert (result.accepted, result.duplicates) == (10, 100)
    d2.close()
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 111))
    report = load_report(data, now=clock.now)
    assert stream(report, "producer-a", END_SONG)["received"] == 110


def test_failed_write_recovers_and_reports_unavailable(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = open_delivery()
    d.deliver(ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [1], ms(T0))), clock))
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    body = maker.body(maker.envelopes(END_SONG, [2, 3], ms(T0)))
    result = d.deliver(ingest(collector_registry, body, clock))
    assert result.status is DeliveryStatus.UNAVAILABLE and calls["n"] >= 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    # nothing half-done: the retry writes 2 and 3 exactly once
    result = d.deliver(ingest(collector_registry, body, clock))
    assert (result.status, result.accepted) == (DeliveryStatus.OK, 2)
    assert read_uids(tmp_path / "data") == expected_uids("producer-a", END_SONG, [1, 2, 3])


def test_bucket_closer_thread_closes_quiet_hours(
    tmp_path: Path, maker: BatchMaker, clock: FakeClock
) -> None:
    """The timer closes a bucket with no further traffic (real thread, fake clock)."""
    config = CollectorConfig(
        data_dir=str(tmp_path / "data"),
        schemas=str(SCHEMAS),
        lateness=60.0,
        close_interval=0.01,
    )
    c = Collector(config, clock=clock)
    try:
        c.start_closer()
        body = maker.body(maker.envelopes(END_SONG, [1, 2], ms(T0)))
        assert c.delivery.deliver(c.ingest.parse(body)).accepted == 2
        assert closed_markers(tmp_path / "data") == []
        clock.now = T0 + HOUR + 60
        deadline = time.monotonic() + 10
        while not closed_markers(tmp_path / "data") and time.monotonic() < deadline:
            time.sleep(0.01)
        (marker,) = closed_markers(tmp_path / "data")
        assert marker["events"] == 2
    finally:
        c.shutdown()


def test_bucket_counts_each_event_once_when_a_batch_repeats_numbers(
    open_delivery: Any,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Seqs 5-6, then 5-7 (a retry that grew): the bucket holds 5, 6, 7 once each, and
    its count, its part files, the report and ``_CLOSED.json`` all say 3."""
    d = open_delivery(lateness=0.0)
    data = tmp_path / "data"
    for seqs in ([5, 6], [5, 6, 7]):
        body = maker.body(maker.envelopes(END_SONG, seqs, ms(T0 + 5)))
        d.deliver(ingest(collector_registry, body, clock))
    assert read_uids(data) == expected_uids("producer-a", END_SONG, [5, 6, 7])
    (bucket,) = d.report()["buckets"]
    assert (bucket["events"], bucket["duplicates"]) == (3, 2)
    assert [p["events"] for p in bucket["parts"]] == [3]
    (producer,) = bucket["producers"]
    assert (producer["events"], producer["duplicates"]) == (3, 2)
    assert (producer["min_seq"], producer["max_seq"]) == (5, 7)
    clock.now = T0 + HOUR
    assert d.close_due_buckets() == 1
    (marker,) = closed_markers(data)
    assert (marker["events"], marker["duplicates"]) == (3, 2)
    assert [p["events"] for p in marker["parts"]] == [3]
    assert marker["producers"][0]["events"] == 3
