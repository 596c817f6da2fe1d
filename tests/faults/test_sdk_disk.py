"""The queue's disk fills up, and the queue file gets damaged.

The disk is a real size-limited filesystem (a tmpfs mounted for the test) when
the machine lets us mount one; otherwise SQLite's own page limit stands in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import bucket_ids, numbered, port_held_closed, stream_of, wait_for
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess
from spotify_events.queue import DROP_WRITE_FAILED

pytestmark = pytest.mark.faults


@contextlib.contextmanager
def small_disk(path: Path, size: str = "3m") -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path``; yields False when mounting is not allowed."""
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free."""
    filler = directory / "filler"
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_counts_and_reports_drops_and_recovers(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    collector.stop()  # nothing ships while the disk fills: the queue has to grow
    outage = contextlib.ExitStack()
    outage.enter_context(port_held_closed(collector.port))
    with outage, small_disk(tmp_path / "disk") as mounted:
        disk = tmp_path / "disk"
        client = EventClient(
            endpoint=collector.endpoint,
            queue_path=str(disk / "queue.db"),
            schemas=str(SCHEMAS),
            max_buffer_bytes=64 << 10,
            max_event_bytes=1024,
            block_timeout=0,
            backoff_max=0.2,
        )
        with client:
            client.log("EndSong", numbered("warm-up"))
            assert client.flush(timeout=0.5) is False  # committed, collector down
            if mounted:
                filler = fill(disk, leave=64 << 10)
            else:  # fall back to SQLite's page limit on the writer's connection
                conn = client._pipeline.writer_queue._conn
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages + 8}")
            logged = 1
            for i in range(30_000):
                client.log("EndSong", numbered(str(i)))  # never raises into the host
                logged += 1
            assert wait_for(
                lambda: client.stats().dropped.get(DROP_WRITE_FAILED, 0) > 0, timeout=30
            )
            assert client.stats().last_error
            # space returns, the collector comes back: everything is accounted for
            if mounted:
                filler.unlink()
            else:
                client._pipeline.writer_queue._conn.execute("PRAGMA max_page_count = 1073741823")
            outage.close()
            collector.start()
            # the writer retries with a capped backoff; once a commit succeeds, logging is normal
            assert wait_for(lambda: client.stats().buffered_events == 0, timeout=30)
            for i in range(1000):  # at a pace the tiny buffer (block_timeout=0) can take
                client.log("EndSong", numbered(f"after:{i}"))
                logged += 1
                if i % 100 == 99:
                    assert wait_for(lambda: client.stats().buffered_events == 0, timeout=30)
            assert client.flush(timeout=60), client.stats()
            stats = client.stats()
        dropped = sum(
            stats.dropped.values()
        )  # write_failed, and buffer_full before the first failure
        assert stats.dropped[DROP_WRITE_FAILED] > 0
        found = bucket_ids(collector.data_dir)
        assert max(found.values()) == 1
        assert {f"after:{i}" for i in range(1000)} <= found.keys()  # logging recovered
        (stream,) = stream_of(collector.report())
        assert stream["received"] == len(found) == logged - dropped
        assert stream["dropped"] == dropped and stream["lost"] == 0 and stream["open_gaps"] == 0
        assert stream["dropped_reasons"] == stats.dropped  # every drop reported with its reason


def test_damaged_queue_file_is_moved_aside_and_a_fresh_queue_starts(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    queue_path = tmp_path / "queue.db"
    with EventClient(
        endpoint=collector.endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS)
    ) as client:
        for i in range(2000):
            client.log("EndSong", numbered(f"old:{i}"))
        assert client.flush(timeout=30)
        old_producer = client.producer_id
    # damage the file: overwrite pages in the middle with garbage, then truncate it
    data = bytearray(queue_path.read_bytes())
    data[8192:16384] = os.urandom(8192)
    queue_path.write_bytes(bytes(data[: len(data) - 1000]))
    damaged = queue_path.read_bytes()

    with EventClient(
        endpoint=collector.endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS)
    ) as client:
        client.log("EndSong", numbered("new:0"))
        assert client.flush(timeout=30)
        assert client.producer_id != old_producer  # a fresh queue is a new producer
        assert client._pipeline.writer_queue.unreported_incidents() == []  # the collector was told
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("queue.db.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == damaged  # never deleted, never altered
    assert bucket_ids(collector.data_dir)["new:0"] == 1
    (incident,) = collector.report()["incidents"]  # the collector's report says why
    assert incident["kind"] == "queue_quarantined" and incident["producer_id"] != old_producer
    assert str(moved[0]) in incident["detail"]
