"""Running the collector: wire the parts together and serve them with waitress.

Why waitress: it is pure Python (no compiler, installs everywhere the SDK does),
multi-threaded (requests block on fsync, so threads are what we want; the work
between fsyncs is fastavro C code and SQLite, which release the GIL for I/O),
runs the same on Linux, macOS and Windows, is maintained under the Pylons
project, and is embeddable: ``create_server`` hands back the bound socket, so
``--port 0`` can report the port it got. gunicorn would add pre-fork workers we
cannot use (one writer owns the ledger) and does not run on Windows; uvicorn
would need an ASGI rewrite for no gain on a disk-bound endpoint.

Connections: waitress runs with ``asyncore_use_poll=True`` (``select()`` fails
outright once a descriptor number passes 1024), ``connection_limit`` sized for a
fleet of keep-alive SDK clients, and an idle ``channel_timeout``; the open-file
limit is raised to fit connections plus open part files.

Shutdown: SIGTERM and SIGINT make waitress's loop return (it catches SystemExit /
KeyboardInterrupt and stops its worker threads, letting in-flight requests
finish), then the closer thread stops and delivery fsyncs and closes its part
files and the ledger.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..schemas import SchemaRegistry
from .app import CollectorApp
from .config import CollectorConfig
from .datadir import FileModes
from .delivery import LocalDelivery
from .ingest import Ingest, IngestLimits
from .metrics import CollectorMetrics, add_health
from .seam import DeliveryConfig

log = logging.getLogger(__name__)


class Collector:
    """The assembled collector: registry, ingest, delivery, metrics, WSGI app."""

    def __init__(self, config: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = SchemaRegistry(config.schemas)
        self.delivery = LocalDelivery(
            config.data_dir,
            self.registry,
            config=DeliveryConfig(
                grace_period=config.grace_period,
                lateness=config.lateness,
                codec=config.codec,
                max_open_files=config.max_open_files,
                max_hours_per_batch=config.max_hours_per_batch,
                max_ranges_per_stream=config.max_ranges_per_stream,
                modes=FileModes.group_readable() if config.group_readable else FileModes(),
                adopt_data_dir=config.adopt_data_dir,
            ),
            clock=clock,
        )
        self.ingest = Ingest(
            self.registry,
            limits=IngestLimits(
                max_body_bytes=config.max_body_bytes,
                max_events=config.max_events,
                max_decoded_bytes=config.max_decoded_bytes,
                max_future_seconds=config.max_future_seconds,
            ),
            clock=clock,
        )
        self.metrics = CollectorMetrics(self.registry.event_types)
        self.metrics.add_missing_events_source(self.delivery.missing_events)
        add_health(self.metrics, self.delivery.completeness, data_dir=config.data_dir)
        self.app = CollectorApp(
            ingest=self.ingest,
            delivery=self.delivery,
            metrics=self.metrics,
            report=self.delivery.report,
            token=config.token,
            metrics_token=config.metrics_token,
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

    if config.token is None and config.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "listening on %s without --token: anyone who can reach this port can post "
            "events and read the report; set --token (or SPOTIFY_EVENTS_TOKEN)",
            config.host,
        )
    _raise_open_file_limit(config.connection_limit + config.max_open_files + 64)
    collector = Collector(config)
    try:
        server: Any = create_server(
            collector.app,
            host=config.host,
            port=config.port,
            threads=config.threads,
            # our own limit answers 413 with a JSON body; waitress's is only a backstop
            max_request_body_size=config.max_body_bytes + (1 << 20),
            ident="spotify-events-collector",
            clear_untrusted_proxy_headers=True,
            asyncore_use_poll=True,
            connection_limit=config.connection_limit,
            channel_timeout=config.channel_timeout,
        )
    except BaseException:
        collector.shutdown()
        raise

    def started() -> None:
        collector.start_closer()
        host, port = server.effective_host, server.effective_port
        if ready is not None:
            ready(f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}")

    run_until_signalled(server, started=started, stopped=collector.shutdown)
    log.info("collector stopped (pid %d)", os.getpid())


def run_until_signalled(
    server: Any, *, started: Callable[[], None], stopped: Callable[[], None]
) -> None:
    """Run a waitress server until SIGTERM/SIGINT, then close it and call ``stopped``.

    The signal handlers are in place before ``started`` (which announces the URL), so
    a supervisor that signals as soon as it reads the URL still gets a clean stop.
    Raising SystemExit inside waitress's loop is how it stops its threads.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        started()
        server.run()
    except SystemExit:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            server.close()
        finally:
            stopped()


def _raise_open_file_limit(needed: int) -> None:
    """Raise the soft open-file limit toward ``needed`` (up to the hard limit); warn if short.

    Past the limit, accept() and open() fail: connections beyond it wait in the
    kernel's backlog and a new part file cannot be opened (503 until one closes).
    """
    if sys.platform == "win32":  # pragma: no cover
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open-file limit %d is below connection limit + open part files + 64 = %d; "
            "raise it (ulimit -n) or lower --connection-limit / --max-open-files",
            soft,
            needed,
        )
