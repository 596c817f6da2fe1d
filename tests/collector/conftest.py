"""Fixtures for collector tests: a real collector process, and in-process parts.

``start_collector`` starts ``spotify-events collector --port 0`` as a child
process on loopback, waits for its ``listening on`` line (no sleeps), and stops it
at teardown (SIGTERM, then SIGKILL if it does not exit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from collector_helpers import BatchMaker
from support import SCHEMAS

from spotify_events.collector.process import CollectorProcess
from spotify_events.schemas import SchemaRegistry


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """``start_collector(*extra_args, data_dir=tmp_path/'data')`` -> a running collector
    (``program``: a launcher such as tests/failpoints.py instead of the package's own)."""
    started: list[CollectorProcess] = []

    def _start(
        *args: str,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> CollectorProcess:
        data = data_dir or tmp_path / "data"
        cp = CollectorProcess(data, SCHEMAS, list(args), env=env or {}, program=program)
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
    return SchemaRegistry(SCHEMAS)


@pytest.fixture
def maker(collector_registry: SchemaRegistry) -> BatchMaker:
    return BatchMaker(collector_registry, "producer-a")
