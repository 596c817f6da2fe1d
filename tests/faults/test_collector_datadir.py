"""The data directory under attack: nothing acknowledged is ever destroyed.

Operators share a data directory between two collectors, delete, empty, roll
back or corrupt the ledger, plant symlinks and stray files, step the clock, and
damage part files while the collector is stopped. Whatever they do, every event
the collector acknowledged stays readable (in its bucket or, moved aside, in
``DATA_DIR/_quarantine``), the report says what happened, and a situation the
collector cannot resolve safely stops it with a message that says what to do.

Most tests drive ``LocalDelivery`` in process with an injected clock; the ones
about what an operator sees run the real ``spotify-events collector`` command.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from collector_faults_helpers import (
    END_SONG,
    UID_FIELD,
    BatchMaker,
    part_files,
    read_uids,
)
from support import SCHEMAS

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.process import CollectorProcess
from spotify_events.errors import SpotifyEventsError
from spotify_events.schemas import SchemaRegistry

#: 2026-01-01T10:00:00Z, so events of T0 + a few minutes share one hour.
T0 = 1_767_261_600.0
REGISTRY = SchemaRegistry(SCHEMAS)


class Clock:
    """A clock the test moves by hand (forwards and backwards)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 60)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def opened() -> Iterator[list[LocalDelivery]]:
    made: list[LocalDelivery] = []
    yield made
    for d in made:
        d.close()


def open_delivery(
    data: Path, clock: Clock, opened: list[LocalDelivery], **config: Any
) -> LocalDelivery:
    from spotify_events.collector.seam import DeliveryConfig

    cfg = DeliveryConfig(**{"grace_period": 60.0, "lateness": 600.0, **config})
    d = LocalDelivery(data, REGISTRY, config=cfg, clock=clock)
    opened.append(d)
    return d


def deliver(d: LocalDelivery, clock: Clock, first: int, last: int, at: float = T0) -> Any:
    maker = BatchMaker(REGISTRY, "producer-a")
    body = maker.body(maker.envelopes(END_SONG, range(first, last + 1), int(at * 1000)))
    result = d.deliver(Ingest(REGISTRY, clock=clock).parse(body))
    assert result.status.value == "ok", result
    return result


def expected(first: int, last: int) -> Counter[str]:
    return Counter(f"{END_SONG}/producer-a:{s}" for s in range(first, last + 1))


def quarantined_uids(data: Path) -> Counter[str]:
    """Event ids readable from the Avro files moved to the quarantine."""
    found: Counter[str] = Counter()
    for path in sorted((data / "_quarantine").rglob("part-*")):
        event_type = path.relative_to(data / "_quarantine").parts[1]
        for record in fastavro.reader(io.BytesIO(path.read_bytes())):
            found[f"{event_type}/{record[UID_FIELD[event_type]]}"] += 1
    return found


def incidents(d: LocalDelivery) -> list[dict[str, Any]]:
    return [i for i in d.report()["incidents"] if i["producer_id"] == "(collector)"]


def run_collector(*args: str, timeout: float = 20.0) -> tuple[int | None, str]:
    """Run ``spotify-events collector ARGS``; (exit code, stderr), code None if it kept
    running (it is killed then): the cases here must end on their own."""
    cmd = [sys.executable, "-m", "spotify_events", "collector", "--port", "0", *args]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            return None, err
        return proc.returncode, err


# -- 1: one data directory, one collector ---------------------------------------------------
def test_second_collector_on_the_same_data_dir_exits_naming_the_holder(data: Path) -> None:
    with CollectorProcess(data, SCHEMAS) as first:
        assert first.proc is not None
        code, err = run_collector("--data-dir", str(data), "--schemas", str(SCHEMAS))
        assert code not in (None, 0), err
        assert f"pid {first.proc.pid}" in err and "Traceback" not in err, err
        assert first.alive()


# -- 2: the ledger deleted, emptied, rolled back, garbage -------------------------------------
def backed_up_then_delivered(
    data: Path, clock: Clock, opened: list[LocalDelivery], tmp_path: Path
) -> tuple[LocalDelivery, Path]:
    """Events 1-100 delivered and the ledger copied aside, then 101-200 delivered (and
    acknowledged: the producer deletes them from its queue) by the delivery returned."""
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    d.close()
    backup = tmp_path / "ledger-backup.db"
    shutil.copy(data / "_ledger.db", backup)
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 101, 200)
    return d, backup


def restore_ledger(data: Path, backup: Path) -> None:
    """An operator restores last night's copy of the ledger."""
    for leftover in data.glob("_ledger.db-*"):
        leftover.unlink()
    shutil.copy(backup, data / "_ledger.db")


