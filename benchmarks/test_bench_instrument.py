"""What instrumentation costs the caller: ``@track`` over an undecorated call, and
``log(instance)`` of a generated class over ``log(name, dict)``.

Not part of the normal test run (``testpaths = ["tests"]``). Run with::

    .venv/bin/pytest benchmarks/test_bench_instrument.py -s \\
        --benchmark-columns=min,median,mean,ops --benchmark-sort=name

``-s`` shows the per-call p50/p99 lines (single calls timed with ``perf_counter_ns``,
interleaved so both sides see the same machine load); the target is a
``@track`` overhead of at most 10 µs p50. The client is real (buffered durability,
writer and shipper threads running) with a MockTransport that acknowledges without
decoding, so the background threads take as little of the second core as possible.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spotify_events import EventClient
from spotify_events.codegen import generate_python
from spotify_events.transport import MockTransport, SendResult

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
END_SONG = {
    "user_id": "u1234567",
    "track_id": "spotify:track:4uLU6hMCjMI75M1A2tKUQC",
    "ms_played": 31_000,
    "reason_start": "CLICKROW",
    "reason_end": "TRACKDONE",
    "platform": "ios",
    "shuffle": False,
    "offline": False,
}
SAMPLES = 50_000


def _ack(body: bytes, headers: Any) -> SendResult:
    events = int(headers["X-SE-Event-Count"])  # an acknowledgement counts the whole batch
    return SendResult(200, {"accepted": events, "duplicates": 0, "rejected": []})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EventClient]:
    c = EventClient(
        transport=MockTransport(_ack),
        queue_path=str(tmp_path / "bench.db"),
        schemas=str(SCHEMA_DIR),
        durability="buffered",
        max_buffer_bytes=256 << 20,
        max_queue_bytes=1 << 30,
    )
    yield c
    c.close(timeout=5.0)


@pytest.fixture(scope="module")
def events_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The generated classes (``spotify-events codegen schemas -o events.py``), imported."""
    out = tmp_path_factory.mktemp("codegen") / "bench_events.py"
    out.write_text(generate_python(SCHEMA_DIR, out), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("bench_events", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_events"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def handler(user_id: str, status_code: int = 200) -> int:
    """The undecorated function: as cheap as a function gets, so overhead is all ours."""
    return status_code


def _p50_p99(
    calls: dict[str, Callable[[], object]], n: int = SAMPLES
) -> dict[str, tuple[float, float]]:
    """Per-call p50/p99 in µs of each callable, sampled in interleaved blocks of 1000."""
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(n // 1000):
        for name, call in calls.items():
            out = samples[name]
            for _ in range(1000):
                t0 = clock()
                call()
                out.append(clock() - t0)
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = (values[len(values) // 2] / 1000, values[len(values) * 99 // 100] / 1000)
    return result


def _report(title: str, base: str, stats: dict[str, tuple[float, float]]) -> dict[str, float]:
    print(f"\n  {title} (p50 / p99 per call, µs, {SAMPLES:,} calls each)")
    extra: dict[str, float] = {}
    for name, (p50, p99) in stats.items():
        over = "" if name == base else f"   overhead p50 {p50 - stats[base][0]:+.2f}"
        print(f"    {name:<28} {p50:7.2f} / {p99:7.2f}{over}")
        extra[f"{name}_p50_us"] = round(p50, 2)
        extra[f"{name}_p99_us"] = round(p99, 2)
    return extra


# -- @track -----------------------------------------------------------------------------------
def test_undecorated(benchmark: Any) -> None:
    assert benchmark(handler, "u1", 200) == 200


def test_track(benchmark: Any, client: EventClient) -> None:
    tracked = client.track("ServiceCall", service="bench")(handler)
    assert benchmark(tracked, "u1", 200) == 200
    assert client.instrumentation_errors == 0


def test_track_with_fields_callable(benchmark: Any, client: EventClient) -> None:
    computed = client.track("ServiceCall", fields=lambda args, result: {"status_code": result})(
        handler
    )
    assert benchmark(computed, "u1", 200) == 200
    assert client.instrumentation_errors == 0


def test_timed_block(benchmark: Any, client: EventClient) -> None:
    def block() -> None:
        with client.timed("ServiceCall", operation="/x") as ev:
            ev["status_code"] = 200

    benchmark(block)
    assert client.instrumentation_errors == 0


def test_track_overhead_p50(benchmark: Any, client: EventClient) -> None:
    """The target's number: p50 of a @track call minus p50 of the undecorated call."""
    tracked = client.track("ServiceCall", service="bench")(handler)
    computed = client.track("ServiceCall", fields=lambda a, r: {"status_code": r})(handler)
    record = {
        "service": "bench",
        "operation": "op",
        "duration_ms": 0.01,
        "outcome": "OK",
        "user_id": "u1",
        "status_code": 200,
    }

    stats = _p50_p99(
        {
            "undecorated": lambda: handler("u1", 200),
            "@track": lambda: tracked("u1", 200),
            "@track(fields=...)": lambda: computed("u1", 200),
            "log(ServiceCall dict) only": lambda: client.log("ServiceCall", record),
        }
    )
    benchmark.extra_info.update(_report("@track overhead", "undecorated", stats))
    overhead = stats["@track"][0] - stats["undecorated"][0]
    benchmark.extra_info["track_overhead_p50_us"] = round(overhead, 2)
    benchmark(tracked, "u1", 200)
    assert client.instrumentation_errors == 0


# -- log(instance) vs log(name, dict) ----------------------------------------------------------
def _end_song(events: ModuleType) -> Any:
    """The END_SONG record as a generated ``EndSong`` (enums as the generated enum types)."""
    return events.EndSong(
        **{
            **END_SONG,
            "reason_start": events.ReasonStart(END_SONG["reason_start"]),
            "reason_end": events.ReasonEnd(END_SONG["reason_end"]),
        }
    )


def test_log_dict(benchmark: Any, client: EventClient) -> None:
    benchmark(client.log, "EndSong", END_SONG)


def test_log_instance(benchmark: Any, client: EventClient, events_module: ModuleType) -> None:
    event = _end_song(events_module)
    benchmark(client.log, event)


def test_log_instance_constructed_per_call(
    benchmark: Any, client: EventClient, events_module: ModuleType
) -> None:
    benchmark(lambda: client.log(_end_song(events_module)))


def test_log_instance_vs_dict_p50(
    benchmark: Any, client: EventClient, events_module: ModuleType
) -> None:
    event = _end_song(events_module)
    stats = _p50_p99(
        {
            "log(name, dict)": lambda: client.log("EndSong", END_SONG),
            "log(instance)": lambda: client.log(event),
            "log(EndSong(...)) new each": lambda: client.log(_end_song(events_module)),
        }
    )
    title = "log(instance) vs log(name, dict)"
    benchmark.extra_info.update(_report(title, "log(name, dict)", stats))
    benchmark(client.log, event)
