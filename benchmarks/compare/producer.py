"""One measured run of one contestant, in a process of its own.

The orchestrator starts this with a JSON spec as its only argument and reads
protocol lines from stdout, each ``@@`` followed by JSON:

* ``{"event": "started"}`` once the client is built and warmed up;
* ``{"event": "logged"}`` when the callers have stopped (the orchestrator starts
  the sink at that moment in the outage scenario);
* ``{"event": "result", ...}`` with what this process measured, then it exits
  through ``os._exit`` so no SDK's atexit hook can hang or add time.

Scenarios: ``latency`` (callers paced at ``rate`` events/s in total for
``seconds``; every call timed), ``throughput`` (callers log as fast as they can
for ``seconds``), ``outage`` (paced like latency while the sink is down). After
the callers stop, the SDK's flush runs in a daemon thread while this process
polls the sink's count until everything logged has arrived, or the flush has
returned and the count has not moved for ``settle`` seconds, or the deadline.

CPU is this process's user+system time (all threads) from the first measured
call to the end of that wait; peak RSS is ``ru_maxrss`` at the end.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .contestants import CONTESTANTS, Adapter
from .workload import make_pool

WARMUP_EVENTS = 100


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write("@@" + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_counter(base_url: str, kind: str) -> Any:
    """A function returning how many distinct events the receiver has, or None if it is down."""
    collector = kind == "collector"
    url = f"{base_url}/v1/report" if collector else f"{base_url}/stats"
    accepted = re.compile(
        r'^spotify_events_collector_events_total\{[^}]*outcome="accepted"[^}]*\}\s+([0-9.e+]+)$',
        re.M,
    )

    def count() -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.loads(resp.read())
            return int(doc["totals"]["received"] if collector else doc["events"])
        except Exception:
            pass
        if not collector:
            return None
        try:  # a collector without the report: its metrics
            with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
                found = accepted.findall(resp.read().decode())
            return int(sum(float(x) for x in found)) if found else None
        except Exception:
            return None

    return count


def percentile(sorted_values: list[int], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1000.0


def run_callers(
    adapter: Adapter, spec: dict[str, Any], pool: list[dict[str, Any]]
) -> dict[str, Any]:
    threads = int(spec["threads"])
    seconds = float(spec["seconds"])
    paced = spec["scenario"] in ("latency", "outage")
    rate = float(spec["rate"])
    call = adapter.call
    size = len(pool)
    samples: list[list[int]] = [[] for _ in range(threads)]
    calls = [0] * threads
    late = [0] * threads
    errors = [0] * threads
    barrier = threading.Barrier(threads + 1)
    start_box: list[float] = []

    def paced_caller(k: int) -> None:
        interval = threads / rate
        total = int(rate * seconds / threads)
        mine = samples[k]
        clock, perf, sleep = time.perf_counter_ns, time.perf_counter, time.sleep
        barrier.wait()
        t0 = start_box[0] + k * interval / threads
        j = k
        for i in range(total):
            delay = t0 + i * interval - perf()
            if delay > 0:
                sleep(delay)
            elif delay < -0.001:
                late[k] += 1
            record = dict(pool[j % size])
            j += threads
            begin = clock()
            try:
                call(record)
            except Exception:
                errors[k] += 1
            mine.append(clock() - begin)
        calls[k] = total

    def fast_caller(k: int) -> None:
        perf = time.perf_counter
        barrier.wait()
        end = start_box[0] + seconds
        j, n = k * 997, 0
        while perf() < end:
            for _ in range(64):
                record = dict(pool[j % size])
                j += 1
                try:
                    call(record)
                except Exception:
                    errors[k] += 1
            n += 64
        calls[k] = n

    target = paced_caller if paced else fast_caller
    workers = [
        threading.Thread(target=target, args=(k,), name=f"caller-{k}") for k in range(threads)
    ]
    for w in workers:
        w.start()
    start_box.append(time.perf_counter() + 0.01)
    barrier.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start_box[0]
    out: dict[str, Any] = {
        "calls": sum(calls),
        "calls_per_s": sum(calls) / elapsed,
        "logging_seconds": elapsed,
        "late_calls": sum(late),
        "call_errors": sum(errors),
    }
    if paced:
        merged = sorted(s for per in samples for s in per)
        if merged:
            out["latency_us"] = {
                "n": len(merged),
                "p50": percentile(merged, 0.50),
                "p99": percentile(merged, 0.99),
                "p999": percentile(merged, 0.999),
                "max": merged[-1] / 1000.0,
                "mean": sum(merged) / len(merged) / 1000.0,
            }
    return out


def wait_delivered(
    adapter: Adapter, count: Any, logged: int, deadline: float, settle: float
) -> dict[str, Any]:
    flusher = threading.Thread(
        target=_flush_quietly,
        args=(adapter, max(0.1, deadline - time.monotonic())),
        name="bench-flush",
        daemon=True,
    )
    flusher.start()
    last, last_change = None, time.monotonic()
    seen: int | None = None
    while True:
        now = time.monotonic()
        seen = count()
        if seen is not None and seen >= logged:
            completed_by = "all"  # everything logged has arrived
            break
        if seen != last:
            last, last_change = seen, now
        elif seen is not None and not flusher.is_alive() and now - last_change >= settle:
            completed_by = "settled"  # the SDK says it is done and nothing more arrives
            break
        if now >= deadline:
            completed_by = "deadline"  # still trying (or stuck) when time ran out
            break
        time.sleep(0.05)
    return {
        "delivered_seen": seen,
        "all_delivered": seen is not None and seen >= logged,
        "flush_returned": not flusher.is_alive(),
        "completed_by": completed_by,
    }


def _flush_quietly(adapter: Adapter, timeout: float) -> None:
    try:
        adapter.flush(timeout)
    except Exception as exc:  # the measurement goes on; say what happened
        print(f"flush raised {exc!r}", file=sys.stderr)


def main() -> None:
    spec = json.loads(sys.argv[1])
    adapter = CONTESTANTS[spec["contestant"]]()
    pool = make_pool()
    workdir = Path(spec["workdir"])
    adapter.start(spec["base_url"], workdir)
    count = make_counter(spec["base_url"], adapter.target)
    for i in range(WARMUP_EVENTS):
        adapter.call(dict(pool[-1 - i]))
    time.sleep(0.1)
    emit("started", t=time.time())

    cpu0, wall0 = cpu_seconds(), time.time()
    callers = run_callers(adapter, spec, pool)
    logged = callers["calls"] + WARMUP_EVENTS
    wall_logged = time.time()
    emit("logged", t=wall_logged, logged=logged)

    deadline = time.monotonic() + float(spec["drain_timeout"])
    delivery = wait_delivered(adapter, count, logged, deadline, float(spec.get("settle", 1.0)))
    wall_done = time.time()
    cpu = cpu_seconds() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        sdk_stats = adapter.stats()
    except Exception as exc:
        sdk_stats = {"error": repr(exc)}
    emit(
        "result",
        contestant=adapter.name,
        version=adapter.version(),
        scenario=spec["scenario"],
        threads=spec["threads"],
        logged=logged,
        started_at=wall0,
        logged_at=wall_logged,
        done_at=wall_done,
        cpu_seconds=cpu,
        maxrss_mb=usage.ru_maxrss / 1024.0,
        sdk_stats=sdk_stats,
        **callers,
        **delivery,
    )
    adapter.stop_helpers()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
