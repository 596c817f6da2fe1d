"""A collector that does not know a schema yet: the SDK holds, never dead-letters.

The real collector is started with every example schema except EndSong. Its 200
body rejects the EndSong events with code ``unknown_schema``; they must stay in
the queue (flush False, ``stats().held``, one ERROR naming the schema) while other
types flow. Restarted with EndSong deployed, it receives every held event with
the sequence number it was logged with.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import END_SONG, bucket_ids, numbered, stream_of, wait_for
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

pytestmark = pytest.mark.faults

PAGE_VIEW = {"session_id": "s1", "page_uri": "spotify:album:x", "load_ms": 120}


@pytest.fixture
def schemas_without_end_song(tmp_path: Path) -> Path:
    partial = tmp_path / "schemas-old"
    partial.mkdir()
    for avsc in SCHEMAS.glob("*.avsc"):
        if avsc.name != "EndSong.avsc":
            shutil.copy(avsc, partial / avsc.name)
    return partial


@pytest.fixture
def behind(tmp_path: Path, schemas_without_end_song: Path) -> Iterator[CollectorProcess]:
    process = CollectorProcess(tmp_path / "data", schemas_without_end_song, ["--grace-period", "1"])
    process.start()
    yield process
    try:
        process.stop()
    finally:
        process.kill()


def test_events_of_a_schema_the_collector_lacks_are_held_then_delivered_with_their_seqs(
    tmp_path: Path, behind: CollectorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spotify_events")
    client = EventClient(
        endpoint=behind.endpoint,
        queue_path=str(tmp_path / "q.db"),
        schemas=str(SCHEMAS),
        backoff_max=0.2,
        hold_retry_max=0.5,
        linger=0,
    )
    try:
        for i in range(300):
            client.log("EndSong", numbered(str(i)))
        for _ in range(5):
            client.log("PageView", PAGE_VIEW)
        assert client.flush(timeout=3.0) is False
        assert wait_for(lambda: client.stats().held == {END_SONG: 300})
        stats = client.stats()
        assert stats.dead_lettered == {}
        assert stats.queue_events == 300  # the PageViews went through
        assert stats.last_error is not None and END_SONG in stats.last_error
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and "does not know schema" in r.getMessage()
        ]
        assert len(errors) == 1 and END_SONG in errors[0]
        assert wait_for(lambda: _hold_attempts(client) >= 3)  # retried, with backoff
        assert not bucket_ids(behind.data_dir)

        # Deploy the schema: the same collector, now with every schema.
        behind.stop()
        behind.schemas = SCHEMAS
        behind.start()
        assert client.flush(timeout=30.0)
        assert client.stats().held == {}
        found = bucket_ids(behind.data_dir)
        assert found == {str(i): 1 for i in range(300)}
        (stream,) = stream_of(behind.report())
        assert stream["received"] == 300 and stream["lost"] == 0 and stream["dropped"] == 0
        assert client.stats().dead_lettered == {}
    finally:
        client.close(timeout=2.0)


def _hold_attempts(client: EventClient) -> int:
    holds = client._pipeline.shipper_queue.holds()
    return holds[0].attempts if holds else 0
