"""Fixtures for SDK tests: a scripted sink on loopback and a client factory that
closes every client it made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import Sink
from support import SCHEMAS, free_port

from spotify_events import EventClient


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port())
    s.start()
    yield s
    s.stop()


@pytest.fixture
def unstarted_sink() -> Iterator[Sink]:
    """A sink whose port nobody listens on until the test calls ``start()``."""
    s = Sink(free_port())
    yield s
    s.stop()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., EventClient]]:
    clients: list[EventClient] = []

    def make(**kwargs: Any) -> EventClient:
        kwargs.setdefault("queue_path", str(tmp_path / "queue.db"))
        kwargs.setdefault("schemas", str(SCHEMAS))
        kwargs.setdefault("backoff_max", 0.5)
        client = EventClient(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=1.0)
