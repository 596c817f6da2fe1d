"""End-to-end delivery benchmark: one process logging, a sink in another.

Prints a table and writes JSON. Two runs, both with the real EventClient and
its SQLite queue, delivering over loopback HTTP to ``benchmarks/compare/sink.py`` (the comparison's sink)
(or to the reference collector with ``--collector``):

* throughput: one caller logs N events as fast as it can; delivered events/s
  is N divided by the time until the collector acknowledged the last one;
* latency: one caller paced at ``--rate`` events/s for ``--seconds``; the
  per-call cost of ``log()`` as p50/p99/p99.9 in microseconds.

    python benchmarks/e2e_delivery.py [--events 300000] [--rate 50000] [--collector]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
END_SONG = {
    "user_id": "user-1234",
    "track_id": "track-998877",
    "ms_played": 31000,
    "reason_start": "CLICKROW",
    "reason_end": "TRACKDONE",
    "platform": "ios",
    "shuffle": False,
    "offline": False,
}


@contextmanager
def sink_process(use_collector: bool, workdir: Path) -> Iterator[str]:
    """Run the reference collector or the comparison's sink; yield its base URL."""
    if use_collector:
        with CollectorProcess(workdir / "data", SCHEMAS) as collector:
            yield collector.url
        return
    cmd = [sys.executable, "-m", "benchmarks.compare.sink", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and not line.startswith("listening on "):
            line = proc.stdout.readline()
        yield line.split("listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def throughput(endpoint: str, workdir: Path, events: int) -> dict[str, Any]:
    with EventClient(
        endpoint=endpoint, queue_path=str(workdir / "tp.db"), schemas=str(SCHEMAS)
    ) as client:
        record = dict(END_SONG)
        started = time.perf_counter()
        for i in range(events):
            record["ms_played"] = i
            client.log("EndSong", record)
        logged = time.perf_counter() - started
        ok = client.flush(timeout=300)
        elapsed = time.perf_counter() - started
        stats = client.stats()
    return {
        "events": events,
        "log_rate": events / logged,
        "delivered_rate": stats.acknowledged / elapsed,
        "all_acknowledged": ok,
        "dropped": sum(stats.dropped.values()),
        "seconds": elapsed,
    }


def latency(endpoint: str, workdir: Path, rate: int, seconds: float) -> dict[str, Any]:
    samples: list[float] = []
    with EventClient(
        endpoint=endpoint, queue_path=str(workdir / "lat.db"), schemas=str(SCHEMAS)
    ) as client:
        client.log("EndSong", END_SONG)  # warm: threads, encoder cache
        record = dict(END_SONG)
        interval = 1.0 / rate
        start = time.perf_counter()
        total = int(rate * seconds)
        clock = time.perf_counter_ns
        for i in range(total):
            due = start + i * interval
            while time.perf_counter() < due:
                pass
            record["ms_played"] = i
            t0 = clock()
            client.log("EndSong", record)
            samples.append((clock() - t0) / 1000)
        client.flush(timeout=120)
        dropped = sum(client.stats().dropped.values())
    samples.sort()
    return {
        "offered_rate": rate,
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "mean_us": statistics.fmean(samples),
        "dropped": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--collector", action="store_true", help="deliver to the reference collector"
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_delivery.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with sink_process(args.collector, workdir) as base:
            endpoint = f"{base}/v1/batches"
            tp = throughput(endpoint, workdir, args.events)
            lat = latency(endpoint, workdir, args.rate, args.seconds)
            if not args.collector:
                sink = requests.get(f"{base}/stats", timeout=5).json()
                tp["wire_bytes_per_event"] = sink["bytes"] / max(1, sink["events"])
                tp["sink_duplicates"] = sink["duplicates"]
    target = "collector" if args.collector else "sink"
    print(f"\nend-to-end delivery to the {target} (one process, one caller thread)")
    print(
        f"  delivered events/s : {tp['delivered_rate']:>10,.0f}  ({tp['events']:,} events, "
        f"all acknowledged: {tp['all_acknowledged']}, dropped: {tp['dropped']})"
    )
    print(f"  log() calls/s      : {tp['log_rate']:>10,.0f}  (caller side, as fast as possible)")
    if "wire_bytes_per_event" in tp:
        print(f"  wire bytes/event   : {tp['wire_bytes_per_event']:>10.1f}")
    print(
        f"  log() at {lat['offered_rate']:,}/s offered: p50 {lat['p50_us']:.1f} us, p99 {lat['p99_us']:.1f} us, "
        f"p99.9 {lat['p999_us']:.1f} us, dropped {lat['dropped']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"target": target, "throughput": tp, "latency": lat}, indent=2))
    print(f"  JSON: {args.json}")


if __name__ == "__main__":
    main()
