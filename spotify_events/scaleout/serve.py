"""``collector --nats``: the ingest half on waitress, in one process or pre-forked.

Ingest holds no state, so one host can run it on every core: with ``workers > 1``
the parent binds the listening socket once and forks that many children, each
serving it with its own waitress threads and its own NATS connection (the
pre-fork model gunicorn uses for WSGI apps; the kernel spreads connections
across the accepting processes). The parent only supervises: a child that dies
is started again (at most once a second), SIGTERM/SIGINT are passed on, and the
parent exits when the children have finished their in-flight requests.

Before serving (and before forking) the stream is checked once: created when
absent, and a partition count other than ``--partitions`` stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..collector.app import CollectorApp
from ..collector.config import CollectorConfig, collector_default
from ..collector.ingest import Ingest, IngestLimits
from ..collector.metrics import CollectorMetrics
from ..collector.server import run_until_signalled
from ..errors import ConfigError
from ..schemas import SchemaRegistry
from .ingest import JetStreamDelivery, prepare_stream
from .stream import StreamSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Everything ``collector --nats`` can be told; validated at construction."""

    urls: list[str]
    schemas: str
    stream: StreamSettings
    host: str = CollectorConfig.host
    port: int = CollectorConfig.port
    token: str | None = None
    max_body_bytes: int = CollectorConfig.max_body_bytes
    threads: int = CollectorConfig.threads
    workers: int = 1
    publish_timeout: float = 5.0
    startup_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        if self.threads < 1 or self.workers < 1:
            raise ConfigError("threads and workers must be >= 1")


def build_app(config: IngestConfig) -> tuple[CollectorApp, JetStreamDelivery]:
    registry = SchemaRegistry(config.schemas)
    delivery = JetStreamDelivery(config.urls, config.stream, publish_timeout=config.publish_timeout)
    app = CollectorApp(
        ingest=Ingest(registry, limits=IngestLimits(max_body_bytes=config.max_body_bytes)),
        delivery=delivery,
        metrics=CollectorMetrics(registry.event_types),
        token=config.token,
    )
    return app, delivery


def serve(config: IngestConfig, *, ready: Callable[[str], None] | None = None) -> None:
    """Check the stream, bind, serve until SIGTERM/SIGINT; ``ready(url)`` once bound."""
    asyncio.run(prepare_stream(config.urls, config.stream, config.startup_timeout))
    sock = socket.create_server((config.host, config.port), reuse_port=False, backlog=1024)
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}"
    try:
        if config.workers == 1:
            if ready is not None:
                ready(url)
            _serve_socket(config, sock)
        else:
            _supervise(config, sock, url, ready)
    finally:
        sock.close()


def _serve_socket(config: IngestConfig, sock: socket.socket) -> None:
    from waitress import create_server

    app, delivery = build_app(config)
    server: Any = create_server(
        app,
        sockets=[sock],
        threads=config.threads,
        max_request_body_size=config.max_body_bytes + (1 << 20),
        ident="spotify-events-collector",
        clear_untrusted_proxy_headers=True,
        # the single-process collector's connection limits: a fleet of keep-alive SDK
        # clients, and poll() rather than select() past 1,024 descriptors
        asyncore_use_poll=True,
        connection_limit=collector_default("connection_limit"),
        channel_timeout=collector_default("channel_timeout"),
    )

    run_until_signalled(server, started=lambda: None, stopped=delivery.close)


def _supervise(
    config: IngestConfig, sock: socket.socket, url: str, ready: Callable[[str], None] | None
) -> None:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:  # the child serves and never returns into the parent's code
            code = 0
            try:
                for s in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(s, signal.SIG_DFL)
                _serve_socket(config, sock)
            except BaseException:
                log.exception("ingest worker %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        return pid

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    children: set[int] = set()
    try:
        children = {spawn() for _ in range(config.workers)}
        if ready is not None:
            ready(url)
        last_spawn = 0.0
        while not stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid in children:
                children.discard(pid)
                log.warning("ingest worker %d exited (status %d); starting another", pid, status)
                time.sleep(max(0.0, last_spawn + 1.0 - time.monotonic()))
                last_spawn = time.monotonic()
                children.add(spawn())
            elif not pid:
                time.sleep(0.1)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30.0
        while children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                children.discard(pid)
            else:
                time.sleep(0.05)
        for pid in children:  # did not finish in time
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for s, handler in previous.items():
            signal.signal(s, handler)
