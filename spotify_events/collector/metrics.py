"""Prometheus metrics of one collector app, in its own ``CollectorRegistry``.

A per-app registry (not prometheus-client's global one) lets several apps live in
one process — tests, the benchmark, an embedding service — without "Duplicated
timeseries" errors, and makes ``/metrics`` show only this collector's numbers.
Event-type labels are limited to types in the schema registry (others count as
``_unknown``) and no label carries a producer id (per-producer detail is in the
report), so no client can blow up label cardinality. Nothing here takes the
delivery lock: the missing-events gauge reads a number delivery keeps up to date.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from .accounting import account
from .ledger import LedgerState

PREFIX = "spotify_events_collector"


class CollectorMetrics:
    """All counters, histograms and gauges of one collector app."""

    def __init__(self, known_types: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_types = frozenset(known_types)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by path and status.",
            ["path", "status"],
            registry=r,
        )
        self.batches = Counter(f"{PREFIX}_batches", "Batches accepted (2xx).", registry=r)
        self.heartbeats = Counter(f"{PREFIX}_heartbeats", "Empty batches (heartbeats).", registry=r)
        self.events = Counter(
            f"{PREFIX}_events",
            "Events by type and outcome (accepted, duplicate, rejected).",
            ["event_type", "outcome"],
            registry=r,
        )
        self.skewed = Counter(
            f"{PREFIX}_skewed_events", "Events written to a later bucket.", registry=r
        )
        self.bytes = Counter(
            f"{PREFIX}_request_bytes", "Bytes of batch bodies received.", registry=r
        )
        self.decode_errors = Counter(
            f"{PREFIX}_decode_errors", "Batches refused as undecodable (400).", registry=r
        )
        self.bad_requests = Counter(
            f"{PREFIX}_bad_requests", "Requests refused, by kind.", ["kind"], registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Time to handle POST /v1/batches, including fsync.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_lag = Histogram(
            f"{PREFIX}_batch_lag_seconds",
            "Arrival time minus the newest event time of each batch with events.",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400),
            registry=r,
        )
        self.missing_events = Gauge(
            f"{PREFIX}_missing_events",
            "Sequence numbers below producers' announced watermarks not yet accounted for.",
            registry=r,
        )

    def add_missing_events_source(self, source: Callable[[], float]) -> None:
        self.missing_events.set_function(source)

    def type_label(self, event_type: str) -> str:
        return event_type if event_type in self.known_types else "_unknown"

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


# -- completeness, health and build info --------------------------------------------
# Gauges the alert rules (deploy/prometheus/alerts.yml) are written against. Computed at
# scrape time from the ledger state, label-free: one series each per collector, whatever
# the number of producers.

#: A producer counts as active while its last batch (heartbeats included) is this recent:
#: four of the SDK's default 30 s heartbeats.
ACTIVE_WINDOW = 120.0


@dataclass(frozen=True)
class CompletenessGauges:
    """What the ledger says right now, summed over every stream and bucket."""

    lost: int = 0
    open_gaps: int = 0
    dropped: int = 0
    rejected: int = 0
    producers: int = 0
    active_producers: int = 0
    open_buckets: int = 0
    overdue_seconds: float = 0.0  # how far the most overdue open hour is past its close time


def completeness_gauges(
    state: LedgerState, now: float, *, grace: float, lateness: float
) -> CompletenessGauges:
    """Sum the loss accounting of every stream; find the most overdue open bucket."""
    lost = open_gaps = dropped = rejected = 0
    last_seen: dict[str, float] = {}
    for st in state.streams.values():
        a = account(st, now, grace, max_gap_ranges=0)
        lost += a.lost
        open_gaps += a.open_gaps
        dropped += a.dropped
        rejected += a.rejected
        last_seen[st.producer_id] = max(last_seen.get(st.producer_id, 0.0), st.last_seen)
    open_hours = [b.hour for b in state.buckets.values() if not b.closed]
    overdue = max((now - ((h + 1) * 3600 + lateness) for h in open_hours), default=0.0)
    return CompletenessGauges(
        lost=lost,
        open_gaps=open_gaps,
        dropped=dropped,
        rejected=rejected,
        producers=len(last_seen),
        active_producers=sum(1 for t in last_seen.values() if t >= now - ACTIVE_WINDOW),
        open_buckets=len(open_hours),
        overdue_seconds=max(0.0, overdue),
    )


#: (metric name, help, CompletenessGauges field) of every completeness gauge.
_COMPLETENESS = (
    ("lost_events", "Sequence numbers missing past the grace period (lost).", "lost"),
    ("open_gap_events", "Sequence numbers missing, still within the grace period.", "open_gaps"),
    ("dropped_events", "Events producers reported dropped (drop notices).", "dropped"),
    ("rejected_events", "Events rejected (by the collector or reported by producers).", "rejected"),
    ("producers", "Producers in the ledger.", "producers"),
    (
        "active_producers",
        f"Producers heard from (events or heartbeat) in the last {ACTIVE_WINDOW:g} s.",
        "active_producers",
    ),
    ("open_buckets", "Hourly buckets not yet closed.", "open_buckets"),
    (
        "open_bucket_overdue_seconds",
        "How far the most overdue open bucket is past its close time (hour end + lateness).",
        "overdue_seconds",
    ),
)
_DATA_DIR_FREE = (
    f"{PREFIX}_data_dir_free_bytes",
    "Bytes available to the collector on the data directory's filesystem.",
)
_DATA_DIR_SIZE = (f"{PREFIX}_data_dir_size_bytes", "Size of the data directory's filesystem.")


class _CompletenessCollector(Collector):
    """Completeness gauges from ``source`` (none while it has no figures yet) and the data
    directory's free space."""

    def __init__(
        self, source: Callable[[], CompletenessGauges | None], data_dir: str | None
    ) -> None:
        self._source = source
        self._data_dir = data_dir

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families without values: registering must not walk the ledger."""
        for name, doc, _ in _COMPLETENESS:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc)
        if self._data_dir is not None:
            yield GaugeMetricFamily(*_DATA_DIR_FREE)
            yield GaugeMetricFamily(*_DATA_DIR_SIZE)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = self._source()
        for name, doc, field_name in _COMPLETENESS if g is not None else ():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=getattr(g, field_name))
        if self._data_dir is not None:
            try:
                fs = os.statvfs(self._data_dir)
            except OSError:  # gone or unreadable: no sample rather than a wrong one
                return
            yield GaugeMetricFamily(*_DATA_DIR_FREE, value=fs.f_bavail * fs.f_frsize)
            yield GaugeMetricFamily(*_DATA_DIR_SIZE, value=fs.f_blocks * fs.f_frsize)


def add_health(
    metrics: CollectorMetrics,
    source: Callable[[], CompletenessGauges | None],
    *,
    data_dir: str | None = None,
) -> None:
    """Register the completeness gauges, the data directory's space and the build info."""
    metrics.registry.register(_CompletenessCollector(source, data_dir))
    build = Gauge(
        f"{PREFIX}_build_info",
        "Always 1; the labels say which collector version and Python serve.",
        ["version", "python"],
        registry=metrics.registry,
    )
    build.labels(__version__, platform.python_version()).set(1)
