"""The client's :meth:`~spotify_events.EventClient.stats` as OpenTelemetry metrics.

Services that already export OpenTelemetry metrics see the SDK's numbers where they
look for everything else. Nothing here is imported for the core install's sake:
with ``opentelemetry-api`` absent (``pip install 'spotify-events[otel]'`` brings it)
:func:`register_if_available` does nothing.

Every client registers itself with the *global* meter provider when it is created,
as OpenTelemetry-instrumented libraries do: until the application configures an SDK
``MeterProvider``, the API is a no-op and nothing runs; once it does (before or after
the client was created), its reader collects these instruments. Pass an explicit
provider with :func:`register_metrics`.

All instruments are asynchronous (observable): ``log()`` pays nothing; one
``stats()`` snapshot per client per collection (cached for :data:`SNAPSHOT_TTL`
seconds) answers them all. Each observation carries the client's
``spotify_events.producer_id`` (one per queue file); drops and dead letters also
carry ``spotify_events.reason``. Through a Prometheus exporter, dots become
underscores: ``spotify_events.client.queue.events`` is
``spotify_events_client_queue_events`` (the alert rules in deploy/prometheus use it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

    from .client import ClientStats, EventClient

logger = logging.getLogger("spotify_events")

METER_NAME = "spotify_events"
#: One stats() snapshot per client serves every instrument of one collection.
SNAPSHOT_TTL = 1.0

#: (name, kind, unit, description, reader). A reader turns one stats() snapshot into
#: (value, extra attributes) pairs; ``now`` is time.time() of the collection.
_Reader = Callable[["ClientStats", float], Iterable[tuple[float, dict[str, str]]]]


def _one(value: float | None) -> list[tuple[float, dict[str, str]]]:
    return [] if value is None else [(value, {})]


def _by_reason(counts: dict[str, int]) -> list[tuple[float, dict[str, str]]]:
    return [(n, {"spotify_events.reason": reason}) for reason, n in sorted(counts.items())]


def _by_type(counts: dict[str, int]) -> list[tuple[float, dict[str, str]]]:
    return [(n, {"spotify_events.event_type": etype}) for etype, n in sorted(counts.items())]


_INSTRUMENTS: tuple[tuple[str, str, str, str, _Reader], ...] = (
    (
        "spotify_events.client.events.logged",
        "counter",
        "{event}",
        "Events accepted by log().",
        lambda s, now: _one(s.logged),
    ),
    (
        "spotify_events.client.events.committed",
        "counter",
        "{event}",
        "Events committed to the on-disk queue.",
        lambda s, now: _one(s.committed),
    ),
    (
        "spotify_events.client.events.sent",
        "counter",
        "{event}",
        "Events sent to the collector (retries included).",
        lambda s, now: _one(s.sent),
    ),
    (
        "spotify_events.client.events.acknowledged",
        "counter",
        "{event}",
        "Events the collector acknowledged.",
        lambda s, now: _one(s.acknowledged),
    ),
    (
        "spotify_events.client.events.dropped",
        "counter",
        "{event}",
        "Events dropped before shipping (queue full, disk errors), by reason.",
        lambda s, now: _by_reason(s.dropped),
    ),
    (
        "spotify_events.client.events.dead_lettered",
        "counter",
        "{event}",
        "Events the collector rejected, moved to the dead-letter table, by reason.",
        lambda s, now: _by_reason(s.dead_lettered),
    ),
    (
        "spotify_events.client.retries",
        "counter",
        "{retry}",
        "Batch sends retried.",
        lambda s, now: _one(s.retried),
    ),
    (
        "spotify_events.client.events.buffered",
        "updown",
        "{event}",
        "Events in memory, not yet committed to the queue.",
        lambda s, now: _one(s.buffered_events),
    ),
    (
        "spotify_events.client.queue.events",
        "updown",
        "{event}",
        "Events in the on-disk queue, not yet acknowledged.",
        lambda s, now: _one(s.queue_events),
    ),
    (
        "spotify_events.client.queue.held",
        "updown",
        "{event}",
        "Queued events held because the collector lacks their schema, by event type.",
        lambda s, now: _by_type(s.held),
    ),
    (
        "spotify_events.client.queue.size",
        "updown",
        "By",
        "Bytes of events in the on-disk queue.",
        lambda s, now: _one(s.queue_bytes),
    ),
    (
        "spotify_events.client.queue.oldest_event.age",
        "gauge",
        "s",
        "Age (by event time) of the oldest event in the queue; absent while it is empty.",
        lambda s, now: _one(s.oldest_event_age),
    ),
    (
        "spotify_events.client.last_acknowledgement.age",
        "gauge",
        "s",
        "Seconds since the collector last acknowledged a batch; absent before the first.",
        lambda s, now: _one(
            None if s.last_acknowledged_at is None else now - s.last_acknowledged_at
        ),
    ),
)


class _Observed:
    """One meter's instruments, observing every client registered with that meter."""

    def __init__(self, meter: Meter) -> None:
        self._clients: weakref.WeakSet[EventClient] = weakref.WeakSet()
        self._snapshots: weakref.WeakKeyDictionary[EventClient, tuple[float, ClientStats]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        factories = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for name, kind, unit, description, reader in _INSTRUMENTS:
            factories[kind](
                name, callbacks=[self._callback(reader)], unit=unit, description=description
            )

    def add(self, client: EventClient) -> None:
        with self._lock:
            self._clients.add(client)

    def _callback(self, reader: _Reader) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            now = time.time()
            out = []
            for client, stats in self._stats():
                base = {"spotify_events.producer_id": client.producer_id}
                for value, attributes in reader(stats, now):
                    out.append(Observation(value, {**base, **attributes}))
            return out

        return observe

    def _stats(self) -> list[tuple[EventClient, ClientStats]]:
        """A recent stats() snapshot of every live client (a failing one is skipped)."""
        mono = time.monotonic()
        with self._lock:
            clients = list(self._clients)
        out = []
        for client in clients:
            cached = self._snapshots.get(client)
            if cached is None or mono - cached[0] > SNAPSHOT_TTL:
                try:
                    cached = (mono, client.stats())
                except Exception:  # never raise into the host's metric export
                    logger.debug("spotify-events: stats() failed for metrics", exc_info=True)
                    continue
                self._snapshots[client] = cached
            out.append((client, cached[1]))
        return out


#: Instruments per meter provider (None: the global one), created once per process.
_observed: dict[Any, _Observed] = {}
_observed_lock = threading.Lock()


def _new_locks_in_child() -> None:
    """After os.fork(): a metrics thread of the parent may have held a lock; the child
    must not inherit it held (its next EventClient would wait forever)."""
    global _observed_lock
    _observed_lock = threading.Lock()
    for observed in _observed.values():
        observed._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


def register_metrics(client: EventClient, meter_provider: MeterProvider | None = None) -> None:
    """Export ``client``'s stats through ``meter_provider`` (default: the global one).

    Raises ImportError when ``opentelemetry-api`` is not installed.
    """
    from opentelemetry import metrics

    from . import __version__

    with _observed_lock:
        observed = _observed.get(meter_provider)
        if observed is None:
            meter = metrics.get_meter(METER_NAME, __version__, meter_provider=meter_provider)
            observed = _observed[meter_provider] = _Observed(meter)
    observed.add(client)


def register_if_available(client: EventClient) -> None:
    """Called by every new client: register with the global provider if the API is here."""
    try:
        register_metrics(client)
    except ImportError:
        return
    except Exception:  # metrics are a convenience; a broken OTel setup must not stop logging
        logger.warning("spotify-events: could not register OpenTelemetry metrics", exc_info=True)
