"""EventClient: the public face a service holds for its whole life.

It encodes in the caller's thread and hands events to its
:class:`~spotify_events.pipeline.Pipeline` (buffer, group commit to the SQLite
queue, ship in the background), and keeps the rules that keep the host service
first:

* ``log()`` never touches the network and never raises for network or
  collector trouble; it raises only for the caller's own mistakes (unknown
  type, invalid record, oversized event), before anything is enqueued.
* Threads are daemons, started on first use, so creating a client at import
  time (gunicorn/uwsgi pre-fork) starts nothing; after ``os.fork()`` the child
  drops the parent's in-memory buffer, opens its own connections and starts its
  own threads lazily, and no lock is inherited in a held state.
* ``close()`` and the ``atexit`` hook commit the buffer and give the shipper a
  bounded chance to send; what is left stays in the queue for the next start.
  With ``shipping="agent"`` there is no shipper thread: ``close()`` commits and
  leaves, ``flush()`` waits for the agent to drain what was logged.
  A process that does not hold the shipping lease (another live process sharing
  the queue file does) commits and returns at once: the holder ships its events.
* Leftovers of an earlier process ship once this one starts its threads: at the
  first ``log()``, or at an explicit ``start()`` (what the server hooks call
  after the fork), never at construction.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .config import ClientConfig, Durability
from .encoding import EventEncoder
from .errors import ClientClosedError, EventValidationError, QueueError
from .lifecycle import ProcessHooks
from .otel_metrics import register_if_available
from .pipeline import Pipeline
from .queue import QueueDepth
from .schemas import SchemaRegistry
from .settings import ClientSettings
from .shipper import Shipper
from .transport import HttpTransport, Transport
from .wire import MAX_EVENT_MILLIS, MIN_EVENT_MILLIS
from .writer import QueueWriter

logger = logging.getLogger("spotify_events")


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of what the client has done; every drop is somewhere in here."""

    logged: int
    committed: int
    sent: int
    acknowledged: int
    retried: int
    heartbeats: int
    dropped: dict[str, int]
    dead_lettered: dict[str, int]
    buffered_events: int
    queue_events: int
    queue_bytes: int
    oldest_event_age: float | None
    last_error: str | None
    instrumentation_errors: int = 0  # @track/timed() events that could not be built or logged
    last_acknowledged_at: float | None = None  # epoch seconds of the last acknowledgement
    reentered: int = 0  # log() calls made from inside log() in one thread (signal handler, __del__)
    held: dict[str, int] = field(
        default_factory=dict
    )  # queued events per type whose schema the collector lacks


