"""The client's stats() through OpenTelemetry: read back with the SDK's
InMemoryMetricReader after real deliveries to a loopback sink, with drops and a
backlog while nobody answers, registered automatically with the global provider, and
not needed at all by the core install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sdk_helpers import END_SONG, Sink, wait_for
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.otel_metrics import register_metrics

Points = dict[str, list[tuple[dict[str, Any], float]]]


def read(reader: InMemoryMetricReader) -> Points:
    """Metric name -> [(attributes, value)] of one collection."""
    out: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    out.setdefault(metric.name, []).append(
                        (dict(point.attributes or {}), point.value)  # type: ignore[union-attr]
                    )
    return out


def value(points: Points, name: str, **attributes: str) -> float:
    matching = [
        v for a, v in points.get(name, []) if all(a.get(k) == x for k, x in attributes.items())
    ]
    assert len(matching) == 1, (name, points.get(name))
    return matching[0]


def test_stats_are_exported_after_real_deliveries(
    sink: Sink, make_client: Callable[..., EventClient]
) -> None:
    sink.reject = lambda payload: "invalid_payload: bad track" if b"bad-track" in payload else None
    reader = InMemoryMetricReader()
    client = make_client(endpoint=sink.endpoint)
    register_metrics(client, MeterProvider(metric_readers=[reader]))
    for i in range(25):
        client.log("EndSong", {**END_SONG, "track_id": f"t{i}"})
    client.log("EndSong", {**END_SONG, "track_id": "bad-track"})
    assert client.flush(timeout=30)

    points = read(reader)
    pid = client.producer_id
    assert {a["spotify_events.producer_id"] for p in points.values() for a, _ in p} == {pid}
    assert value(points, "spotify_events.client.events.logged") == 26
    assert value(points, "spotify_events.client.events.committed") == 26
    assert value(points, "spotify_events.client.events.acknowledged") == 26
    assert (
        value(
            points,
            "spotify_events.client.events.dead_lettered",
            **{"spotify_events.reason": "invalid_payload: bad track"},
        )
        == 1
    )
    assert value(points, "spotify_events.client.queue.events") == 0
    assert value(points, "spotify_events.client.queue.size") == 0
    assert value(points, "spotify_events.client.events.buffered") == 0
    assert value(points, "spotify_events.client.last_acknowledgement.age") >= 0
    assert "spotify_events.client.queue.oldest_event.age" not in points  # queue is empty
    assert "spotify_events.client.events.dropped" not in points  # nothing dropped


def test_events_held_for_a_missing_schema_are_exported_by_type(
    sink: Sink, make_client: Callable[..., EventClient]
) -> None:
    sink.reject = lambda payload: (
        "unknown_schema: not deployed" if b"new-track" in payload else None
    )
    reader = InMemoryMetricReader()
    client = make_client(endpoint=sink.endpoint)
    register_metrics(client, MeterProvider(metric_readers=[reader]))
    for i in range(3):
        client.log("EndSong", {**END_SONG, "track_id": f"new-track-{i}"})
    client.log("EndSong", {**END_SONG, "track_id": "t1"})
    assert wait_for(lambda: sum(client.stats().held.values()) == 3)

    points = read(reader)
    (etype,) = client.stats().held
    held = "spotify_events.client.queue.held"
    assert value(points, held, **{"spotify_events.event_type": etype}) == 3
    assert "spotify_events.client.events.dead_lettered" not in points  # held, not rejected


def test_drops_and_backlog_are_exported_while_nobody_answers(
    unstarted_sink: Sink, make_client: Callable[..., EventClient]
) -> None:
    reader = InMemoryMetricReader()
    client = make_client(endpoint=unstarted_sink.endpoint, max_queue_bytes=4000)
    register_metrics(client, MeterProvider(metric_readers=[reader]))
    for i in range(200):
        client.log("EndSong", {**END_SONG, "track_id": f"t{i}"})
    assert wait_for(lambda: client.stats().committed + sum(client.stats().dropped.values()) >= 200)
    assert wait_for(lambda: client.stats().retried > 0)

    points = read(reader)
    stats = client.stats()
    assert stats.dropped, "the small queue must have dropped events"
    for reason, n in stats.dropped.items():
        assert (
            value(
                points, "spotify_events.client.events.dropped", **{"spotify_events.reason": reason}
            )
            == n
        )
    assert value(points, "spotify_events.client.queue.events") == stats.queue_events > 0
    assert value(points, "spotify_events.client.queue.size") == stats.queue_bytes > 0
    assert value(points, "spotify_events.client.queue.oldest_event.age") >= 0
    assert value(points, "spotify_events.client.retries") >= 1
    assert value(points, "spotify_events.client.events.acknowledged") == 0
    assert "spotify_events.client.last_acknowledgement.age" not in points  # never acknowledged


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_clients_register_with_the_global_provider_set_later(tmp_path: Any) -> None:
    out = run_python(
        f"""
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from spotify_events import EventClient

        client = EventClient(endpoint="http://127.0.0.1:9/v1/batches",
                             queue_path={str(tmp_path / "q.db")!r}, schemas={str(SCHEMAS)!r})
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))  # after the client
        for _ in range(3):
            client.log("EndSong", {END_SONG!r})
        data = reader.get_metrics_data()
        [logged] = [m for r in data.resource_metrics for s in r.scope_metrics
                    for m in s.metrics if m.name == "spotify_events.client.events.logged"]
        print(logged.data.data_points[0].value)
        client.close(timeout=0.1)
        """
    )
    assert out == "3"


def test_core_install_logs_without_opentelemetry(tmp_path: Any) -> None:
    out = run_python(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from spotify_events import EventClient

        client = EventClient(endpoint="http://127.0.0.1:9/v1/batches",
                             queue_path={str(tmp_path / "q.db")!r}, schemas={str(SCHEMAS)!r})
        client.log("EndSong", {END_SONG!r})
        print(client.stats().logged, "opentelemetry" in sys.modules and sys.modules["opentelemetry"])
        client.close(timeout=0.1)
        """
    )
    assert out == "1 None"


def test_a_forked_child_can_create_clients_while_the_parent_held_the_metrics_lock(
    tmp_path: Any,
) -> None:
    out = run_python(
        f"""
        import os, signal, threading
        from spotify_events import EventClient, otel_metrics

        def client(name):
            return EventClient(endpoint="http://127.0.0.1:9/v1/batches",
                               queue_path={str(tmp_path)!r} + "/" + name, schemas={str(SCHEMAS)!r})

        client("parent.db")
        held, release = threading.Event(), threading.Event()

        def hold():
            with otel_metrics._observed_lock:  # as a metrics collection would, at fork time
                held.set()
                release.wait()

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)  # a hung child dies rather than outlive the test
            client("child.db").close(timeout=0.1)
            os._exit(0)
        release.set()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert out == "0"
