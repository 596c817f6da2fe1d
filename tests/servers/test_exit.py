"""Exit of a process that shares its queue file with others (pre-fork workers).

Only the process holding the shipping lease sends. One that does not hold it has
nothing to wait for at exit: it commits its buffer and leaves, and the holder (or
the next process to start) ships its events. One that finds the lease free at
close() takes it and ships, as a lone process does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from server_helpers import bucket_ids, end_song, port_held_closed
from support import SCHEMAS, free_port, wait_for

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess
from spotify_events.queue import DurableQueue

#: The non-holder runs in its own process; it logs these events and exits.
NON_HOLDER = """
import os, sys
from spotify_events import EventClient

client = EventClient(endpoint=os.environ["SE_ENDPOINT"], queue_path=os.environ["SE_QUEUE"],
                     schemas=os.environ["SE_SCHEMAS"], close_timeout=600, exit_timeout=600)
for i in range(200):
    client.log("EndSong", {"user_id": "u1", "track_id": f"c{i}", "ms_played": 1,
                           "reason_start": "CLICKROW", "reason_end": "TRACKDONE", "platform": "web"})
if sys.argv[1] == "close":
    print("close returned", client.close())
# else: leave it to the atexit hook
"""


@pytest.mark.parametrize("how", ["close", "atexit"])
def test_non_holder_commits_and_exits_without_waiting_for_delivery(
    tmp_path: Path, how: str
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v1/batches"
    queue_path = tmp_path / "q.db"
    collector = CollectorProcess(tmp_path / "data", SCHEMAS, ["--grace-period", "1"], port=port)
    holder = EventClient(
        endpoint=endpoint,
        queue_path=str(queue_path),
        schemas=str(SCHEMAS),
        backoff_max=0.5,
        connect_timeout=0.2,
        read_timeout=1.0,
    )
    peek = DurableQueue(queue_path)
    try:
        with port_held_closed(port):  # the collector is down: nothing can be acknowledged
            holder.log("EndSong", end_song("h0"))
            assert wait_for(lambda: f":{os.getpid()}:" in (peek.lease_holder() or ""))
            child = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(NON_HOLDER), how],
                env={
                    **os.environ,
                    "SE_ENDPOINT": endpoint,
                    "SE_QUEUE": str(queue_path),
                    "SE_SCHEMAS": str(SCHEMAS),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # Waiting for delivery would take the child's whole 600 s budget; a tenth of it
            # is a bound no loaded machine comes near for a start, 200 logs and an exit.
            try:
                out, err = child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                pytest.fail("the non-holder waited for delivery at exit instead of leaving")
            assert child.returncode == 0, err
            if how == "close":
                assert out.strip() == "close returned False"  # committed, not yet delivered
            assert peek.depth().events == 201  # every event committed before the child left
        collector.start()
        assert holder.flush(timeout=60)  # the holder ships the child's events
        expected = Counter({"h0": 1, **{f"c{i}": 1 for i in range(200)}})
        assert bucket_ids(collector.data_dir) == expected
    finally:
        holder.close(timeout=1.0)
        peek.close()
        try:
            collector.stop()
        finally:
            collector.kill()


def test_process_finding_the_lease_free_at_close_ships_its_events(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    settings = {
        "endpoint": collector.endpoint,
        "queue_path": str(tmp_path / "q.db"),
        "schemas": str(SCHEMAS),
    }
    first, second = EventClient(**settings), EventClient(**settings)
    first.log("EndSong", end_song("a"))
    assert first.flush(timeout=30)  # the first client holds the lease now
    second.log("EndSong", end_song("b"))  # the second's shipper is a non-holder
    assert first.close(timeout=30)  # releases the lease
    assert second.close(timeout=30)  # takes the free lease and ships instead of leaving
    assert bucket_ids(collector.data_dir) == Counter({"a": 1, "b": 1})