class EventClient:
    """Log typed events; they are delivered to the collector or reported as lost.

    Settings are keyword-only and fall back to ``SPOTIFY_EVENTS_<NAME>``
    environment variables (see :class:`~spotify_events.config.ClientConfig`).
    """

    def __init__(
        self, *, transport: Transport | None = None, **settings: Unpack[ClientSettings]
    ) -> None:
        self.config = ClientConfig.build(**settings)
        cfg = self.config
        self.registry = SchemaRegistry.coerce(cfg.schemas)
        self._encoders: dict[str, EventEncoder] = {}
        self._durable = cfg.durability is not Durability.BUFFERED
        self._own_transport = transport is None
        self._transport: Transport = transport or HttpTransport(cfg.transport_settings())
        self._pipeline = Pipeline(cfg, self._transport)
        self._writer = self._pipeline.writer  # log()'s hot path: one attribute lookup
        self._shipper = self._pipeline.shipper
        self._started = False
        self._start_lock = threading.RLock()  # a signal handler may log during _start()
        self._closed = False
        self._close_result: bool | None = None
        self._close_lock = threading.Lock()
        self._final_depth: QueueDepth | None = None
        self._final_held: dict[str, int] = {}
        # Fork, exit and multiprocessing hooks, once, through weak references: the
        # pipeline's parts in their order, then the client's own reset, which rewires.
        self._process_hooks = ProcessHooks(self._exit_hook)
        for part in self._pipeline.parts():
            self._process_hooks.register(part)
        self._process_hooks.register(self)
        # A client dropped without close(): its threads hold the writer and shipper,
        # not the client, so commit the buffer when the client itself is collected.
        self._finalizer = weakref.finalize(self, _commit_on_collect, self._writer, self._shipper)
        self._finalizer.atexit = False  # at exit the atexit hook does the full close()
        register_if_available(self)  # OpenTelemetry metrics, when opentelemetry-api is installed

    @property
    def producer_id(self) -> str:
        return self._pipeline.writer_queue.producer_id

    # -- the hot path ------------------------------------------------------------------
    def log(
        self,
        event: str | Any,
        record: Mapping[str, Any] | None = None,
        *,
        timestamp: float | datetime | None = None,
    ) -> None:
        """Validate, encode and enqueue one event.

        ``event`` is an event type name (full, or short where unambiguous) with
        ``record`` a dict, or an instance of a generated event class. The event
        time defaults to now; ``timestamp`` takes epoch seconds or a datetime.
        Raises :class:`EventValidationError` (a ``ValueError``) for bad input.
        """
        if not self._started:  # first event, or first in a forked child (the hook resets it)
            self._start()
        if record is None and not isinstance(event, str):
            record = event.to_avro()
            event = event.__event_type__
        encoder = self._encoders.get(event) or self._encoder_for(event)
        payload = encoder.encode(record)  # type: ignore[arg-type]
        millis = int(time.time() * 1000) if timestamp is None else _event_millis(encoder, timestamp)
        schema = encoder.schema
        # a plain tuple (queue.PendingRow): building a NamedTuple costs 0.2 us more
        ticket = self._writer.submit((schema.full_name, schema.fingerprint, millis, payload))
        if self._durable and ticket:
            self._writer.commit_through(ticket, self.config.commit_timeout)

    def _encoder_for(self, event_type: str) -> EventEncoder:
        if not isinstance(event_type, str):
            raise TypeError(
                f"log() takes an event type name and a dict, or an event instance; got {event_type!r}"
            )
        encoder = EventEncoder(self.registry.get(event_type), self.config.max_event_bytes)
        self._encoders[event_type] = encoder
        return encoder

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background threads now instead of at the first ``log()``, so events an
        earlier process left in the queue ship even if this one never logs. Idempotent.
        Call it where threads are safe: in a worker after the fork (gunicorn ``post_fork``,
        an ASGI lifespan startup), never in a pre-fork master."""
        self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._closed:
                raise ClientClosedError(
                    f"{self!r} is closed; create a new client to log more events"
                )
            if not self._started:
                self._pipeline.start()
                self._started = True

    # Lifecycle (see spotify_events.lifecycle): the queues, writer, shipper and transport
    # handle their own state around a fork; the client's part runs after theirs.
    def before_fork(self) -> None:
        """Nothing of the client's own: its queues hold SQLite quiet through the fork."""

    def after_fork_in_parent(self) -> None:
        """The parent's client carries on as it was."""

    def after_fork_in_child(self) -> None:
        """Runs in the child right after fork, after the parts reset: replace every lock a
        parent thread could have held and rewire the fresh writer and shipper. Connections
        and threads come lazily, on first use."""
        self._start_lock = threading.RLock()  # a signal handler may log during _start()
        self._close_lock = threading.Lock()
        self._pipeline.wire()
        self._started = False

    def stop(self, timeout: float) -> bool:
        """:class:`~spotify_events.lifecycle.Lifecycle`'s stop: :meth:`close`."""
        return self.close(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every event logged before this call is acknowledged by the
        collector (or dead-lettered); False if ``timeout`` passed first. With
        ``shipping="agent"`` that is the agent process deleting them from the queue
        file, which it does only on the collector's acknowledgement."""
        if not self._started:
            self._start()
        return self._flush(timeout)

    def _flush(self, timeout: float) -> bool:
        try:
            return self._pipeline.delivered_through(timeout)
        except QueueError as exc:  # closed under us, or the disk is failing: not delivered
            logger.debug("flush gave up: %s", exc)
            return False

    def close(self, timeout: float | None = None) -> bool:
        """Commit the buffer, ship what can be shipped within ``timeout`` and stop.

        Safe to call twice (and from several threads): later calls return the
        first call's answer. True when everything was delivered; what was not
        stays in the queue file and ships on the next start. From the moment
        close() begins, log() raises ClientClosedError, so no event can slip into
        a buffer nobody will commit.
        """
        with self._close_lock:
            if self._close_result is not None:
                return self._close_result
            with self._start_lock:
                self._closed = True
                started, self._started = self._started, False
            self._process_hooks.stop_fork_handling()
            budget = self.config.close_timeout if timeout is None else timeout
            deadline = time.monotonic() + budget
            if started:
                self._writer.stop(budget)
                if not self._pipeline.ships:
                    # An agent ships this file: commit, look once, leave (never take its lease).
                    delivered = self._flush(0.0)
                elif self._may_ship_by(deadline):
                    delivered = self._flush(max(0.0, deadline - time.monotonic()))
                    self._shipper.stop(max(0.1, deadline - time.monotonic()))
                else:
                    # Another live process holds the lease and ships our events: waiting
                    # would only hold up the exit. Stop the thread first (nothing then wakes
                    # it into a lease write), look once, leave.
                    self._shipper.stop(max(0.1, deadline - time.monotonic()))
                    delivered = self._flush(0.0)
            else:
                delivered = not self._pipeline.depth().events
            self._process_hooks.unregister_exit()
            self._finalizer.detach()
            if self._own_transport:
                self._transport.close()
            self._final_held = self._pipeline.held()
            self._final_depth = self._pipeline.depth()  # stats() keeps answering after close
            if self._final_depth.events:
                logger.warning(
                    "spotify-events: %d event(s) remain in %s; they ship on the next start",
                    self._final_depth.events,
                    self.config.queue_path,
                )
            self._pipeline.close_queues()
            self._close_result = delivered
            return delivered

    def _may_ship_by(self, deadline: float) -> bool:
        """:meth:`Shipper.may_ship`, answered by close()'s ``deadline``: the shipper thread
        may hold the connection through its wait for another process's write lock, and
        taking the lease is a write of its own. Unanswered in time counts as "no"."""
        with self._pipeline.shipper_queue.waiting_until(deadline):
            return self._shipper.may_ship()

    def _exit_hook(self) -> None:
        """At interpreter exit: commit, give the shipper ``exit_timeout``, never hang."""
        try:
            self.close(self.config.exit_timeout)
        except Exception:  # the host is exiting; say what happened and let it go
            logger.exception("spotify-events: error while closing at exit")

    def __enter__(self) -> EventClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- introspection ---------------------------------------------------------------------
    def stats(self) -> ClientStats:
        w, s = self._writer.counters, self._shipper.counters
        depth = self._final_depth if self._final_depth is not None else self._pipeline.depth()
        buffered, _ = self._writer.buffered
        dropped = dict(w.dropped)
        # An agent's acknowledgements reach its process, not this one: what this process
        # can see is its committed events leaving the queue file (see README, stats()).
        acknowledged = (
            s.acknowledged if self._pipeline.ships else max(0, w.committed - depth.events)
        )
        return ClientStats(
            logged=w.logged,
            committed=w.committed,
            sent=s.events_sent,
            acknowledged=acknowledged,
            retried=s.retries,
            heartbeats=s.heartbeats,
            dropped=dropped,
            dead_lettered=dict(s.dead_lettered),
            buffered_events=buffered,
            queue_events=depth.events,
            queue_bytes=depth.bytes,
            oldest_event_age=(time.time() - depth.oldest_timestamp / 1000)
            if depth.oldest_timestamp
            else None,
            last_error=s.last_error or w.last_error,
            instrumentation_errors=self.instrumentation_errors,
            last_acknowledged_at=s.last_success,
            reentered=w.reentered,
            held=self._held(),
        )

    def _held(self) -> dict[str, int]:
        if self._final_depth is not None:  # closed: the queue file is no longer open
            return dict(self._final_held)
        return self._pipeline.held()

    def __repr__(self) -> str:
        return f"<EventClient {self.config.endpoint} queue={self.config.queue_path} {self.config.durability.value}>"

    # -- instrumentation (see spotify_events.instrument) -------------------------------------
    instrumentation_errors: int = 0
    """Events ``@track``/``timed()`` could not build or log; the host call went on regardless."""

    def track(
        self, event_type: str, /, *, fields: FieldsFn | None = None, **static_fields: Any
    ) -> Callable[[_F], _F]:
        """Decorator: one event per call; see :func:`spotify_events.instrument.track`."""
        from .instrument import track

        return track(self, event_type, fields=fields, **static_fields)

    def timed(self, event_type: str, /, **static_fields: Any) -> Timed:
        """Context manager: one event per block; see :func:`spotify_events.instrument.timed`."""
        from .instrument import timed

        return timed(self, event_type, **static_fields)


def _event_millis(encoder: EventEncoder, timestamp: float | datetime) -> int:
    """Milliseconds since the epoch for an explicit event time, or a clear error:
    a time no reader can decode would poison the whole batch it travels in."""
    try:
        if isinstance(timestamp, datetime):
            aware = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc)
            millis = int(aware.timestamp() * 1000)
        else:
            millis = int(timestamp * 1000)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EventValidationError(
            encoder.schema.full_name, [f"timestamp {timestamp!r}: {exc}"], field="timestamp"
        ) from exc
    if not MIN_EVENT_MILLIS <= millis <= MAX_EVENT_MILLIS:
        raise EventValidationError(
            encoder.schema.full_name,
            [f"timestamp {timestamp!r} is outside years 1-9999 (epoch seconds or a datetime)"],
            field="timestamp",
        )
    return millis


def _commit_on_collect(writer: QueueWriter, shipper: Shipper) -> None:
    """A client was garbage collected without close(): keep its buffered events."""
    try:
        writer.stop(1.0)
        shipper.stop(1.0)
    except Exception:  # called from the garbage collector: never raise
        logger.exception("spotify-events: error committing a collected client's buffer")


if TYPE_CHECKING:  # names used only in annotations
    from collections.abc import Callable

    from typing_extensions import Unpack

    from .instrument import F as _F
    from .instrument import FieldsFn, Timed
