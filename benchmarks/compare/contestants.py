"""The contestants, each driven through its public API with its defaults.

An adapter builds the SDK's client pointed at the loopback sink and exposes
``call(record)`` (the one call the caller-side latency measures: ``log()``,
``track()``, ``capture()``) and ``flush(timeout)`` (the SDK's own way to push
out what it holds; some have no timeout, so the producer runs it in a daemon
thread and never waits past its deadline). Nothing else is configured: queue
sizes, batch sizes, retries, compression and threads are each SDK's defaults.

Imports happen in :meth:`Adapter.start`, so the producer process of one
contestant loads only that SDK.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .workload import EVENT_NAME, SCHEMAS

Record = dict[str, Any]


class Adapter:
    name = ""
    dist = ""  # the PyPI distribution, for its version
    module = ""  # what start() imports
    target = "sink"  # "sink" or "collector"
    call: Callable[[Record], Any]

    def start(self, base_url: str, workdir: Path) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """What the SDK itself says it did, where it says anything."""
        return {}

    def helper_cpu(self) -> float:
        """CPU seconds so far of the processes the SDK runs beside the caller's (none
        for most): the caller's own CPU leaves them out."""
        return 0.0

    def stop_helpers(self) -> None:
        """Stop those processes (the producer leaves through ``os._exit``)."""

    @classmethod
    def installed(cls) -> bool:
        try:
            return importlib.util.find_spec(cls.module) is not None
        except ImportError:
            return False

    @classmethod
    def version(cls) -> str:
        try:
            return importlib.metadata.version(cls.dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"


class SpotifyEvents(Adapter):
    name = "spotify-events"
    dist = "spotify-events"
    module = "spotify_events"
    shipping = "in-process"

    def start(self, base_url: str, workdir: Path) -> None:
        from spotify_events import EventClient

        self.client = EventClient(
            endpoint=f"{base_url}/v1/batches",
            queue_path=str(workdir / "events.db"),
            schemas=str(SCHEMAS),
            durability="buffered",
            shipping=self.shipping,
        )
        log = self.client.log
        self.call = lambda record: log(EVENT_NAME, record)

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout=timeout)

    def stats(self) -> dict[str, Any]:
        s = self.client.stats()
        return {
            "logged": s.logged,
            "committed": s.committed,
            "acknowledged": s.acknowledged,
            "retried": s.retried,
            "dropped": sum(s.dropped.values()),
            "dead_lettered": sum(s.dead_lettered.values()),
            "queue_events": s.queue_events,
        }


class SpotifyEventsCollector(SpotifyEvents):
    """The same client, delivering to the reference collector (full path to buckets)."""

    name = "spotify-events/collector"
    target = "collector"


class SpotifyEventsAgent(SpotifyEvents):
    """The same client with ``shipping="agent"``: ``spotify-events agent`` ships its
    queue file from a process of its own (started as ``benchmarks/e2e_delivery.py``
    starts it), whose CPU :meth:`helper_cpu` reports."""

    name = "spotify-events/agent"
    shipping = "agent"

    def start(self, base_url: str, workdir: Path) -> None:
        from benchmarks.e2e_delivery import shipping_agent

        super().start(base_url, workdir)
        self._helpers = ExitStack()
        agent = shipping_agent(self.shipping, workdir / "events.db", f"{base_url}/v1/batches")
        self.agent_pid = self._helpers.enter_context(agent)

    def helper_cpu(self) -> float:
        from benchmarks.e2e_delivery import cpu_seconds

        return cpu_seconds(self.agent_pid)

    def stop_helpers(self) -> None:
        self._helpers.close()


class Segment(Adapter):
    name = "segment"
    dist = "segment-analytics-python"
    module = "segment.analytics"

    def start(self, base_url: str, workdir: Path) -> None:
        from segment.analytics import Client

        self.client = Client(write_key="bench-write-key", host=base_url)
        track = self.client.track
        self.call = lambda record: track(
            user_id=record["user_id"], event=EVENT_NAME, properties=record
        )

    def flush(self, timeout: float) -> None:
        self.client.flush()  # queue.join(): no timeout of its own


class PostHog(Adapter):
    name = "posthog"
    dist = "posthog"
    module = "posthog"

    def start(self, base_url: str, workdir: Path) -> None:
        from posthog import Posthog

        # No personal_api_key: no feature-flag poller, no local evaluation; the sink
        # counts any request to another path, so a call-out would show in the JSON.
        self.client = Posthog("phc_bench_project_key", host=base_url, disabled=False)
        capture = self.client.capture
        self.call = lambda record: capture(
            EVENT_NAME, distinct_id=record["user_id"], properties=record
        )

    def flush(self, timeout: float) -> None:
        try:
            self.client.flush(timeout_seconds=timeout)
        except TypeError:  # releases before flush() took a timeout
            self.client.flush()


class Snowplow(Adapter):
    name = "snowplow"
    dist = "snowplow-tracker"
    module = "snowplow_tracker"
    SCHEMA = "iglu:com.spotify/EndSong/jsonschema/1-0-0"

    def start(self, base_url: str, workdir: Path) -> None:
        from snowplow_tracker import (  # type: ignore[attr-defined]
            AsyncEmitter,
            SelfDescribing,
            SelfDescribingJson,
            Tracker,
        )

        self.emitter = AsyncEmitter(
            base_url
        )  # http://127.0.0.1:PORT -> .../com.snowplowanalytics.snowplow/tp2
        self.tracker = Tracker(namespace="bench", emitters=self.emitter, app_id="bench")
        track, schema = self.tracker.track, self.SCHEMA
        self.call = lambda record: track(SelfDescribing(SelfDescribingJson(schema, record)))

    def flush(self, timeout: float) -> None:
        self.tracker.flush(is_async=False)  # loops until its buffer is empty: no timeout


class OpenTelemetryLogs(Adapter):
    """The OpenTelemetry Python logs SDK: a ``LoggerProvider`` with the default
    ``BatchLogRecordProcessor`` and the OTLP/HTTP (protobuf) exporter; each event is
    one ``Logger.emit`` whose event name and attributes are the record."""

    name = "opentelemetry"
    dist = "opentelemetry-sdk"
    module = "opentelemetry.sdk._logs"

    def start(self, base_url: str, workdir: Path) -> None:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{base_url}/v1/logs"))
        )
        emit = self.provider.get_logger("bench").emit
        self.call = lambda record: emit(event_name=EVENT_NAME, attributes=record)

    def flush(self, timeout: float) -> None:
        self.provider.force_flush(timeout_millis=int(timeout * 1000))


CONTESTANTS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (
        SpotifyEvents,
        SpotifyEventsCollector,
        SpotifyEventsAgent,
        Segment,
        PostHog,
        Snowplow,
        OpenTelemetryLogs,
    )
}
BASELINE = SpotifyEvents.name