def test_ledger_restored_from_an_older_copy_keeps_every_acknowledged_event(
    data: Path, clock: Clock, opened: list[LocalDelivery], tmp_path: Path
) -> None:
    d, backup = backed_up_then_delivered(data, clock, opened, tmp_path)
    d.close()
    restore_ledger(data, backup)

    d = open_delivery(data, clock, opened)
    assert read_uids(data) + quarantined_uids(data) == expected(1, 200)
    assert [i["kind"] for i in incidents(d)] == ["uncommitted_bytes"]
    assert len(list((data / "_quarantine").rglob("NOTE.txt"))) == 1


def test_ledger_older_than_a_closed_bucket_leaves_the_closed_bucket_as_it_is(
    data: Path, clock: Clock, opened: list[LocalDelivery], tmp_path: Path
) -> None:
    """A ledger restored from before an hour closed holds that bucket open, with its parts
    shorter than the files. The bucket's ``_CLOSED.json`` says it is closed, and a closed
    bucket is never changed: its files stay byte for byte what the marker describes
    (readers may have taken them already), and the report says the ledger is behind."""
    d, backup = backed_up_then_delivered(data, clock, opened, tmp_path)
    clock.now = T0 + 3600 + 600  # the hour plus its lateness: the bucket closes
    assert d.close_due_buckets() == 1
    d.close()
    closed = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and "_ledger" not in p.name}
    closed.pop(data / "_lock", None)
    restore_ledger(data, backup)

    for _ in range(2):  # said once, not at every start
        d = open_delivery(data, clock, opened)
        assert {p: p.read_bytes() for p in closed} == closed
        assert read_uids(data) == expected(1, 200)
        assert not (data / "_quarantine").exists()
        (incident,) = incidents(d)
        assert incident["kind"] == "closed_bucket_ahead_of_ledger"
        d.close()


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_lost_ledger_refuses_to_start_until_told_and_then_deletes_nothing(
    data: Path, clock: Clock, opened: list[LocalDelivery], how: str
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    d.close()
    for path in data.glob("_ledger.db*"):
        path.unlink()
    if how == "emptied":
        (data / "_ledger.db").write_bytes(b"")
    with pytest.raises(SpotifyEventsError, match="--adopt-data-dir"):
        open_delivery(data, clock, opened)
    assert read_uids(data) == expected(1, 100)  # refused, and touched nothing

    d = open_delivery(data, clock, opened, adopt_data_dir=True)
    assert read_uids(data) + quarantined_uids(data) == expected(1, 100)
    assert [i["kind"] for i in incidents(d)] == ["unknown_part_file"]


def test_garbage_ledger_is_a_clear_error_not_a_traceback(data: Path) -> None:
    data.mkdir()
    (data / "_ledger.db").write_bytes(b"this is not sqlite " * 100)
    code, err = run_collector("--data-dir", str(data), "--schemas", str(SCHEMAS))
    assert code not in (None, 0), err
    assert "Traceback" not in err and str(data / "_ledger.db") in err, err
    assert "not a usable collector ledger" in err and "backup" in err, err


# -- 3: startup touches only what the collector created -------------------------------------
def test_startup_never_follows_a_symlink_or_removes_foreign_files(
    data: Path, clock: Clock, opened: list[LocalDelivery], tmp_path: Path
) -> None:
    open_delivery(data, clock, opened).close()  # a data dir with a ledger
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "part-precious-0000.avro").write_bytes(b"someone else's data")
    (outside / "work.tmp").write_bytes(b"someone else's temp file")
    (data / END_SONG).symlink_to(outside, target_is_directory=True)
    foreign = data / "some.other.Tool" / "2026-01-01"
    foreign.mkdir(parents=True)
    (foreign / "part-mine-0000.avro").write_bytes(b"not the collector's")

    with pytest.raises(SpotifyEventsError, match="symlink"):
        open_delivery(data, clock, opened)
    assert sorted(p.name for p in outside.iterdir()) == ["part-precious-0000.avro", "work.tmp"]
    assert (foreign / "part-mine-0000.avro").exists()
    (data / END_SONG).unlink()
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 10)
    assert (foreign / "part-mine-0000.avro").exists()  # not an event type: left alone
    assert not (outside / END_SONG).exists()


def test_part_file_replaced_by_a_symlink_is_moved_aside_not_written_through(
    data: Path, clock: Clock, opened: list[LocalDelivery], tmp_path: Path
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    d.close()
    (part,) = part_files(data)
    target = tmp_path / "elsewhere.bin"
    outside = b"x" * (part.stat().st_size + 5000)  # longer than the committed length
    target.write_bytes(outside)
    part.unlink()
    part.symlink_to(target)
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 101, 200)
    assert target.read_bytes() == outside  # not cut, not appended to
    assert [i["kind"] for i in incidents(d)] == ["damaged_part_file"]
    assert read_uids(data) == expected(101, 200)


