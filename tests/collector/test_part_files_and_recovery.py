"""Part files and recovery: acknowledged bytes are never cut, overwritten or appended
after damage; what the ledger cannot vouch for is moved aside, kept, and said.

Real part files and a real ledger; a crash between the write and the ledger commit is
the ``failpoint`` hook raising there, damage is done to the files by the test.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import fastavro
import pytest
from collector_helpers import (
    END_SONG,
    PAGE_VIEW,
    T0,
    UID_FIELD,
    BatchMaker,
    FakeClock,
    OpenDelivery,
    expected_uids,
    part_files,
    read_uids,
)

from spotify_events.collector.delivery import FAILPOINT_AFTER_WRITE, LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.seam import DeliveryResult, DeliveryStatus

TS = int((T0 + 30) * 1000)


def post(
    d: LocalDelivery, maker: BatchMaker, clock: FakeClock, etype: str, seqs: Any
) -> DeliveryResult:
    body = maker.body(maker.envelopes(etype, seqs, TS))
    return d.deliver(Ingest(maker.registry, clock=clock).parse(body))


def incidents(d: LocalDelivery) -> list[dict[str, Any]]:
    return [i for i in d.report()["incidents"] if i["producer_id"] != "producer-a"]


def note(data: Path) -> str:
    return "".join(p.read_text() for p in sorted((data / "_quarantine").rglob("NOTE.txt")))


def uids_in(path: Path, etype: str = END_SONG) -> list[str]:
    with open(path, "rb") as fh:
        return [r[UID_FIELD[etype]] for r in fastavro.reader(fh)]


def fp_hex(maker: BatchMaker, etype: str = END_SONG) -> str:
    return maker.registry.get(etype).fingerprint.hex()


def test_a_block_written_but_not_committed_is_kept_aside_readable_and_the_retry_lands_once(
    open_delivery: OpenDelivery,
    maker: BatchMaker,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    crash = {"armed": False}

    def failpoint(name: str) -> None:
        if crash["armed"] and name == FAILPOINT_AFTER_WRITE:
            crash["armed"] = False
            raise OSError(5, "Input/output error")

    d = open_delivery(failpoint=failpoint)
    assert post(d, maker, clock, END_SONG, [1, 2]).accepted == 2
    (part,) = part_files(data)
    committed = part.stat().st_size
    crash["armed"] = True
    with caplog.at_level(logging.ERROR, logger="spotify_events.collector.delivery"):
        failed = post(d, maker, clock, END_SONG, [3, 4, 5])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "delivery failed; recovering from the ledger"
    ]
    assert (failed.status, failed.message) == (
        DeliveryStatus.UNAVAILABLE,
        "delivery failed: OSError",
    )
    assert part.stat().st_size == committed
    assert uids_in(part) == ["producer-a:1", "producer-a:2"]
    (copy,) = (data / "_quarantine").rglob(part.name + ".tail.avro")
    assert uids_in(copy) == ["producer-a:3", "producer-a:4", "producer-a:5"]  # header + tail
    where = copy.relative_to(data).as_posix()
    rel = part.relative_to(data).as_posix()
    tail = copy.stat().st_size - len(header_of(part))
    assert note(data) == (
        f"{where}: bytes cut from the end of {rel}: "
        f"{tail} bytes past the committed length {committed}\n"
    )
    (incident,) = incidents(d)
    assert incident["kind"] == "uncommitted_bytes"
    assert incident["detail"] == (
        f"{rel} had {tail} bytes past its committed length (a crash before the ledger "
        "commit, whose events the producer retries, or a ledger older than the files); "
        f"they are kept in {where}"
    )
    retry = post(d, maker, clock, END_SONG, [3, 4, 5])
    assert (retry.status, retry.accepted) == (DeliveryStatus.OK, 3)
    assert uids_in(part) == [f"producer-a:{n}" for n in range(1, 6)]


def header_of(part: Path) -> bytes:
    """The container header of a part: up to its first sync marker, which also ends it."""
    raw = part.read_bytes()
    sync = raw[-16:]
    return raw[: raw.index(sync) + len(sync)]


def test_a_damaged_part_is_moved_aside_once_and_new_events_go_to_the_next_part(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery()
    post(d, maker, clock, END_SONG, [1, 2, 3])
    d.close()
    (part,) = part_files(data)
    assert part.name == f"part-{fp_hex(maker)}-0000.avro"
    size = part.stat().st_size
    with open(part, "r+b") as fh:
        fh.truncate(size - 5)
    damaged = part.read_bytes()
    d = open_delivery()
    rel = part.relative_to(data).as_posix()
    (moved,) = (data / "_quarantine").rglob(part.name)
    where = moved.relative_to(data).as_posix()
    assert moved.read_bytes() == damaged and not part.exists()
    why = f"shorter ({size - 5} bytes) than its committed length {size}"
    assert note(data) == f"{where}: moved from {rel}: damaged: {why}\n"
    (incident,) = incidents(d)
    assert (incident["kind"], incident["detail"]) == (
        "damaged_part_file",
        f"{rel} is {why}; its 3 acknowledged events may be lost or partly readable; "
        f"moved to {where}; new events go to a new part file",
    )
    assert post(d, maker, clock, END_SONG, [4]).accepted == 1
    (new,) = part_files(data)
    assert new.name == f"part-{fp_hex(maker)}-0001.avro"
    assert uids_in(new) == ["producer-a:4"]
    (bucket,) = d.report()["buckets"]
    assert [(p["file"], p["events"], p.get("quarantined")) for p in bucket["parts"]] == [
        (part.name, 3, where),
        (new.name, 1, None),
    ]
    d.close()
    d = open_delivery()  # known as quarantined: not checked, moved or reported again
    assert len(incidents(d)) == 1
    assert post(d, maker, clock, END_SONG, [5]).accepted == 1
    assert uids_in(new) == ["producer-a:4", "producer-a:5"]


def test_a_part_file_gone_missing_is_recorded_as_such(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery()
    post(d, maker, clock, END_SONG, [1, 2])
    d.close()
    (part,) = part_files(data)
    part.unlink()
    d = open_delivery()
    (incident,) = incidents(d)
    assert incident["detail"].endswith("moved to (file missing); new events go to a new part file")
    (bucket,) = d.report()["buckets"]
    assert bucket["parts"][0]["quarantined"] == "(file missing)"
    assert post(d, maker, clock, END_SONG, [3]).accepted == 1
    (new,) = part_files(data)
    assert new.name.endswith("-0001.avro")


def test_a_part_damaged_while_closed_by_the_open_file_limit_is_never_appended_to(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery(max_open_files=1)
    post(d, maker, clock, END_SONG, [1, 2])
    post(d, maker, clock, PAGE_VIEW, [1])  # closes END_SONG's part: one file open at most
    assert d.open_files() == 1
    (song_part,) = part_files(data / END_SONG)
    with open(song_part, "ab") as fh:  # behind the collector's back: no block ends there
        fh.write(b"\x00" * 3)
    with open(song_part, "r+b") as fh:
        fh.seek(song_part.stat().st_size - 20)
        fh.write(b"\xff" * 20)
    result = post(d, maker, clock, END_SONG, [3])
    assert (result.status, result.accepted) == (DeliveryStatus.OK, 1)
    assert [i["kind"] for i in incidents(d)] == ["damaged_part_file"]
    assert not song_part.exists()
    (new,) = part_files(data / END_SONG)
    assert new.name == f"part-{fp_hex(maker)}-0001.avro"
    assert read_uids(data) == expected_uids("producer-a", END_SONG, [3]) + expected_uids(
        "producer-a", PAGE_VIEW, [1]
    )
    assert d.open_files() == 1


def test_a_full_part_is_closed_and_the_next_one_numbered_after_it(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery(max_part_bytes=1024, codec="null")
    seq = 1
    while len(part_files(data)) < 3:
        assert post(d, maker, clock, END_SONG, range(seq, seq + 5)).accepted == 5
        seq += 5
        assert d.open_files() == 1
    names = [p.name for p in part_files(data)]
    assert names == [f"part-{fp_hex(maker)}-{i:04d}.avro" for i in range(3)]
    assert all(p.stat().st_size >= 1024 for p in part_files(data)[:2])
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, seq))
    (bucket,) = d.report()["buckets"]
    assert [p["events"] for p in bucket["parts"]] == [len(uids_in(p)) for p in part_files(data)]
    assert bucket["events"] == seq - 1


def test_when_every_part_of_an_hour_is_damaged_the_next_one_gets_the_first_free_number(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """Two parts of one (type, hour, schema), both damaged, and a torn tail on another
    type's part: at restart both are moved aside, the tail is cut back at once, and the
    next events of the hour go to part 0002."""
    data = tmp_path / "data"
    d = open_delivery(max_part_bytes=1024, codec="null")
    seq = 1
    while len(part_files(data / END_SONG)) < 2:
        post(d, maker, clock, END_SONG, range(seq, seq + 5))
        seq += 5
    post(d, maker, clock, PAGE_VIEW, [1])
    d.close()
    for part in part_files(data / END_SONG):
        with open(part, "r+b") as fh:
            fh.truncate(part.stat().st_size - 1)
    (page_part,) = part_files(data / PAGE_VIEW)
    page_size = page_part.stat().st_size
    with open(page_part, "ab") as fh:
        fh.write(b"torn")
    d = open_delivery(max_part_bytes=1024, codec="null")
    assert page_part.stat().st_size == page_size
    kinds = sorted(i["kind"] for i in incidents(d))
    assert kinds == ["damaged_part_file", "damaged_part_file", "uncommitted_bytes"]
    assert post(d, maker, clock, END_SONG, [seq]).accepted == 1
    (new,) = part_files(data / END_SONG)
    assert new.name == f"part-{fp_hex(maker)}-0002.avro"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_commits_to_one_part_reuse_its_open_file_and_leak_no_descriptor(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    """A part file is a raw descriptor: opening it again for each commit would leak one
    per commit until the process runs out (every batch a 503)."""
    d = open_delivery()
    post(d, maker, clock, END_SONG, [1])
    before = len(os.listdir("/proc/self/fd"))
    for seq in range(2, 42):
        assert post(d, maker, clock, END_SONG, [seq]).accepted == 1
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert d.open_files() == 1
