"""A queue file copied to a second place (image bake, restored backup) keeps both
copies' events apart: the copy notices it lives elsewhere and numbers its new
events under a new producer id. Events queued before the copy are the same events
in both files; they keep the old producer id and the collector dedupes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fault_helpers import bucket_ids, numbered, stream_of, wait_for
from support import SCHEMAS, free_port

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

pytestmark = pytest.mark.faults


def _client(path: Path, endpoint: str) -> EventClient:
    return EventClient(
        endpoint=endpoint, queue_path=str(path), schemas=str(SCHEMAS), backoff_max=0.2, linger=0
    )


def test_two_copies_of_a_queue_file_both_deliver_every_distinct_event(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    original, copy = tmp_path / "a" / "q.db", tmp_path / "b" / "q.db"
    original.parent.mkdir()
    copy.parent.mkdir()
    nowhere = f"http://127.0.0.1:{free_port()}/v1/batches"
    before = _client(original, nowhere)
    first_producer = before.producer_id
    for i in range(50):
        before.log("EndSong", numbered(f"pre-{i}"))
    before.close(timeout=0.5)  # nothing can ship: the 50 stay queued
    shutil.copy(original, copy)  # the image bake

    a, b = _client(original, collector.endpoint), _client(copy, collector.endpoint)
    try:
        assert a.producer_id == first_producer  # the file at home keeps its id
        for i in range(100):
            a.log("EndSong", numbered(f"a-{i}"))
            b.log("EndSong", numbered(f"b-{i}"))
        assert a.flush(timeout=30.0) and b.flush(timeout=30.0)
    finally:
        a.close(timeout=2.0)
        b.close(timeout=2.0)

    expected = {f"pre-{i}" for i in range(50)} | {
        f"{side}-{i}" for side in "ab" for i in range(100)
    }
    found = bucket_ids(collector.data_dir)
    assert set(found) == expected
    assert set(found.values()) == {1}  # each exactly once
    assert b.producer_id != first_producer  # the copy knew it was a copy
    assert wait_for(lambda: len(stream_of(collector.report())) == 2)
    report = collector.report()
    streams = {s["producer_id"]: s for s in stream_of(report)}
    assert streams[first_producer]["received"] == 150  # 50 before the copy + a's 100
    assert streams[b.producer_id]["received"] == 100
    assert all(s["lost"] == 0 for s in streams.values())
    (incident,) = [i for i in report["incidents"] if i["kind"] == "queue_file_copied"]
    assert b.producer_id in incident["detail"]
