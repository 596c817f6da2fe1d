"""A queue file deleted or replaced under a running client loses nothing.

The client's open connection still reaches the old file; within a bounded time
the client notices the path no longer names it, logs an ERROR, and puts the
file back (a file found in its place is moved aside, not deleted). Events logged
before and after the deletion all ship, under the same producer id and with
contiguous sequence numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sdk_helpers import END_SONG, Sink, wait_for

from spotify_events import EventClient

TYPE = "spotify.events.playback.EndSong"


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_queue_file_removed_under_a_running_client_is_restored(
    tmp_path: Path,
    unstarted_sink: Sink,
    make_client: Callable[..., EventClient],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="spotify_events")
    path = tmp_path / "queue.db"
    client = make_client(endpoint=unstarted_sink.endpoint, queue_path=str(path))
    producer = client.producer_id
    for i in range(100):
        client.log("EndSong", {**END_SONG, "track_id": f"before-{i}"})
    assert wait_for(lambda: client.stats().committed == 100)

    _remove(path)
    if how == "replaced":  # somebody else's file now sits at the path
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE theirs (x)")
        other.close()
    for i in range(100):
        client.log("EndSong", {**END_SONG, "track_id": f"after-{i}"})

    assert wait_for(lambda: any(f"was {how}" in r.getMessage() for r in caplog.records))
    assert path.exists()
    if how == "replaced":
        (aside,) = tmp_path.glob("queue.db.replaced-*")
        with sqlite3.connect(aside) as moved:
            assert moved.execute("SELECT name FROM sqlite_master").fetchall() == [("theirs",)]
        moved.close()

    unstarted_sink.start()
    assert client.flush(timeout=30.0)
    assert client.producer_id == producer
    assert unstarted_sink.seqs(TYPE) == list(range(1, 201))
    assert {k[0] for k in unstarted_sink.seen} == {producer}
    client.close(timeout=2.0)
    reopened = make_client(endpoint=unstarted_sink.endpoint, queue_path=str(path))
    assert reopened.producer_id == producer  # the next process continues the same producer
