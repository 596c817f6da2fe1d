"""LocalDelivery's own promises, each checked on real files and a real ledger.

What a 200 stands for after a group commit: every new event of the group is in a part
file, each part's committed length is its size (so a restart moves nothing aside), and
the bucket, stream and part rows say what the files hold. Also what the delivery does
when it must not write (closed, or fenced off), how it opens a data directory (a
foreign one is refused, an adopted one cleaned up, a partition's ledger in its own
directory), and the completeness gauges' cache. Time is an injected clock.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import (
    END_SONG,
    HOUR,
    PAGE_VIEW,
    T0,
    BatchMaker,
    FakeClock,
    OpenDelivery,
    closed_markers,
    expected_uids,
    ingest,
    part_files,
    read_uids,
    stream,
)

from spotify_events.collector.datadir import DataDirError, FileModes
from spotify_events.collector.delivery import COMPLETENESS_MAX_AGE, LocalDelivery
from spotify_events.collector.ledger import LEDGER_FILE
from spotify_events.collector.partitions import PARTITIONS_DIR, partition_layout
from spotify_events.collector.report import load_report
from spotify_events.collector.seam import DeliveryConfig, DeliveryStatus
from spotify_events.schemas import SchemaRegistry

TS = int((T0 + 30) * 1000)


def incidents(d: LocalDelivery) -> list[dict[str, Any]]:
    return list(d.report()["incidents"])


def test_new_events_after_an_all_duplicate_run_in_the_same_batch_are_written_and_counted(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A batch whose first run is all retries and whose second run is new: the new events
    are in the part file and every count says so (nothing is skipped after the empty run)."""
    d = open_delivery()
    first = maker.envelopes(END_SONG, [1, 2, 3], TS)
    d.deliver(ingest(collector_registry, maker.body(first), clock))
    mixed = first + maker.envelopes(PAGE_VIEW, [1, 2], TS)
    result = d.deliver(ingest(collector_registry, maker.body(mixed), clock))
    assert (result.status, result.accepted, result.duplicates) == (DeliveryStatus.OK, 2, 3)
    assert result.accepted_by_type == {PAGE_VIEW: 2}
    assert result.duplicates_by_type == {END_SONG: 3}
    data = tmp_path / "data"
    assert read_uids(data) == expected_uids("producer-a", END_SONG, [1, 2, 3]) + expected_uids(
        "producer-a", PAGE_VIEW, [1, 2]
    )
    buckets = {b["event_type"]: b for b in d.report()["buckets"]}
    assert (buckets[PAGE_VIEW]["events"], buckets[END_SONG]["events"]) == (2, 3)
    assert [p["events"] for p in buckets[PAGE_VIEW]["parts"]] == [2]
    assert buckets[PAGE_VIEW]["producers"][0]["events"] == 2
    assert stream(d.report(), "producer-a", PAGE_VIEW)["received"] == 2


def test_an_all_duplicate_batch_without_watermarks_is_acknowledged_and_its_count_kept(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
) -> None:
    d = open_delivery()
    envs = maker.envelopes(END_SONG, [1, 2], TS)
    d.deliver(ingest(collector_registry, maker.body(envs), clock))
    again = d.deliver(ingest(collector_registry, maker.body(envs, next_seq={}), clock))
    assert (again.status, again.accepted, again.duplicates) == (DeliveryStatus.OK, 0, 2)
    d.close()
    d2 = open_delivery()
    assert stream(d2.report(), "producer-a", END_SONG)["duplicates"] == 2
    (bucket,) = d2.report()["buckets"]
    assert (bucket["events"], bucket["duplicates"]) == (2, 2)


