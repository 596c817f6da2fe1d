"""Fixtures for the fault suite: a real collector process on a stable port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SCHEMAS

from spotify_events.collector.process import CollectorProcess


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A running collector with a 1 s grace period; restart it with ``.start()``
    after ``.kill()``/``.stop()`` and it comes back on the same port."""
    process = CollectorProcess(tmp_path / "data", SCHEMAS, ["--grace-period", "1"])
    process.start()
    yield process
    try:
        process.stop()
    finally:
        process.kill()
