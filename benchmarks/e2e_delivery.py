"""End-to-end delivery benchmark: one process logging, a sink in another.

Prints a table and writes JSON. Two runs, both with the real EventClient and
its SQLite queue, delivering over loopback HTTP to ``benchmarks/compare/sink.py`` (the comparison's sink)
(or to the reference collector with ``--collector``):

* throughput: one caller logs N events as fast as it can; delivered events/s
  is N divided by the time until the collector acknowledged the last one, and
  the service process's CPU time (all its threads, ``getrusage``) over that
  span divided by the events delivered;
* latency: one caller paced at ``--rate`` events/s for ``--seconds``; the
  per-call cost of ``log()`` as p50/p99/p99.9 in microseconds.

``--shipping agent`` builds the client with ``shipping="agent"`` and runs
``spotify-events agent`` on its queue file in a process of its own (its CPU is
reported apart); ``--shipping both`` runs in-process then agent against the same
receiver, for a before/after from one run.

    python benchmarks/e2e_delivery.py [--events 300000] [--rate 50000] [--collector]
                                      [--shipping in-process|agent|both]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from spotify_events.collector.process import CollectorProcess, ServiceProcess

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
def sink_process(use_collector: bool, workdir: Path, parse: str = "full") -> Iterator[str]:
    """Run the reference collector or the comparison's sink (decoding every event, or
    with ``parse="ids"`` only what dedupe needs); yield its base URL."""
    if use_collector:
        with CollectorProcess(workdir / "data", SCHEMAS) as collector:
            yield collector.url
        return
    cmd = [sys.executable, "-m", "benchmarks.compare.sink", "--port", "0", "--parse", parse]
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


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of this process (all threads), or of another one from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def shipping_agent(shipping: str, queue_path: Path, endpoint: str) -> Iterator[int | None]:
    """With ``shipping="agent"``: an agent process shipping ``queue_path``, yielded as its
    pid once it holds the file's lease; None (nothing started) for in-process shipping."""
    if shipping != "agent":
        yield None
        return
    agent = ServiceProcess(
        ["agent", str(queue_path), "--endpoint", endpoint],
        ready_prefix="agent running",
        name="agent",
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not any(f"shipping {queue_path}" in line for line in agent.stderr_lines):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not take the lease: {agent.stderr_tail()}")
            time.sleep(0.05)
        assert agent.proc is not None
        yield agent.proc.pid
    finally:
        agent.stop(30)


def make_client(endpoint: str, queue_path: Path, shipping: str) -> EventClient:
    return EventClient(
        endpoint=endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS), shipping=shipping
    )


def throughput(endpoint: str, workdir: Path, events: int, shipping: str) -> dict[str, Any]:
    queue_path = workdir / f"tp-{shipping}.db"
    with (
        make_client(endpoint, queue_path, shipping) as client,
        shipping_agent(shipping, queue_path, endpoint) as agent_pid,
    ):
        record = dict(END_SONG)
        agent_cpu = 0.0 if agent_pid is None else cpu_seconds(agent_pid)
        cpu = cpu_seconds()
        started = time.perf_counter()
        for i in range(events):
            record["ms_played"] = i
            client.log("EndSong", record)
        logged = time.perf_counter() - started
        ok = client.flush(timeout=300)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
        agent_cpu = 0.0 if agent_pid is None else cpu_seconds(agent_pid) - agent_cpu
        stats = client.stats()
    delivered = max(1, stats.acknowledged)
    return {
        "shipping": shipping,
        "events": events,
        "log_rate": events / logged,
        "delivered_rate": stats.acknowledged / elapsed,
        "all_acknowledged": ok,
        "dropped": sum(stats.dropped.values()),
        "seconds": elapsed,
        "service_cpu_us_per_event": cpu / delivered * 1e6,
        "agent_cpu_us_per_event": agent_cpu / delivered * 1e6,
    }


def latency(
    endpoint: str, workdir: Path, rate: int, seconds: float, shipping: str
) -> dict[str, Any]:
    samples: list[float] = []
    queue_path = workdir / f"lat-{shipping}.db"
    with (
        make_client(endpoint, queue_path, shipping) as client,
        shipping_agent(shipping, queue_path, endpoint),
    ):
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
        "--shipping",
        choices=["in-process", "agent", "both"],
        default="in-process",
        help="ship from the logging process, from a spotify-events agent process, or both in turn",
    )
    parser.add_argument(
        "--sink-parse",
        choices=["full", "ids"],
        default="full",
        help="ids: the sink skips decoding payloads, so its time per batch weighs less",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_delivery.json"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds; each runs every mode in turn (so load changes hit all), medians shown",
    )
    args = parser.parse_args()
    modes = ["in-process", "agent"] if args.shipping == "both" else [args.shipping]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with sink_process(args.collector, workdir, args.sink_parse) as base:
            for round_ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(one_run(args, base, workdir / f"{round_}", mode))
    target = "collector" if args.collector else "sink"
    print(f"\nend-to-end delivery to the {target} (one process, one caller thread)")
    if args.repeat > 1:
        print(f"  medians of {args.repeat} rounds; every value in the JSON")
    for mode, results in runs.items():
        tp = medians([r["throughput"] for r in results])
        lat = medians([r["latency"] for r in results])
        acked = all(r["throughput"]["all_acknowledged"] for r in results)
        print(f"shipping={mode}")
        print(
            f"  delivered events/s : {tp['delivered_rate']:>10,.0f}  ({args.events:,} events, "
            f"all acknowledged: {acked}, dropped: {tp['dropped']:.0f})"
        )
        print(
            f"  log() calls/s      : {tp['log_rate']:>10,.0f}  (caller side, as fast as possible)"
        )
        print(
            f"  CPU us/delivered   : {tp['service_cpu_us_per_event']:>10.1f}  (service process"
            + (f"; agent process {tp['agent_cpu_us_per_event']:.1f})" if mode == "agent" else ")")
        )
        if "wire_bytes_per_event" in tp:
            print(f"  wire bytes/event   : {tp['wire_bytes_per_event']:>10.1f}")
        print(
            f"  log() at {args.rate:,}/s offered: p50 {lat['p50_us']:.1f} us, "
            f"p99 {lat['p99_us']:.1f} us, p99.9 {lat['p999_us']:.1f} us, dropped {lat['dropped']:.0f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    only = runs[modes[0]][0] if len(modes) == 1 and args.repeat == 1 else {}
    args.json.write_text(json.dumps({"target": target, **only, "runs": runs}, indent=2))
    print(f"  JSON: {args.json}")


def one_run(args: argparse.Namespace, base: str, workdir: Path, mode: str) -> dict[str, Any]:
    """Throughput then latency with one shipping mode; the sink's counts are per run."""
    workdir.mkdir(exist_ok=True)
    endpoint = f"{base}/v1/batches"
    before = None if args.collector else requests.get(f"{base}/stats", timeout=5).json()
    tp = throughput(endpoint, workdir, args.events, mode)
    if before is not None:
        sink = requests.get(f"{base}/stats", timeout=5).json()
        sent = sink["events"] - before["events"]
        tp["wire_bytes_per_event"] = (sink["bytes"] - before["bytes"]) / max(1, sent)
        tp["sink_duplicates"] = sink["duplicates"] - before["duplicates"]
    lat = latency(endpoint, workdir, args.rate, args.seconds, mode)
    return {"throughput": tp, "latency": lat}


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median across rounds of a number; other values from the first round."""
    summary: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        summary[key] = statistics.median(values) if numeric else first
    return summary


if __name__ == "__main__":
    main()
