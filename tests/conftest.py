"""Fixtures shared by the whole suite: the example schemas, encoding, real queue files.

Kept small and generic on purpose; fixtures for one area live in that area's
subfolder (``tests/collector/conftest.py`` ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, SCHEMAS, wait_for

from spotify_events.config import ClientConfig
from spotify_events.encoding import EventEncoder
from spotify_events.queue import DurableQueue, PendingEvent
from spotify_events.schemas import SchemaRegistry

END_SONG = "spotify.events.playback.EndSong"
#: A fixed event time (2025-11-14T22:13:20.123Z) so tests never depend on the clock.
FIXED_TS = 1_763_158_400_123
#: The local zone collector tests run in: India's UTC+05:30 (POSIX spelling, so no tz
#: database is needed). Buckets are UTC hours; a local-time slip moves an event into
#: another directory and a half-hour offset cannot hide behind a whole-hour one.
COLLECTOR_TEST_TZ = "IST-05:30"


@pytest.fixture(autouse=True)
def _collector_tests_run_off_utc(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run every test under tests/collector/ with a non-UTC local zone (also inherited
    by the collector processes they start), then restore the zone the suite had."""
    if "collector" not in Path(str(request.node.path)).relative_to(ROOT).parts[:2]:
        yield
        return
    before = os.environ.get("TZ")
    os.environ["TZ"] = COLLECTOR_TEST_TZ
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.fixture(name="wait_for", scope="session")
def wait_for_fixture() -> Callable[..., bool]:
    """The :func:`wait_for` helper, as a fixture (test modules do not import conftest)."""
    return wait_for


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    return SCHEMAS


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    """The project's example schemas (schemas/*.avsc), loaded once."""
    return SchemaRegistry(SCHEMAS)


@pytest.fixture(scope="session")
def encode(registry: SchemaRegistry) -> Callable[[str, Mapping[str, Any]], bytes]:
    """``encode(event_type, record) -> bytes`` with one cached encoder per type."""
    encoders: dict[str, EventEncoder] = {}

    def _encode(event_type: str, record: Mapping[str, Any]) -> bytes:
        encoder = encoders.get(event_type)
        if encoder is None:
            encoder = encoders[event_type] = EventEncoder(registry.get(event_type))
        return encoder.encode(record)

    return _encode


@pytest.fixture(scope="session")
def pending(
    registry: SchemaRegistry, encode: Callable[[str, Mapping[str, Any]], bytes]
) -> Callable[..., PendingEvent]:
    """``pending(event_type, record, timestamp=FIXED_TS) -> PendingEvent``, ready to append."""

    def _pending(
        event_type: str, record: Mapping[str, Any], timestamp: int = FIXED_TS
    ) -> PendingEvent:
        schema = registry.get(event_type)
        return PendingEvent(
            schema.full_name, schema.fingerprint, timestamp, encode(event_type, record)
        )

    return _pending


@pytest.fixture
def end_song_record() -> dict[str, Any]:
    """A valid EndSong record with every field set (a fresh dict per test)."""
    return {
        "user_id": "u1",
        "track_id": "t1",
        "ms_played": 31_000,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "ios",
        "shuffle": False,
        "offline": False,
        "context_uri": "spotify:playlist:37i9dQZF1DXcBWIGoYBM5M",
        "conn_country": "SE",
    }


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def make_queue(queue_path: Path) -> Iterator[Callable[..., DurableQueue]]:
    """``make_queue(path=queue_path, clock=None, **settings) -> DurableQueue``; every queue
    made is closed at teardown, so no test leaks a connection (or a WAL lock) into the next."""
    opened: list[DurableQueue] = []

    def _make(
        path: Path | str | None = None, clock: Callable[[], float] | None = None, **options: Any
    ) -> DurableQueue:
        settings = replace(ClientConfig().queue_settings(), **options)
        target = queue_path if path is None else path
        queue = (
            DurableQueue(target, settings)
            if clock is None
            else DurableQueue(target, settings, clock=clock)
        )
        opened.append(queue)
        return queue

    yield _make
    for queue in reversed(opened):
        queue.close()
