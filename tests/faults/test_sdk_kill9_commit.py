"""kill -9 at the ``commit`` level: every event whose commit returned is in the file.

A child process logs a numbered stream through QueueWriter (submit + commit_through
per event, as ``log()`` does at ``durability="commit"``) and prints each number only
after its commit returned. The parent SIGKILLs it at a seeded random moment, then
reopens the file: each printed number must be there, readable, in order, with
contiguous sequence numbers. (The fault matrix across levels is a separate suite.)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spotify_events.encoding import decode_event
from spotify_events.queue import DurableQueue, PendingEvent
from spotify_events.schemas import SchemaRegistry

pytestmark = pytest.mark.faults

CHILD = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from spotify_events.config import ClientConfig
    from spotify_events.encoding import EventEncoder
    from spotify_events.queue import DurableQueue, PendingEvent
    from spotify_events.schemas import SchemaRegistry
    from spotify_events.writer import QueueWriter

    path, schemas = sys.argv[1], sys.argv[2]
    schema = SchemaRegistry(schemas).get("EndSong")
    encoder = EventEncoder(schema)
    settings = replace(ClientConfig().writer_settings(), commit_interval=0.002)
    writer = QueueWriter(DurableQueue(path), settings)
    writer.start()  # the background writer races the caller for the commits, as in the client
    record = {"user_id": "u1", "track_id": "t1", "reason_start": "CLICKROW",
              "reason_end": "TRACKDONE", "platform": "linux"}
    n = 0
    while True:
        payload = encoder.encode({**record, "ms_played": n})
        event = PendingEvent(schema.full_name, schema.fingerprint, 1_763_158_400_000 + n, payload)
        ticket = writer.submit(event)
        if not writer.commit_through(ticket, timeout=30):
            sys.exit(3)
        sys.stdout.write(f"{n}\\n")
        sys.stdout.flush()
        n += 1
    """
)


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_commit_level_loses_nothing_that_was_acknowledged(
    tmp_path: Path, registry: SchemaRegistry, schema_dir: Path, seed: int
) -> None:
    rnd = random.Random(seed)
    path = tmp_path / "events.db"
    kill_after = rnd.randint(20, 3000)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(schema_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        for _ in range(kill_after):
            line = child.stdout.readline()
            assert line, child.stderr.read().decode() if child.stderr else "child exited"
        time.sleep(rnd.random() * 0.003)  # a random moment inside a later submit/commit
        os.kill(child.pid, signal.SIGKILL)
        # read through the same buffered reader (communicate() would skip what
        # readline() already buffered)
        rest = child.stdout.read()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    text = rest.decode()
    complete = text if text.endswith("\n") else text.rsplit("\n", 1)[0]
    printed = kill_after + len(complete.split())
    # every number the child printed was acknowledged by commit_through
    with sqlite3.connect(path) as conn:  # recovery by plain SQLite first: the file is sound
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()

    queue = DurableQueue(path)
    try:
        events = queue.read_batch(max_events=1_000_000, max_bytes=1 << 30)
        schema = registry.get("EndSong")
        numbers = [decode_event(schema, e.payload)["ms_played"] for e in events]
        # readable and in order; at most the one in-flight event beyond what was printed
        assert numbers == list(range(len(numbers)))
        assert printed <= len(numbers) <= printed + 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.timestamp - 1_763_158_400_000 for e in events] == numbers
        assert queue.next_seqs() == {schema.full_name: len(events) + 1}
        assert queue.depth().events == len(events)
        # and the queue keeps numbering after the crash
        last = events[-1]
        again = PendingEvent(last.event_type, last.fingerprint, last.timestamp, last.payload)
        assert queue.append([again]).stored == 1
        assert queue.next_seqs()[schema.full_name] == len(events) + 2
    finally:
        queue.close()
