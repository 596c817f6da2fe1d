"""Run the end-to-end SDK comparison: print the tables, write the JSON.

    python -m benchmarks.compare                      # everything, defaults (~4-5 min on 2 cores)
    python -m benchmarks.compare --repeat 1 --contestants spotify-events,segment
    python benchmarks/compare/run.py --throughput-seconds 10   # the full 10 s target

Every measured run gets a fresh receiver process (the loopback sink, or the
reference collector for the ``spotify-events/collector`` row) and a fresh
producer process for the contestant, so CPU and peak RSS are that SDK's alone.
Runs are interleaved (each repeat goes through every contestant) so that a
change in background load hits all contestants alike, and each figure is the
median over ``--repeat`` runs; a figure whose spread (max-min)/median exceeds
``--noise`` is flagged with ``~``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: python benchmarks/compare/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.compare.run import main as _main

    _main()
    sys.exit(0)

from .contestants import BASELINE, CONTESTANTS
from .report import format_report
from .workload import ROOT, SCHEMAS

RESULTS_DIR = ROOT / "benchmarks" / "results"
SCENARIOS = ("throughput", "latency", "outage")


class ReceiverUnavailable(RuntimeError):
    """The receiver process would not start; the row is skipped with this note."""


# -- receivers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def receiver(kind: str, port: int, workdir: Path, parse: str = "full") -> Iterator[str]:
    """Start the sink or the collector on ``port`` (0 = any) and yield its base URL."""
    if kind == "collector":
        cmd = [
            sys.executable,
            "-m",
            "spotify_events.cli",
            "collector",
            "--port",
            str(port),
            "--data-dir",
            str(workdir / "collector-data"),
            "--schemas",
            str(SCHEMAS),
        ]
        (workdir / "collector-data").mkdir(exist_ok=True)
    else:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.compare.sink",
            "--port",
            str(port),
            "--parse",
            parse,
        ]
    errlog = open(workdir / f"{kind}.stderr", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, text=True, cwd=ROOT)
    try:
        url = _read_listening(proc, timeout=30)
        if url is None:
            proc.kill()
            proc.wait()
            errlog.seek(0)
            tail = errlog.read().decode(errors="replace").strip().splitlines()[-3:]
            raise ReceiverUnavailable(f"{kind} did not start ({' | '.join(tail) or 'no output'})")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errlog.close()


def _read_listening(proc: subprocess.Popen[str], timeout: float) -> str | None:
    box: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("listening on "):
                box.append(line.split("listening on ", 1)[1].strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def receiver_stats(kind: str, base_url: str) -> dict[str, Any]:
    if kind != "collector":
        with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as resp:
            return dict(json.loads(resp.read()))
    # The collector: counts from its loss report (GET /v1/report), wire bytes from
    # its Prometheus metrics; either may be missing while the collector is being built.
    out: dict[str, Any] = {"events": 0, "duplicates": None, "last_event_at": None, "bytes": None}
    metrics = ""
    with (
        contextlib.suppress(Exception),
        urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp,
    ):
        metrics = resp.read().decode()
    m = re.search(r"^spotify_events_collector_request_bytes_total\s+([0-9.e+]+)$", metrics, re.M)
    out["bytes"] = float(m.group(1)) if m else None
    try:
        with urllib.request.urlopen(f"{base_url}/v1/report", timeout=30) as resp:
            report = json.loads(resp.read())
    except Exception as exc:
        accepted = re.findall(
            r'^spotify_events_collector_events_total\{[^}]*outcome="accepted"[^}]*\}\s+([0-9.e+]+)$',
            metrics,
            re.M,
        )
        if not accepted:
            raise RuntimeError(
                f"collector has neither /v1/report nor event metrics: {exc!r}"
            ) from exc
        out["events"] = int(sum(float(x) for x in accepted))
        out["source"] = "metrics"
        return out
    streams = report.get("streams", [])
    totals = report.get("totals") or {
        "received": sum(s.get("received", 0) for s in streams),
        "duplicates": sum(s.get("duplicates", 0) for s in streams),
    }
    out.update(
        events=totals.get("received", 0),
        duplicates=totals.get("duplicates", 0),
        lost_reported=totals.get("lost"),
        dropped_reported=totals.get("dropped"),
        last_event_at=max((s["last_seen"] for s in streams if s.get("last_seen")), default=None),
        source="report",
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- one measured run ---------------------------------------------------------------------------
def run_one(name: str, scenario: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    cls = CONTESTANTS[name]
    kind = cls.target
    seconds = {
        "latency": args.latency_seconds,
        "throughput": args.throughput_seconds,
        "outage": args.outage_seconds,
    }[scenario]
    drain = args.outage_drain_timeout if scenario == "outage" else args.drain_timeout
    rate = args.outage_rate if scenario == "outage" else args.rate
    workdir = Path(tempfile.mkdtemp(prefix=f"compare-{scenario}-"))
    try:
        if scenario == "outage":
            port = free_port()  # the producer is pointed at it before anything listens there
            return _drive(cls, kind, scenario, threads, seconds, drain, rate, args, workdir, port)
        return _drive(cls, kind, scenario, threads, seconds, drain, rate, args, workdir, 0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _drive(
    cls: Any,
    kind: str,
    scenario: str,
    threads: int,
    seconds: float,
    drain: float,
    rate: float,
    args: argparse.Namespace,
    workdir: Path,
    port: int,
) -> dict[str, Any]:
    late_start = scenario == "outage"
    stack = contextlib.ExitStack()
    with stack:
        if late_start:
            base_url = f"http://127.0.0.1:{port}"
        else:
            base_url = stack.enter_context(receiver(kind, 0, workdir, args.sink_parse))
        spec = {
            "contestant": cls.name,
            "scenario": scenario,
            "threads": threads,
            "seconds": seconds,
            "rate": rate,
            "drain_timeout": drain,
            "settle": args.settle,
            "base_url": base_url,
            "workdir": str(workdir),
        }
        env = dict(
            os.environ,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONWARNINGS="ignore::DeprecationWarning",
        )
        errlog = stack.enter_context((workdir / "producer.stderr").open("w+b"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.compare.producer", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=errlog,
            text=True,
            cwd=ROOT,
            env=env,
        )
        stack.callback(_reap, proc)
        result: dict[str, Any] = {}
        up_at = None
        hard_deadline = time.monotonic() + seconds + drain + 60
        assert proc.stdout is not None
        for line in _lines_until(proc, hard_deadline):
            if not line.startswith("@@"):
                continue
            msg = json.loads(line[2:])
            if msg["event"] == "logged" and late_start:
                # The outage ends when the callers stop: everything they logged was logged
                # while nothing listened. Now the receiver comes (back) up.
                base_url = stack.enter_context(receiver(kind, port, workdir, args.sink_parse))
                up_at = time.time()
            elif msg["event"] == "result":
                result = msg
        proc.wait(timeout=10)
        if not result:
            errlog.seek(0)
            tail = errlog.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"producer for {cls.name} gave no result: {' | '.join(tail)}")
        stats = receiver_stats(kind, base_url)
        errlog.seek(0)
        stderr = errlog.read().decode(errors="replace").splitlines()
    return derive(result, stats, scenario, up_at, stderr)


def _lines_until(proc: subprocess.Popen[str], deadline: float) -> Iterator[str]:
    assert proc.stdout is not None
    timer = threading.Timer(max(1.0, deadline - time.monotonic()), proc.kill)
    timer.daemon = True
    timer.start()
    try:
        yield from proc.stdout
    finally:
        timer.cancel()


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def derive(
    res: dict[str, Any],
    stats: dict[str, Any],
    scenario: str,
    up_at: float | None,
    stderr: list[str],
) -> dict[str, Any]:
    delivered = int(stats.get("events") or 0)
    logged = int(res["logged"])
    out = dict(res)
    out.pop("event", None)
    out["sink"] = stats
    # What the SDK wrote to stderr with its default logging (e.g. one line per dropped event).
    out["producer_stderr"] = {
        "lines": len(stderr),
        "distinct_head": sorted({x[:120] for x in stderr})[:5],
    }
    out["delivered"] = delivered
    out["lost"] = max(0, logged - delivered)
    out["lost_pct"] = 100.0 * out["lost"] / logged if logged else 0.0
    if res.get("calls"):
        # Paced callers: the share of calls that started > 1 ms behind their schedule.
        out["late_pct"] = 100.0 * res.get("late_calls", 0) / res["calls"]
    out["bytes_per_event"] = (
        stats["bytes"] / delivered if delivered and stats.get("bytes") is not None else None
    )
    out["cpu_s_per_m"] = res["cpu_seconds"] / delivered * 1e6 if delivered else None
    last = stats.get("last_event_at")
    if last is None and delivered and res.get("completed_by") == "all":
        # The receiver does not say when the last event came: the producer saw it, to 50 ms.
        last = res["done_at"]
        out["last_event_at_from"] = "producer"
    if scenario == "throughput":
        span = (last - res["started_at"]) if last else None
        out["delivered_per_s"] = delivered / span if span and span > 0 else 0.0
    if scenario == "outage":
        # Time to drain: from the sink coming up to the last event it got, once delivery
        # finished (everything arrived, or the SDK's flush returned and nothing more came);
        # None when the deadline passed with the SDK still at it.
        out["up_at"] = up_at
        finished = res.get("completed_by") in ("all", "settled")
        if finished and last is not None and up_at is not None:
            out["drain_s"] = max(0.0, last - up_at)
        else:
            out["drain_s"] = None
    return out


# -- the whole comparison -------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    runs = []
    for name in args.contestants:
        for scenario in args.scenarios:
            for threads in [1] if scenario == "outage" else args.threads:
                runs.append((name, scenario, threads))
    return runs


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used (user+nice+system+irq+softirq+steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / ticks


def own_cpu_seconds() -> float:
    """This process and every child it has waited for (sinks, collectors, producers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def git_state() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = None
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": load,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--contestants",
        default=",".join(CONTESTANTS),
        help="comma-separated, from: " + ", ".join(CONTESTANTS),
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, from: " + ", ".join(SCENARIOS),
    )
    p.add_argument(
        "--threads",
        default="1,4",
        help="caller thread counts for latency and throughput (default 1,4)",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the table shows medians (default 3)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="paced rate in events/s, all caller threads together (default 2000)",
    )
    p.add_argument(
        "--latency-seconds", type=float, default=1.5, help="paced run length (default 1.5)"
    )
    p.add_argument(
        "--throughput-seconds",
        type=float,
        default=1.5,
        help="as-fast-as-possible run length (default 1.5 to keep the whole run near 5 min; "
        "the target's figure is 10)",
    )
    p.add_argument(
        "--outage-seconds",
        type=float,
        default=3.0,
        help="how long the sink is down while one caller logs at --outage-rate (default 3)",
    )
    p.add_argument(
        "--outage-rate",
        type=float,
        default=4000.0,
        help="paced rate during the outage (default 4000: 12,000 events, past the 10,000-event "
        "in-memory queues of the other SDKs)",
    )
    p.add_argument(
        "--outage-repeat",
        type=int,
        default=1,
        help="runs of the outage scenario (default 1: it is the longest and its figures are "
        "mostly set by retry schedules)",
    )
    p.add_argument(
        "--sink-parse",
        choices=("full", "ids"),
        default="full",
        help="full: the sink decodes every event (JSON, or Avro payloads with their schema); "
        "ids: only what it needs to count and dedupe (default full)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds after the callers stop to wait for delivery (default 10)",
    )
    p.add_argument(
        "--outage-drain-timeout",
        type=float,
        default=10.0,
        help="the same after the outage ends (default 10)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="stop waiting once the SDK's flush returned and the count is still this long",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.20,
        help="flag figures whose spread exceeds this (default 0.20)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON (default benchmarks/results/compare-<UTC time>.json)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="print the tables of an earlier run's JSON again (e.g. after changing the report)",
    )
    args = p.parse_args(argv)
    if args.from_json is not None:
        reprint(args.from_json)
        return
    args.contestants = [c.strip() for c in args.contestants.split(",") if c.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    for c in args.contestants:
        if c not in CONTESTANTS:
            p.error(f"unknown contestant {c!r}; choose from {', '.join(CONTESTANTS)}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if BASELINE not in args.contestants:
        print(f"note: {BASELINE} is not in the run, so there are no ratios", file=sys.stderr)

    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    out_path = args.json or RESULTS_DIR / f"compare-{stamp}.json"
    versions = {name: CONTESTANTS[name].version() for name in args.contestants}
    machine = machine_info()
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "git": git_state(),
        "versions": versions,
        "settings": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()},
    }
    print(
        f"SDK comparison {meta['started']}: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, load {machine['loadavg']}"
    )
    print("contestants: " + ", ".join(f"{n} {v}" for n, v in versions.items()))

    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in args.contestants:
        cls = CONTESTANTS[name]
        if not cls.installed():
            skipped[name] = f"{cls.dist} is not installed (pip install -e '.[bench]')"
            print(f"{name}: SKIPPED: {skipped[name]}", flush=True)
    todo = plan(args)
    t_all = time.monotonic()
    busy0, own0 = busy_cpu_seconds(), own_cpu_seconds()
    for rep in range(args.repeat):
        for name, scenario, threads in todo:
            if name in skipped or (scenario == "outage" and rep >= args.outage_repeat):
                continue
            label = f"[{rep + 1}/{args.repeat}] {name:<26} {scenario:<10} {threads} thread(s)"
            t0 = time.monotonic()
            try:
                r = run_one(name, scenario, threads, args)
            except Exception as exc:
                if isinstance(exc, ReceiverUnavailable) and CONTESTANTS[name].target == "collector":
                    # The collector is someone else's work in progress: skip its row, say why.
                    skipped[name] = str(exc)
                    print(f"{label}: SKIPPED: {exc}", flush=True)
                    continue
                print(f"{label}: FAILED: {exc}", flush=True)
                runs.append(
                    {
                        "contestant": name,
                        "scenario": scenario,
                        "threads": threads,
                        "repeat": rep,
                        "error": str(exc),
                    }
                )
                continue
            r["repeat"] = rep
            runs.append(r)
            print(f"{label}: {_one_line(r)}  ({time.monotonic() - t0:.1f} s)", flush=True)
    elapsed = time.monotonic() - t_all
    meta["elapsed_seconds"] = round(elapsed, 1)
    meta["machine"]["loadavg_end"] = machine_info()["loadavg"]
    busy1 = busy_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        # What the rest of the machine did meanwhile: every process's CPU minus ours.
        other = max(0.0, (busy1 - busy0) - (own_cpu_seconds() - own0))
        meta["machine"]["other_processes_cpu_seconds"] = round(other, 1)
        meta["machine"]["other_processes_cpu_share"] = round(
            other / (elapsed * (os.cpu_count() or 1)), 3
        )

    text, summary = format_report(runs, args, versions, skipped)
    print()
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps({**meta, "skipped": skipped, "summary": summary, "runs": runs}, indent=1)
    )
    share = meta["machine"].get("other_processes_cpu_share")
    if share is not None:
        print(
            f"\nother processes on this machine used {share:.0%} of its CPU during the run "
            f"(load average {meta['machine']['loadavg']} at the start, "
            f"{meta['machine']['loadavg_end']} at the end)"
        )
    print(f"JSON: {out_path}  (all runs took {meta['elapsed_seconds']} s)")


def reprint(path: Path) -> None:
    doc = json.loads(path.read_text())
    args = argparse.Namespace(**doc["settings"])
    print(f"SDK comparison {doc['started']} ({path})")
    text, _ = format_report(doc["runs"], args, doc["versions"], doc.get("skipped", {}))
    print(text)


def _one_line(r: dict[str, Any]) -> str:
    parts = [f"logged {r['logged']:,}", f"delivered {r['delivered']:,}"]
    if "latency_us" in r:
        lat = r["latency_us"]
        parts.append(f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} p99.9 {lat['p999']:.1f} us")
    if r.get("delivered_per_s") is not None:
        parts.append(f"{r['delivered_per_s']:,.0f} delivered/s")
    if r.get("scenario") == "outage":
        parts.append(
            "drain " + (f"{r['drain_s']:.2f} s" if r.get("drain_s") is not None else "incomplete")
        )
    return ", ".join(parts)


if __name__ == "__main__":
    main()
