"""The rate curve: what each SDK costs at the rates services really log, and how late
its events arrive.

For each contestant and each rate (default 10, 100, 1,000 and 10,000 events/s),
one child process:

1. runs the pacing loop alone (same rate, same duration, same record copies, a
   no-op instead of the SDK call) and notes its CPU: the loop's own cost;
2. builds the SDK pointed at a fresh loopback sink (benchmarks/compare/sink.py),
   warms it up (100 events, delivered);
3. runs the same loop calling the SDK, numbering each event through its
   ``ms_played`` field and noting when ``log()`` was called;
4. waits, without flushing, until the orchestrator has seen every event at the sink
   (it polls the sink's count; the child blocks on a pipe meanwhile), then reads its
   CPU again.

CPU per event = (process CPU from the first measured call to the last
acknowledgement - the loop alone) / events. Latency = the sink's arrival time of
each event's request - the time ``log()`` was called for it (one clock: same host).
Then, for spotify-events alone, idle CPU: a client that has delivered its first
event and then logs nothing, over ``--idle-seconds``.

    python benchmarks/rates.py                                  # ~6 min with the defaults
    python benchmarks/rates.py --seconds 3 --idle-seconds 10    # a quick look
    python benchmarks/rates.py --contestants spotify-events --rates 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.compare like -m does
    sys.path.insert(0, str(ROOT))

from benchmarks.compare.contestants import CONTESTANTS, Adapter  # noqa: E402
from benchmarks.compare.workload import make_pool  # noqa: E402

DEFAULT_CONTESTANTS = "spotify-events,segment,opentelemetry"
DEFAULT_RATES = "10,100,1000,10000"
WARMUP_EVENTS = 100
#: The loop sleeps only when it is this far ahead of its schedule: at 10,000 events/s a
#: sleep per event would cost more than most SDK calls (and oversleep anyway).
SLEEP_AHEAD = 0.0005
#: Seconds without a new event at the sink after which a run's missing events count as lost.
SETTLE = 3.0
FIGURES = (
    "cpu_us_per_event",
    "helper_cpu_us_per_event",
    "loop_cpu_us_per_event",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "lost",
)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write("@@" + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


POOL = make_pool()


def paced_loop(call: Any, rate: float, count: int, first_mark: int) -> list[float]:
    """Call ``call(record)`` ``count`` times at ``rate``; the wall-clock time of each call."""
    pool = POOL
    times = [0.0] * count
    clock, wall = time.monotonic, time.time
    start = clock()
    for i in range(count):
        ahead = start + i / rate - clock()
        if ahead > SLEEP_AHEAD:
            time.sleep(ahead)
        record = dict(pool[i % len(pool)])
        record["ms_played"] = first_mark + i
        times[i] = wall()
        call(record)
    return times


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# -- child: one contestant at one rate ---------------------------------------------------------
def child(spec: dict[str, Any]) -> None:
    rate, count = float(spec["rate"]), int(spec["count"])
    loop_cpu = 0.0
    if not spec.get("idle_seconds"):
        before = cpu_seconds()
        paced_loop(lambda record: None, rate, count, 0)
        loop_cpu = cpu_seconds() - before

    adapter: Adapter = CONTESTANTS[spec["contestant"]]()
    adapter.start(spec["base_url"], Path(spec["workdir"]))
    paced_loop(adapter.call, 10_000, WARMUP_EVENTS, -WARMUP_EVENTS - 1)
    adapter.flush(30)
    deadline = time.monotonic() + 60
    while _get(spec["base_url"] + "/stats")["events"] < WARMUP_EVENTS:
        if time.monotonic() > deadline:
            raise SystemExit("warm-up events never arrived")
        time.sleep(0.05)

    if spec.get("idle_seconds"):
        before = cpu_seconds()
        time.sleep(spec["idle_seconds"])
        emit("result", idle_cpu=cpu_seconds() - before)
        os._exit(0)

    before, helper_before = cpu_seconds(), adapter.helper_cpu()
    times = paced_loop(adapter.call, rate, count, 0)
    emit("logged")
    sys.stdin.readline()  # the orchestrator saw the last event acknowledged
    sdk_cpu = cpu_seconds() - before
    helper_cpu = adapter.helper_cpu() - helper_before
    emit(
        "result",
        loop_cpu=loop_cpu,
        sdk_cpu=sdk_cpu,
        helper_cpu=helper_cpu,
        times=times,
        stats=adapter.stats(),
    )
    adapter.stop_helpers()
    os._exit(0)  # no SDK's atexit hook adds time or hangs


# -- orchestrator ------------------------------------------------------------------------------
def start_sink() -> tuple[subprocess.Popen[str], str]:
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.compare.sink", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    line = sink.stdout.readline()
    if not line.startswith("listening on "):
        raise RuntimeError(f"the sink did not start: {line!r}")
    return sink, line.split()[-1]


def wait_for_delivery(base_url: str, expected: int) -> None:
    """Until the sink holds ``expected`` events, or its count has not moved for
    ``SETTLE`` seconds (an SDK that dropped events will never get there)."""
    seen, moved = -1, time.monotonic()
    while True:
        now = _get(base_url + "/stats")["events"]
        if now >= expected:
            return
        if now != seen:
            seen, moved = now, time.monotonic()
        elif time.monotonic() - moved > SETTLE:
            return
        time.sleep(0.01)


def run_one(
    contestant: str, rate: float, seconds: float, idle_seconds: float = 0.0
) -> dict[str, Any]:
    count = max(20, int(rate * seconds))
    sink, base_url = start_sink()
    workdir = tempfile.mkdtemp(prefix="rates-")
    spec = {
        "contestant": contestant,
        "rate": rate,
        "count": count,
        "base_url": base_url,
        "workdir": workdir,
        "idle_seconds": idle_seconds,
    }
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        result: dict[str, Any] = {}
        for line in proc.stdout:
            if not line.startswith("@@"):
                continue
            message = json.loads(line[2:])
            if message["event"] == "logged":
                wait_for_delivery(base_url, WARMUP_EVENTS + count)
                proc.stdin.write("delivered\n")
                proc.stdin.flush()
            elif message["event"] == "result":
                result = message
        proc.wait(60)
        if idle_seconds:
            return {"idle_cpu_percent": 100 * result["idle_cpu"] / idle_seconds}
        arrivals = dict(_get(base_url + "/marks"))
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.terminate()
        sink.wait(10)
    times = result["times"]
    latencies = sorted(arrivals[i] - times[i] for i in range(count) if i in arrivals)
    return {
        "contestant": contestant,
        "rate": rate,
        "events": count,
        "lost": count - len(latencies),
        "loop_cpu_us_per_event": 1e6 * result["loop_cpu"] / count,
        "cpu_us_per_event": 1e6 * (result["sdk_cpu"] - result["loop_cpu"]) / count,
        "helper_cpu_us_per_event": 1e6 * result["helper_cpu"] / count,
        "latency_p50_ms": 1e3 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "latency_max_ms": 1e3 * latencies[-1],
        "stats": result.get("stats", {}),
    }


def versions(names: list[str]) -> str:
    return ", ".join(f"{n} {CONTESTANTS[n].version()}" for n in names)


def print_tables(rows: list[dict[str, Any]], idle: list[float], args: argparse.Namespace) -> None:
    contestants = list(dict.fromkeys(r["contestant"] for r in rows))
    rates = sorted({r["rate"] for r in rows})
    median: dict[tuple[str, float], dict[str, float]] = {}
    for c in contestants:
        for rate in rates:
            mine = [r for r in rows if r["contestant"] == c and r["rate"] == rate]
            if mine:
                median[(c, rate)] = {k: statistics.median(r[k] for r in mine) for k in FIGURES}
    print(
        f"\nCPU per event beyond the pacing loop (µs of process CPU, first call to last "
        f"acknowledgement, per event logged; median of {args.repeat}); in brackets: ratio to "
        "spotify-events; lost: never arrived (dropped by the SDK)"
    )
    print("| rate (events/s) | " + " | ".join(contestants) + " | loop alone |")
    print("|---" * (len(contestants) + 2) + "|")
    for rate in rates:
        ours = median.get(("spotify-events", rate), {}).get("cpu_us_per_event")
        cells = []
        for c in contestants:
            m = median.get((c, rate))
            if m is None:
                cells.append("-")
                continue
            ratio = (
                f" ({m['cpu_us_per_event'] / ours:.1f}x)" if ours and c != "spotify-events" else ""
            )
            lost = f", {m['lost']:,.0f} lost" if m["lost"] else ""
            cells.append(f"{m['cpu_us_per_event']:.1f}{ratio}{lost}")
        loop = statistics.median(
            median[(c, rate)]["loop_cpu_us_per_event"] for c in contestants if (c, rate) in median
        )
        print(f"| {rate:,.0f} | " + " | ".join(cells) + f" | {loop:.1f} |")
    helpers = [
        c
        for c in contestants
        if any(m["helper_cpu_us_per_event"] for (n, _), m in median.items() if n == c)
    ]
    for c in helpers:
        print(
            f"{c}: CPU of the processes beside the caller's (not in the table), µs per event: "
            + ", ".join(
                f"{m['helper_cpu_us_per_event']:.1f} at {rate:,.0f}/s"
                for rate in rates
                if (m := median.get((c, rate)))
            )
        )
    print("\nDelivery latency, log() to the sink's acknowledgement: p50 / p99 / max (ms)")
    print("| rate (events/s) | " + " | ".join(contestants) + " |")
    print("|---" * (len(contestants) + 1) + "|")
    for rate in rates:
        cells = [
            "{latency_p50_ms:.0f} / {latency_p99_ms:.0f} / {latency_max_ms:.0f}".format(
                **median[(c, rate)]
            )
            if (c, rate) in median
            else "-"
            for c in contestants
        ]
        print(f"| {rate:,.0f} | " + " | ".join(cells) + " |")
    if idle:
        print(
            f"\nspotify-events idle (no events for {args.idle_seconds:g} s after the first was "
            f"delivered): {statistics.median(idle):.3f}% of a core "
            f"(runs: {', '.join(f'{x:.3f}' for x in idle)})"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--contestants", default=DEFAULT_CONTESTANTS)
    p.add_argument("--rates", default=DEFAULT_RATES, help="events/s, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="paced seconds per run")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="0 skips the idle run")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    names = [c.strip() for c in args.contestants.split(",") if c.strip()]
    for name in names:
        if name not in CONTESTANTS or not CONTESTANTS[name].installed():
            p.error(f"{name}: unknown or not installed (pip install -e '.[bench]')")
    rates = [float(r) for r in args.rates.split(",")]
    load = os.getloadavg()
    print(
        f"rate curve {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{versions(names)}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for rate in rates:
            for name in names:  # interleaved, so a change in background load hits all alike
                row = run_one(name, rate, args.seconds)
                rows.append(row)
                print(
                    f"  {name:16} {rate:>8,.0f}/s: {row['cpu_us_per_event']:8.1f} µs/event "
                    f"(loop {row['loop_cpu_us_per_event']:.1f}), latency p50 "
                    f"{row['latency_p50_ms']:.0f} p99 {row['latency_p99_ms']:.0f} ms, "
                    f"lost {row['lost']}",
                    flush=True,
                )
    idle = []
    if args.idle_seconds > 0:
        for _ in range(args.repeat):
            idle.append(run_one("spotify-events", 1, 0, args.idle_seconds)["idle_cpu_percent"])
    print_tables(rows, idle, args)
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / f"rates-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "idle_percent": idle, "args": vars(args)}, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
