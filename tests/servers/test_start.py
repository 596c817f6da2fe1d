"""Leftovers of an earlier process ship when a client starts, never at construction:
a client created at import time in a pre-fork master must not start threads, even
with events waiting in its queue file."""

from __future__ import annotations

import threading
from pathlib import Path

from server_helpers import bucket_ids, end_song, port_held_closed
from support import SCHEMAS, free_port, wait_for

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess


def test_leftovers_wait_for_start_and_then_ship_without_a_new_event(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    queue_path = str(tmp_path / "q.db")
    port = free_port()
    with port_held_closed(port):  # an earlier process met an outage and left
        earlier = EventClient(
            endpoint=f"http://127.0.0.1:{port}/v1/batches",
            queue_path=queue_path,
            schemas=str(SCHEMAS),
            connect_timeout=0.2,
        )
        for i in range(20):
            earlier.log("EndSong", end_song(f"left{i}"))
        assert not earlier.close(timeout=0)
    threads_before = threading.active_count()
    client = EventClient(endpoint=collector.endpoint, queue_path=queue_path, schemas=str(SCHEMAS))
    try:
        assert threading.active_count() == threads_before  # construction started nothing
        client.start()
        client.start()  # idempotent
        assert wait_for(lambda: client.stats().acknowledged == 20, timeout=60)
        assert client.stats().logged == 0
    finally:
        client.close(timeout=10)
    assert bucket_ids(collector.data_dir) == {f"left{i}": 1 for i in range(20)}
