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

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
