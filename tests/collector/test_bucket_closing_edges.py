"""Closing hourly buckets, and what a restart makes of closed and open ones.

A bucket closes once its hour plus the lateness has passed: its part files are closed,
its ``_CLOSED.json`` (in its own directory, under the layout's name) lists exactly its
own parts and counts, and nothing is written into it again, even when the ledger does
not know it was closed (a crash between the marker and the ledger commit, or an
adopted data directory). Real files, real ledger, an injected clock.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from collector_helpers import (
    END_SONG,
    HOUR,
    PAGE_VIEW,
    T0,
    BatchMaker,
    FakeClock,
    OpenDelivery,
    expected_uids,
    part_files,
    read_uids,
)

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.ledger import LEDGER_FILE
from spotify_events.collector.partitions import partition_layout
from spotify_events.collector.seam import DeliveryConfig, DeliveryResult, DeliveryStatus
from spotify_events.schemas import SchemaRegistry

LATENESS = 600.0


def post(
    d: LocalDelivery, maker: BatchMaker, clock: FakeClock, etype: str, seqs: Any, at: float
) -> DeliveryResult:
    body = maker.body(maker.envelopes(etype, seqs, int(at * 1000)))
    result = d.deliver(Ingest(maker.registry, clock=clock).parse(body))
    assert result.status is DeliveryStatus.OK, result.message
    return result


def bucket_path(data: Path, etype: str, hour: int) -> Path:
    return data / etype / "2026-01-01" / f"{hour:02d}"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_closing_one_bucket_closes_only_its_own_parts_and_the_others_go_on(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """Three open buckets: (EndSong, 10:00), (EndSong, 11:00), (PageView, 10:00). Closing
    10:00 of EndSong writes its marker in its own directory with its own part and the
    clock's time, closes its file, and leaves the other two appending to their parts."""
    data = tmp_path / "data"
    d = open_delivery()
    clock.now = T0 + HOUR + 60
    post(d, maker, clock, END_SONG, [1, 2], T0 + 30)
    post(d, maker, clock, END_SONG, [3], T0 + HOUR + 30)
    post(d, maker, clock, PAGE_VIEW, [1], T0 + 30)
    assert d.open_files() == 3
    clock.now = T0 + HOUR + LATENESS - 1
    assert d.close_due_buckets() == 0
    clock.now = T0 + HOUR + LATENESS
    assert d.close_due_buckets() == 2  # 10:00 of both types
    assert d.open_files() == 1
    ten = bucket_path(data, END_SONG, 10)
    marker = json.loads((ten / "_CLOSED.json").read_text())
    assert not (data / "_CLOSED.json").exists()
    assert (marker["closed"], marker["closed_at"], marker["events"]) == (True, clock.now, 2)
    (only,) = part_files(ten)
    assert [p["file"] for p in marker["parts"]] == [only.name]
    assert (
        json.loads((bucket_path(data, PAGE_VIEW, 10) / "_CLOSED.json").read_text())["events"] == 1
    )
    # 11:00 stays open and keeps appending to its one part
    post(d, maker, clock, END_SONG, [4], T0 + HOUR + 40)
    eleven = bucket_path(data, END_SONG, 11)
    assert not (eleven / "_CLOSED.json").exists()
    assert len(part_files(eleven)) == 1
    clock.now = T0 + 2 * HOUR + LATENESS
    assert d.close_due_buckets() == 1
    assert json.loads((eleven / "_CLOSED.json").read_text())["events"] == 2
    assert d.open_files() == 0


