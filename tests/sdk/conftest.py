"""Fixtures for SDK tests: a scripted sink on loopback, a client factory that
closes every client it made, QueueWriters and a write-lock holder for the
writer tests, and shippers answered by a scripted collector without HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import Sink
from shipper_helpers import Collector, MakeShipper
from support import SCHEMAS, free_port
from writer_helpers import Blocker, MakeWriter

from spotify_events import EventClient
from spotify_events.config import ClientConfig
from spotify_events.queue import DurableQueue
from spotify_events.shipper import Shipper
from spotify_events.transport import MockTransport
from spotify_events.writer import QueueWriter


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


@pytest.fixture
def make_writer() -> Iterator[MakeWriter]:
    """``make_writer(queue, **options)``; every writer is stopped at teardown."""
    made: list[QueueWriter] = []

    def _make(
        queue: DurableQueue, on_commit: threading.Event | None = None, **options: Any
    ) -> QueueWriter:
        settings = replace(ClientConfig().writer_settings(), **options)
        made.append(QueueWriter(queue, settings, on_commit=on_commit))
        return made[-1]

    yield _make
    for writer in made:
        writer.stop(timeout=5)


@pytest.fixture
def blocker(queue_path: Path) -> Iterator[Callable[[], Blocker]]:
    """``blocker()``: a :class:`Blocker` on the test's queue file, released and closed
    at teardown."""
    made: list[Blocker] = []

    def _make() -> Blocker:
        made.append(Blocker(queue_path))
        return made[-1]

    yield _make
    for b in made:
        b.release()
        b.conn.close()


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def make_shipper(
    make_queue: Callable[..., DurableQueue], collector: Collector
) -> Iterator[MakeShipper]:
    """``make_shipper(**shipper settings) -> (Shipper, DurableQueue)`` on the test's
    queue file, sending to ``collector``; every shipper made is stopped at teardown."""
    made: list[Shipper] = []

    def _make(**options: Any) -> tuple[Shipper, DurableQueue]:
        queue = make_queue()
        settings = replace(ClientConfig().shipper_settings(), backoff_max=0.05, **options)
        made.append(Shipper(queue, MockTransport(collector), settings))
        return made[-1], queue

    yield _make
    for shipper in made:
        shipper.stop(timeout=5)
