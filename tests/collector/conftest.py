"""Fixtures for collector tests: a real collector process, and in-process parts.

``start_collector`` starts ``spotify-events collector --port 0`` as a child
process on loopback, waits for its ``listening on`` line (no sleeps), and stops it
at teardown (SIGTERM, then SIGKILL if it does not exit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from collector_helpers import SCHEMA_DIR, BatchMaker

from spotify_events.collector.process import CollectorProcess
from spotify_events.schemas import SchemaRegistry


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """``start_collector(*extra_args, data_dir=tmp_path/'data')`` -> a running collector."""
    started: list[CollectorProcess] = []

    def _start(
        *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> CollectorProcess:
        cp = CollectorProcess(data_dir or tmp_path / "data", SCHEMA_DIR, list(args), env=env or {})
        started.append(cp)
        return cp.start()

    yield _start
    for cp in started:
        try:
            cp.stop()
        finally:
            cp.kill()


@pytest.fixture(scope="session")
def collector_registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMA_DIR)


@pytest.fixture
def maker(collector_registry: SchemaRegistry) -> BatchMaker:
    return BatchMaker(collector_registry, "producer-a")