def test_a_rolled_over_bucket_closes_every_one_of_its_parts(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery(max_part_bytes=1024, codec="null")
    seq = 1
    while len(part_files(data)) < 2:
        post(d, maker, clock, END_SONG, range(seq, seq + 5), T0 + 30)
        seq += 5
    clock.now = T0 + HOUR + LATENESS
    assert d.close_due_buckets() == 1
    marker = json.loads((bucket_path(data, END_SONG, 10) / "_CLOSED.json").read_text())
    assert [p["file"] for p in marker["parts"]] == [p.name for p in part_files(data)]
    assert marker["events"] == seq - 1 and d.open_files() == 0


def test_a_partition_closes_a_bucket_under_its_own_marker_name(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery(layout=partition_layout(3))
    post(d, maker, clock, END_SONG, [1], T0 + 30)
    clock.now = T0 + HOUR + LATENESS
    assert d.close_due_buckets() == 1
    assert sorted(p.name for p in bucket_path(data, END_SONG, 10).glob("_CLOSED*")) == [
        "_CLOSED.p0003.json"
    ]


def test_after_a_restart_open_buckets_still_close_and_closed_parts_are_left_alone(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery()
    clock.now = T0 + HOUR + 60
    post(d, maker, clock, END_SONG, [1], T0 + 30)
    post(d, maker, clock, END_SONG, [2], T0 + HOUR + 30)
    clock.now = T0 + HOUR + LATENESS
    assert d.close_due_buckets() == 1
    d.close()
    ten = bucket_path(data, END_SONG, 10)
    (closed_part,) = part_files(ten)
    with open(closed_part, "ab") as fh:  # a closed bucket is not the collector's to repair
        fh.write(b"appended by someone else")
    before = snapshot(ten)
    d = open_delivery()
    assert [i for i in d.report()["incidents"]] == []
    assert snapshot(ten) == before
    clock.now = T0 + 2 * HOUR + LATENESS
    assert d.close_due_buckets() == 1
    assert (bucket_path(data, END_SONG, 11) / "_CLOSED.json").exists()


def test_a_marker_the_ledger_never_recorded_still_closes_the_bucket(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """A crash after ``_CLOSED.json`` was written but before the ledger said closed: on
    restart the marker is trusted, recorded, and the hour is never written again."""
    data = tmp_path / "data"
    d = open_delivery()
    post(d, maker, clock, END_SONG, [1, 2], T0 + 30)
    d.close()
    older = tmp_path / "ledger-before-close.db"
    shutil.copyfile(data / LEDGER_FILE, older)
    clock.now = T0 + HOUR + LATENESS
    d = open_delivery()
    assert d.close_due_buckets() == 1
    d.close()
    closed_at = clock.now
    for suffix in ("-wal", "-shm"):
        (data / (LEDGER_FILE + suffix)).unlink(missing_ok=True)
    shutil.copyfile(older, data / LEDGER_FILE)
    ten = bucket_path(data, END_SONG, 10)
    before = snapshot(ten)
    clock.now = T0 + 60  # and the clock stepped back: 10:00 looks open
    d = open_delivery()
    (bucket,) = d.report()["buckets"]
    assert (bucket["closed"], bucket["closed_at"]) == (True, closed_at)
    result = post(d, maker, clock, END_SONG, [3], T0 + 40)
    assert (result.accepted, result.skewed) == (1, 1)
    assert snapshot(ten) == before
    d.close()
    d = open_delivery()  # the ledger now says closed itself
    closed = {b["hour"]: b["closed"] for b in d.report()["buckets"]}
    assert closed == {"2026-01-01T10:00Z": True, "2026-01-01T11:00Z": False}
    assert read_uids(data) == expected_uids("producer-a", END_SONG, [1, 2, 3])


def test_a_closed_hour_the_ledger_does_not_know_is_never_written_again(
    tmp_path: Path, collector_registry: SchemaRegistry, maker: BatchMaker, clock: FakeClock
) -> None:
    """An adopted data directory holding a closed bucket: its files stay as they are, its
    marker's time is kept, and events of that hour go to the next open hour."""
    data = tmp_path / "data"
    ten = bucket_path(data, END_SONG, 10)
    ten.mkdir(parents=True)
    (ten / "part-0000000000000000-0000.avro").write_bytes(b"Obj\x01from before")
    (ten / "_CLOSED.json").write_text(
        json.dumps(
            {
                "event_type": END_SONG,
                "hour": "2026-01-01T10:00Z",
                "events": 7,
                "closed": True,
                "closed_at": 123.0,
            }
        )
    )
    before = snapshot(ten)
    cfg = DeliveryConfig(adopt_data_dir=True, lateness=LATENESS)
    d = LocalDelivery(data, collector_registry, config=cfg, clock=clock)
    try:
        result = post(d, maker, clock, END_SONG, [1], T0 + 30)
        assert (result.accepted, result.skewed) == (1, 1)
        buckets = {b["hour"]: b for b in d.report()["buckets"]}
        assert (
            buckets["2026-01-01T10:00Z"]["closed"],
            buckets["2026-01-01T10:00Z"]["closed_at"],
        ) == (True, 123.0)
        assert buckets["2026-01-01T11:00Z"]["events"] == 1
    finally:
        d.close()
    assert snapshot(ten) == before
    assert [p.parent.name for p in part_files(data / END_SONG)] == ["10", "11"]
