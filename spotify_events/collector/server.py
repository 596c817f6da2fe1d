"""Running the collector: wire the parts together and serve them with waitress.

Why waitress: it is pure Python (no compiler, installs everywhere the SDK does),
multi-threaded (requests block on fsync, so threads are what we want; the work
between fsyncs is fastavro C code and SQLite, which release the GIL for I/O),
runs the same on Linux, macOS and Windows, is maintained under the Pylons
project, and is embeddable: ``create_server`` hands back the bound socket, so
``--port 0`` can report the port it got. gunicorn would add pre-fork workers we
cannot use (one writer owns the ledger) and does not run on Windows; uvicorn
would need an ASGI rewrite for no gain on a disk-bound endpoint.

Shutdown: SIGTERM and SIGINT make waitress's loop return (it catches SystemExit /
KeyboardInterrupt and stops its worker threads, letting in-flight requests
finish), then the closer thread stops and delivery fsyncs and closes its part
files and the ledger.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..errors import ConfigError
from ..schemas import SchemaRegistry
from .app import CollectorApp
from .delivery import DeliveryConfig, LocalDelivery
from .ingest import Ingest, IngestLimits
from .metrics import CollectorMetrics, add_health

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``spotify-events collector`` can be told; validated at construction."""

    data_dir: str
    schemas: str
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    grace_period: float = 300.0
    lateness: float = 600.0
    max_body_bytes: int = 16 << 20
    max_events: int = 100_000
    max_decoded_bytes: int = 64 << 20
    threads: int = 8
    close_interval: float = 30.0
    codec: str = "deflate"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        if self.threads < 1:
            raise ConfigError("threads must be >= 1")
        if self.close_interval <= 0:
            raise ConfigError("close_interval must be > 0")


class Collector:
    """The assembled collector: registry, ingest, delivery, metrics, WSGI app."""

    def __init__(self, config: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = SchemaRegistry(config.schemas)
        self.delivery = LocalDelivery(
            config.data_dir,
            self.registry,
            config=DeliveryConfig(
                grace_period=config.grace_period, lateness=config.lateness, codec=config.codec
            ),
            clock=clock,
        )
        self.ingest = Ingest(
            self.registry,
            limits=IngestLimits(
                max_body_bytes=config.max_body_bytes,
                max_events=config.max_events,
                max_decoded_bytes=config.max_decoded_bytes,
            ),
            clock=clock,
        )
        self.metrics = CollectorMetrics(self.registry.event_types)
        self.metrics.add_lag_source(self.delivery.lag_events)
        add_health(self.metrics, self.delivery.completeness, data_dir=config.data_dir)
        self.app = CollectorApp(
            ingest=self.ingest,
            delivery=self.delivery,
            metrics=self.metrics,
            report=self.delivery.report,
            token=config.token,
        )
        self._stop = threading.Event()
        self._closer = threading.Thread(
            target=self._close_loop, name="spotify-events-bucket-closer", daemon=True
        )

    def start_closer(self) -> None:
        self._closer.start()

    def _close_loop(self) -> None:
        """Close due buckets on a timer, so quiet hours close without new traffic."""
        while not self._stop.wait(self.config.close_interval):
            try:
                self.delivery.close_due_buckets()
            except Exception:  # never let the timer die; the next tick retries
                log.exception("closing due buckets failed")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the closer thread, then flush and close delivery; idempotent."""
        self._stop.set()
        if self._closer.is_alive():
            self._closer.join(timeout)
        self.delivery.close()


def serve(config: CollectorConfig, *, ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT; call ``ready(url)`` once the socket is listening."""
    from waitress import create_server

    collector = Collector(config)
    server: Any = create_server(
        collector.app,
        host=config.host,
        port=config.port,
        threads=config.threads,
        # our own limit answers 413 with a JSON body; waitress's is only a backstop
        max_request_body_size=config.max_body_bytes + (1 << 20),
        ident="spotify-events-collector",
        clear_untrusted_proxy_headers=True,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # waitress's run() catches it and stops its threads

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        collector.start_closer()
        host, port = server.effective_host, server.effective_port
        url = f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}"
        if ready is not None:
            ready(url)
        server.run()
    except SystemExit:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            server.close()
        finally:
            collector.shutdown()
        log.info("collector stopped (pid %d)", os.getpid())