def test_non_empty_data_dir_without_a_ledger_is_refused(
    data: Path, clock: Clock, opened: list[LocalDelivery]
) -> None:
    data.mkdir()
    (data / "notes.txt").write_text("the operator's notes")
    for _ in range(2):  # the refusal leaves nothing that lets the next start through
        with pytest.raises(SpotifyEventsError, match="no collector ledger"):
            open_delivery(data, clock, opened)


# -- 4: a clock step never reopens a closed bucket ------------------------------------------
def test_clock_step_back_never_writes_into_a_closed_bucket(
    data: Path, clock: Clock, opened: list[LocalDelivery]
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 10)
    clock.now = T0 + 2 * 3600  # the clock jumps forward: hour T0 closes
    assert d.close_due_buckets() == 1
    closed = {p: p.read_bytes() for p in part_files(data)}
    clock.now = T0 + 120  # ... and back
    result = deliver(d, clock, 11, 20)
    assert result.accepted == 10
    assert {p: p.read_bytes() for p in closed} == closed  # byte for byte
    assert read_uids(data) == expected(1, 20)
    assert not [p for p in part_files(data) if p in closed and p.stat().st_size != len(closed[p])]


# -- 5: a damaged part file is moved aside, never appended to -------------------------------
@pytest.mark.parametrize("damage", ["cut", "deleted"])
def test_damaged_part_file_is_quarantined_and_reported(
    data: Path, clock: Clock, opened: list[LocalDelivery], damage: str
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    d.close()
    (part,) = part_files(data)
    if damage == "cut":
        with open(part, "r+b") as fh:
            fh.truncate(part.stat().st_size - 7)
    else:
        part.unlink()
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 101, 200)
    for path in part_files(data):  # every bucket file reads completely
        with open(path, "rb") as fh:
            assert sum(1 for _ in fastavro.reader(fh)) >= 0
    assert read_uids(data) == expected(101, 200)
    (incident,) = incidents(d)
    assert incident["kind"] == "damaged_part_file" and part.name in incident["detail"]
    listed = [p for b in d.report()["buckets"] for p in b["parts"]]
    assert [p["file"] for p in listed if "quarantined" in p] == [part.name]
    if damage == "cut":
        assert [p.name for p in (data / "_quarantine").rglob("part-*")] == [part.name]


