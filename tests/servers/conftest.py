"""Fixtures for the server tests: a real collector process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SCHEMAS

from spotify_events.collector.process import CollectorProcess


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A running collector (1 s grace period) with its own data dir."""
    process = CollectorProcess(tmp_path / "data", SCHEMAS, ["--grace-period", "1"])
    process.start()
    yield process
    try:
        process.stop()
    finally:
        process.kill()
