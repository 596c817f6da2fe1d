"""What a data directory must pass before a ledger opens in it, and how startup treats
part files no ledger row knows: moved aside with a note and an incident, never
deleted, never through a symlink, never out of a closed bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from collector_helpers import END_SONG

from spotify_events.collector.datadir import DataDirError
from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.recovery import check_type_names, prepare_data_dir
from spotify_events.collector.seam import DeliveryConfig
from spotify_events.schemas import SchemaRegistry

#: the longest path below a data dir and its event type's directory (a quarantined tail)
REST = len("/_quarantine/YYYYMMDDTHHMMSSZ-4194304/") + len(
    "/YYYY-MM-DD/HH/part-0123456789abcdef-0000.avro.tail.avro.99"
)


def type_named(length: int) -> str:
    """A valid Avro full name of exactly ``length`` characters."""
    left = length - len(".Event")
    parts = []
    while left > 0:
        n = min(60, left)
        if left - n == 1:  # never leave a one-character remainder for a dot alone
            n -= 1
        parts.append("n" * n)
        left -= n + 1
    name = ".".join(parts) + ".Event"
    assert len(name) == length, name
    return name


def test_an_event_type_name_is_refused_only_past_the_file_systems_limits() -> None:
    # a data dir pathconf cannot ask: the limits are 255 bytes per name, 4096 per path
    nowhere = "/nonexistent-data-dir"
    check_type_names(nowhere, frozenset({type_named(255)}))
    too_long = type_named(256)
    with pytest.raises(DataDirError) as info:
        check_type_names(nowhere, frozenset({too_long}))
    assert str(info.value) == (
        f"event type {too_long!r} (256 bytes) is too long for a directory name under "
        f"{nowhere} (the file system allows 255 bytes per name, 4096 per path); "
        "shorten its namespace or name"
    )
    etype = type_named(200)
    fits = "/" + "d" * (4096 - REST - 200 - 1)
    check_type_names(fits, frozenset({etype}))
    with pytest.raises(DataDirError, match=r"\(200 bytes\) is too long"):
        check_type_names(fits + "d", frozenset({etype}))


def test_an_event_type_directory_that_is_a_symlink_or_a_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (data / END_SONG).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DataDirError) as info:
        check_type_names(str(data), frozenset({END_SONG}))
    assert str(info.value) == (
        f"{data / END_SONG} is a symlink or not a directory; the collector writes only into "
        "directories it created. Move it out of the data directory."
    )
    (data / END_SONG).unlink()
    (data / END_SONG).write_text("a file where a directory belongs")
    with pytest.raises(DataDirError, match="is a symlink or not a directory"):
        check_type_names(str(data), frozenset({END_SONG}))
    (data / END_SONG).unlink()
    (data / END_SONG).mkdir()
    check_type_names(str(data), frozenset({END_SONG}))


def test_a_data_dir_that_cannot_be_one_is_refused_naming_it(tmp_path: Path) -> None:
    from spotify_events.collector.datadir import FileModes

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataDirError) as info:
        prepare_data_dir(str(a_file), FileModes())
    assert str(info.value) == f"data directory {a_file} is not a directory"
    below = a_file / "data"
    with pytest.raises(DataDirError) as info:
        prepare_data_dir(str(below), FileModes())
    assert str(info.value) == f"cannot use data directory {below}: Not a directory"


def test_unknown_parts_are_moved_aside_but_not_from_closed_buckets_nor_through_symlinks(
    tmp_path: Path, collector_registry: SchemaRegistry
) -> None:
    data = tmp_path / "data"
    day = data / END_SONG / "2026-01-01"
    closed = day / "00"
    closed.mkdir(parents=True)
    (closed / "_CLOSED.json").write_text(json.dumps({"closed": True, "closed_at": 1.0}))
    (closed / "part-0000000000000000-0000.avro").write_bytes(b"closed, not ours to move")
    strays = {}
    for hour in range(1, 24):
        stray = day / f"{hour:02d}" / "part-0000000000000000-0000.avro"
        stray.parent.mkdir()
        stray.write_bytes(b"Obj\x01" + bytes(hour))
        strays[stray] = stray.read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "part-precious-0000.avro").write_bytes(b"someone else's data")
    (day / "linked-dir").symlink_to(outside, target_is_directory=True)
    (day / "01" / "part-link-0000.avro").symlink_to(outside / "part-precious-0000.avro")
    (day / "01" / "notes.txt").write_text("not a part file")
    cfg = DeliveryConfig(adopt_data_dir=True)
    d = LocalDelivery(data, collector_registry, config=cfg)
    try:
        found = {i["detail"] for i in d.report()["incidents"]}
    finally:
        d.close()
    assert (closed / "part-0000000000000000-0000.avro").read_bytes() == b"closed, not ours to move"
    assert (outside / "part-precious-0000.avro").read_bytes() == b"someone else's data"
    assert (day / "01" / "part-link-0000.avro").is_symlink()
    assert (day / "01" / "notes.txt").exists()
    quarantine = data / "_quarantine"
    (run,) = quarantine.iterdir()
    note = (run / "NOTE.txt").read_text().splitlines()
    expected_details = set()
    expected_note = set()
    for stray, content in strays.items():
        assert not stray.exists()
        rel = stray.relative_to(data).as_posix()
        where = (run / stray.relative_to(data)).relative_to(data).as_posix()
        assert (data / where).read_bytes() == content
        expected_note.add(f"{where}: moved from {rel}: no ledger row knows this part file")
        expected_details.add(
            f"{rel} ({len(content)} bytes) is not in the ledger (a crash before its first "
            f"commit, or a lost or older ledger); moved to {where}"
        )
    assert set(note) == expected_note
    assert found == expected_details
