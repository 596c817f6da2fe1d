"""Fixtures for collector tests: a real collector process, and in-process parts.

``start_collector`` starts ``spotify-events collector --port 0`` as a child
process on loopback, waits for its ``listening on`` line (no sleeps), and stops it
at teardown (SIGTERM, then SIGKILL if it does not exit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import T0, BatchMaker, FakeClock, OpenDelivery
from support import SCHEMAS

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.process import CollectorProcess
from spotify_events.collector.seam import DeliveryConfig
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 60)


@pytest.fixture
def open_delivery(
    tmp_path: Path, collector_registry: SchemaRegistry, clock: FakeClock
) -> Iterator[OpenDelivery]:
    """``open_delivery(**config)`` -> a LocalDelivery on ``tmp_path/'data'`` at the test's
    clock (grace period 60 s, lateness 600 s unless ``config`` says otherwise; ``failpoint``
    and ``layout`` go to LocalDelivery itself), closed at teardown."""
    made: list[LocalDelivery] = []

    def _open(
        *, failpoint: Callable[[str], None] | None = None, layout: Any = None, **config: Any
    ) -> LocalDelivery:
        cfg = DeliveryConfig(**{"grace_period": 60.0, "lateness": 600.0, **config})
        extra: dict[str, Any] = {"failpoint": failpoint} if failpoint is not None else {}
        if layout is not None:
            extra["layout"] = layout
        d = LocalDelivery(tmp_path / "data", collector_registry, config=cfg, clock=clock, **extra)
        made.append(d)
        return d

    yield _open
    for d in made:
        d.close()