def test_part_file_cut_while_the_collector_runs_is_never_appended_to(
    data: Path, clock: Clock, opened: list[LocalDelivery]
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    (part,) = part_files(data)
    with open(part, "r+b") as fh:  # cut behind the open descriptor's back
        fh.truncate(part.stat().st_size - 7)
    maker = BatchMaker(REGISTRY, "producer-a")
    body = maker.body(maker.envelopes(END_SONG, range(101, 201), int(T0 * 1000)))
    first = d.deliver(Ingest(REGISTRY, clock=clock).parse(body))
    assert first.status.value == "unavailable"  # a 503: the producer retries
    retry = d.deliver(Ingest(REGISTRY, clock=clock).parse(body))
    assert (retry.status.value, retry.accepted) == ("ok", 100)
    assert read_uids(data) == expected(101, 200)  # every bucket file reads completely
    assert [i["kind"] for i in incidents(d)] == ["damaged_part_file"]


# -- 6: owner-only files --------------------------------------------------------------------
@pytest.mark.parametrize("group", [False, True])
def test_files_and_directories_are_owner_only_by_default(
    data: Path, clock: Clock, opened: list[LocalDelivery], group: bool
) -> None:
    from spotify_events.collector.datadir import FileModes

    old_umask = os.umask(0o022)
    try:
        modes = FileModes.group_readable() if group else FileModes()
        d = open_delivery(data, clock, opened, modes=modes)
        deliver(d, clock, 1, 10)
        clock.now = T0 + 2 * 3600
        d.close_due_buckets()
        d.close()
    finally:
        os.umask(old_umask)
    paths = [data, *data.rglob("*")]
    assert any(p.name == "_CLOSED.json" for p in paths) and len(part_files(data)) == 1
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = (modes.directory if path.is_dir() else modes.file) if group else None
        if want is None:
            assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
        else:
            assert mode == want, f"{path}: {oct(mode)}"


# -- 12: a name the file system cannot hold -------------------------------------------------
def test_event_type_name_too_long_for_the_file_system_is_refused_at_startup(
    tmp_path: Path,
) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    namespace = ".".join(["averyveryverylongnamespacepart" + str(i) for i in range(9)])
    schema = {"type": "record", "name": "Event", "namespace": namespace, "fields": []}
    (schemas / "long.avsc").write_text(json.dumps(schema))
    code, err = run_collector("--data-dir", str(tmp_path / "data"), "--schemas", str(schemas))
    assert code not in (None, 0), err
    assert f"{namespace}.Event" in err and "too long" in err and "Traceback" not in err, err


def test_lock_file_deleted_under_a_running_collector_still_keeps_a_second_one_out(
    data: Path,
) -> None:
    with CollectorProcess(data, SCHEMAS) as first:
        assert first.proc is not None
        (data / "_lock").unlink()  # a tidy-up script, or an operator, removes it
        code, err = run_collector("--data-dir", str(data), "--schemas", str(SCHEMAS))
        assert code not in (None, 0), err
        assert "in use by another collector" in err and "Traceback" not in err, err
        assert first.alive()


@pytest.fixture
def read_only() -> Iterator[Any]:
    """Make a file unwritable, as a non-root collector finds one an operator ran
    ``chmod a-w`` on (as root, which chmod does not stop: ``chattr +i``); undone after."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o400)
        elif (
            shutil.which("chattr") is None
            or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True, check=False
            ).returncode
        ):
            pytest.skip("running as root without a working chattr: cannot make a file unwritable")
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)


def test_unwritable_part_file_is_left_as_it_is_and_new_events_go_to_a_new_part(
    data: Path, clock: Clock, opened: list[LocalDelivery], read_only: Any
) -> None:
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 100)
    d.close()
    (part,) = part_files(data)
    before = part.read_bytes()
    read_only(part)
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 101, 200)  # the same hour: once a 503 until the hour closed
    assert part.read_bytes() == before
    assert read_uids(data) == expected(1, 200)
    (incident,) = incidents(d)
    assert incident["kind"] == "part_file_not_writable" and part.name in incident["detail"]


def test_a_bucket_whose_marker_cannot_be_written_does_not_stop_every_batch(
    data: Path, clock: Clock, opened: list[LocalDelivery], read_only: Any
) -> None:
    """Closing a bucket writes its ``_CLOSED.json``; when its directory refuses that
    (made read-only by an operator), every later batch failed with a 503 on the same
    write, since each group commit closes what is due first: one directory stopped the
    collector. The bucket now waits for its marker (an incident says why) and batches
    go on; the marker is written once the directory takes it."""
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 10)
    (bucket,) = {p.parent for p in part_files(data)}
    read_only(bucket)
    clock.now = T0 + 3600 + 600  # the hour T0 is due to close
    deliver(d, clock, 11, 20, at=clock.now)
    deliver(d, clock, 21, 30, at=clock.now)
    (incident,) = incidents(d)
    assert incident["kind"] == "marker_not_written" and bucket.name in incident["detail"]
    assert not (bucket / "_CLOSED.json").exists()

    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(bucket)], check=True)
    else:
        bucket.chmod(0o700)
    clock.now += 3600  # the next hour is due too, and the marker is tried again
    assert d.close_due_buckets() == 2
    assert json.loads((bucket / "_CLOSED.json").read_text())["events"] == 10
    assert read_uids(data) == expected(1, 30)
    assert len(incidents(d)) == 1


def test_a_close_whose_ledger_commit_failed_never_rewrites_the_marker(
    data: Path, clock: Clock, opened: list[LocalDelivery]
) -> None:
    """The closing timer writes a bucket's marker, then commits the ledger. When that
    commit failed, memory held the bucket closed but still due, so the next tick wrote
    the marker again with a new ``closed_at``: a ``_CLOSED.json`` readers may have taken
    changed under them. The timer now rebuilds memory from the ledger first, as a batch
    does, and the marker it finds is trusted as it is."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make the ledger's WAL refuse writes")
    d = open_delivery(data, clock, opened)
    deliver(d, clock, 1, 10)
    wal = data / "_ledger.db-wal"
    if subprocess.run(["chattr", "+i", str(wal)], capture_output=True).returncode:
        pytest.skip("chattr +i does not work here")
    try:
        clock.now = T0 + 3600 + 600
        with pytest.raises(sqlite3.Error):
            d.close_due_buckets()
    finally:
        subprocess.run(["chattr", "-i", str(wal)], check=True)
    (marker,) = data.rglob("_CLOSED.json")
    written = marker.read_bytes()
    clock.now += 100
    d.close_due_buckets()
    assert marker.read_bytes() == written
    deliver(d, clock, 11, 20, at=T0)  # the hour is closed: its events go to the current one
    assert marker.read_bytes() == written
    assert read_uids(data) == expected(1, 20)
    (closed,) = [b for b in d.report()["buckets"] if b["closed"]]
    assert closed["closed_at"] == json.loads(written)["closed_at"]