def test_a_part_appended_to_by_several_commits_reopens_whole_and_its_rows_match_the_file(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Three commits append to one part: its committed length is the file's size, so a
    restart moves nothing aside, and the bucket and part rows count every record."""
    data = tmp_path / "data"
    d = open_delivery()
    for seqs in ([1, 2], [3, 4, 5], [6]):
        result = d.deliver(
            ingest(collector_registry, maker.body(maker.envelopes(END_SONG, seqs, TS)), clock)
        )
        assert (result.status, result.accepted) == (DeliveryStatus.OK, len(seqs))
    d.close()
    (part,) = part_files(data)
    size = part.stat().st_size
    d2 = open_delivery()
    assert incidents(d2) == []
    assert not (data / "_quarantine").exists()
    assert part.stat().st_size == size
    (bucket,) = d2.report()["buckets"]
    assert bucket["events"] == 6
    assert [(p["events"], p["bytes"]) for p in bucket["parts"]] == [(6, size)]
    assert bucket["producers"][0]["events"] == 6
    more = d2.deliver(
        ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [7], TS)), clock)
    )
    assert (more.status, more.accepted) == (DeliveryStatus.OK, 1)
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 8))
    clock.now = T0 + HOUR + 600
    assert d2.close_due_buckets() == 1
    (marker,) = closed_markers(data)
    assert marker["events"] == 7 and [p["events"] for p in marker["parts"]] == [7]


def test_a_closed_delivery_writes_nothing_and_says_it_is_shutting_down(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    d = open_delivery()
    d.deliver(ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [1], TS)), clock))
    d.close()
    body = maker.body(maker.envelopes(END_SONG, [2, 3], TS))
    results = [
        d.deliver(ingest(collector_registry, body, clock)),
        *d.deliver_all([ingest(collector_registry, body, clock)] * 2),
    ]
    for r in results:
        assert (r.status, r.message, r.accepted) == (
            DeliveryStatus.UNAVAILABLE,
            "collector is shutting down",
            0,
        )
    clock.now = T0 + 2 * HOUR
    assert d.close_due_buckets() == 0
    assert closed_markers(tmp_path / "data") == []
    assert read_uids(tmp_path / "data") == expected_uids("producer-a", END_SONG, [1])


def test_deliver_all_commits_every_batch_once_and_a_failing_fence_writes_nothing(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    d = open_delivery()
    b1 = maker.body(maker.envelopes(END_SONG, [1, 2], TS))
    b2 = maker.body(maker.envelopes(END_SONG, [2, 3], TS))

    def lost_ownership() -> None:
        raise RuntimeError("partition 3 is owned by another worker")

    fenced = d.deliver_all([ingest(collector_registry, b, clock) for b in (b1, b2)], lost_ownership)
    assert [(r.status, r.message) for r in fenced] == [
        (DeliveryStatus.UNAVAILABLE, "not written: partition 3 is owned by another worker")
    ] * 2
    assert part_files(tmp_path / "data") == []
    fences: list[int] = []
    results = d.deliver_all(
        [ingest(collector_registry, b, clock) for b in (b1, b2)], lambda: fences.append(1)
    )
    assert fences == [1]
    assert [(r.status, r.accepted, r.duplicates) for r in results] == [
        (DeliveryStatus.OK, 2, 0),
        (DeliveryStatus.OK, 1, 1),
    ]
    assert read_uids(tmp_path / "data") == expected_uids("producer-a", END_SONG, [1, 2, 3])


def test_completeness_is_walked_at_most_once_per_interval_and_never_waits_for_the_lock(
    open_delivery: OpenDelivery,
    collector_registry: SchemaRegistry,
    maker: BatchMaker,
    clock: FakeClock,
) -> None:
    d = open_delivery()
    d.deliver(ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [1], TS)), clock))
    first = d.completeness()
    assert first is not None
    assert d.completeness() is first  # the same instant: the cached figures
    clock.now += COMPLETENESS_MAX_AGE - 0.001
    assert d.completeness() is first
    clock.now += 0.001  # exactly COMPLETENESS_MAX_AGE later: walked again
    second = d.completeness()
    assert second is not None and second is not first
    clock.now -= 2 * COMPLETENESS_MAX_AGE  # a clock stepped back that far: walked again
    third = d.completeness()
    assert third is not second
    # the lock is free after a walk: a batch still goes through
    more = d.deliver(
        ingest(collector_registry, maker.body(maker.envelopes(END_SONG, [2], TS)), clock)
    )
    assert more.accepted == 1
    # while a group commit holds the lock, a scrape gets the previous figures at once
    clock.now += 10 * COMPLETENESS_MAX_AGE
    answers: list[object] = []
    with d._lock:
        scraper = threading.Thread(target=lambda: answers.append(d.completeness()))
        scraper.start()
        scraper.join(timeout=10)
        assert not scraper.is_alive()
    assert answers == [third]


def test_a_data_dir_with_files_but_no_ledger_is_refused_naming_them(
    tmp_path: Path, collector_registry: SchemaRegistry, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(7):
        (data / f"stray-{i}.txt").write_text("not ours")
    with pytest.raises(DataDirError) as info:
        LocalDelivery(data, collector_registry, clock=clock)
    assert str(info.value) == (
        f"{data} holds files (stray-0.txt, stray-1.txt, stray-2.txt, stray-3.txt, "
        "stray-4.txt) but no collector ledger. If the ledger was lost, restore it from a "
        "backup; to start a new ledger here anyway, pass --adopt-data-dir (bucket files the "
        "new ledger does not know are moved to _quarantine, nothing is deleted)."
    )
    assert not (data / "_quarantine").exists()
    assert sorted(p.name for p in data.glob("stray-*")) == [f"stray-{i}.txt" for i in range(7)]
    # the lock was given back: another attempt gets the same answer, not "locked"
    with pytest.raises(DataDirError, match="but no collector ledger"):
        LocalDelivery(data, collector_registry, clock=clock)


def test_an_adopted_data_dir_gets_a_ledger_and_its_unknown_parts_are_moved_aside(
    tmp_path: Path, collector_registry: SchemaRegistry, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    stray = data / END_SONG / "2026-01-01" / "10" / "part-0000000000000000-0000.avro"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"Obj\x01old")
    cfg = DeliveryConfig(adopt_data_dir=True, modes=FileModes.group_readable())
    d = LocalDelivery(data, collector_registry, config=cfg, clock=clock)
    try:
        assert [i["kind"] for i in incidents(d)] == ["unknown_part_file"]
    finally:
        d.close()
    assert not stray.exists()
    (kept,) = (data / "_quarantine").rglob(stray.name)
    assert kept.read_bytes() == b"Obj\x01old"
    assert stat.S_IMODE(os.stat(data / LEDGER_FILE).st_mode) == 0o640


def test_a_partition_keeps_its_ledger_in_its_own_directory(
    tmp_path: Path, collector_registry: SchemaRegistry, maker: BatchMaker, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    layout = partition_layout(3)
    modes = FileModes.group_readable()
    d = LocalDelivery(
        data, collector_registry, config=DeliveryConfig(modes=modes), clock=clock, layout=layout
    )
    try:
        body = maker.body(maker.envelopes(END_SONG, [1, 2], TS))
        assert d.deliver(ingest(collector_registry, body, clock)).accepted == 2
    finally:
        d.close()
    ledger_dir = data / PARTITIONS_DIR / "p0003"
    assert (ledger_dir / LEDGER_FILE).is_file()
    assert not (data / LEDGER_FILE).exists()
    assert stat.S_IMODE(os.stat(ledger_dir).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(ledger_dir / LEDGER_FILE).st_mode) == 0o640
    (part,) = part_files(data)
    assert part.name.startswith("part-p0003-")
    assert stream(load_report(data, now=clock.now), "producer-a", END_SONG)["received"] == 2


def test_the_ledger_remembers_the_grace_period_and_lateness_for_offline_reports(
    open_delivery: OpenDelivery, clock: FakeClock, tmp_path: Path
) -> None:
    open_delivery(grace_period=42.5, lateness=75.0).close()
    report = load_report(tmp_path / "data", now=clock.now)
    assert (report["grace_period"], report["lateness"]) == (42.5, 75.0)
