"""The Flask/gunicorn and FastAPI/uvicorn shapes: what the SDK costs a web service in
throughput.

A Flask app under gunicorn (``--workers 2``, sync workers), or with ``--server
fastapi`` a FastAPI app under uvicorn (``--workers 2``), each view spending ~1 ms of
CPU and logging two events per request through the default client
(``spotify_events.configure`` at import; the gunicorn hooks from
``spotify_events.servers.gunicorn``, or the lifespan from
``spotify_events.servers.lifespan``), delivering to the loopback sink
(benchmarks/compare/sink.py). The same app without the SDK (the two ``log()``
calls replaced by nothing) is the baseline. A load generator (``--clients``
threads, one keep-alive-less HTTP request after another, as gunicorn's sync
workers close each connection) drives each variant for ``--seconds``, alternating
the variants ``--repeat`` times, so background load hits both alike; throughput
is completed requests per second, and the cost is the median's drop in percent.
The server's CPU per request (the server's master and workers, ``psutil``) is the
steadier figure on a busy machine: the SDK's share is the difference.

    python benchmarks/flask_shape.py                         # 3 x 2 x 10 s
    python benchmarks/flask_shape.py --seconds 5 --repeat 2  # a quick look
    python benchmarks/flask_shape.py --server fastapi        # FastAPI under uvicorn
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rates import start_sink  # noqa: E402
from tests.support import free_port  # noqa: E402

VIEW = textwrap.dedent(
    '''
    """The view both apps serve: ~1 ms of CPU, then two events (or none)."""
    import os
    import time

    import spotify_events

    WITH_SDK = os.environ["BENCH_WITH_SDK"] == "1"
    if WITH_SDK:
        spotify_events.configure(schemas=os.environ["BENCH_SCHEMAS"])
    RECORD = {
        "user_id": "u000000001", "track_id": "spotify:track:4uLU6hMCjMI75M1A2tKUQC",
        "ms_played": 1, "reason_start": "CLICKROW", "reason_end": "TRACKDONE",
        "platform": "web", "shuffle": False, "offline": False,
    }


    def play(n):
        until = time.process_time() + 0.001
        while time.process_time() < until:  # the view's own work
            pass
        if WITH_SDK:
            spotify_events.log("EndSong", {**RECORD, "ms_played": n})
            spotify_events.log("EndSong", {**RECORD, "ms_played": n + 1})
        return {"ok": n}
    '''
)

APP = textwrap.dedent(
    '''
    """The measured WSGI app."""
    from flask import Flask

    import bench_view

    app = Flask(__name__)
    app.add_url_rule("/play/<int:n>", view_func=bench_view.play)
    '''
)

FASTAPI_APP = textwrap.dedent(
    '''
    """The measured ASGI app, the client started and closed by the lifespan."""
    from fastapi import FastAPI

    import bench_view
    from spotify_events.servers.lifespan import lifespan

    app = FastAPI(lifespan=lifespan if bench_view.WITH_SDK else None)


    @app.get("/play/{n}")
    async def play(n: int):
        return bench_view.play(n)
    '''
)

CONF = textwrap.dedent(
    """
    import os
    if os.environ["BENCH_WITH_SDK"] == "1":
        from spotify_events.servers.gunicorn import post_worker_init, worker_exit
    """
)


SHAPES = {"flask": "Flask/gunicorn", "fastapi": "FastAPI/uvicorn"}


def load(port: int, clients: int, seconds: float) -> int:
    """Requests completed by ``clients`` threads in ``seconds``."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        n = 0
        while time.monotonic() < stop:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/play/{n}")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                n += 1
        done[k] = n

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def server_cpu(server: psutil.Process) -> float:
    """User+system seconds of the server's master and workers so far."""
    total = 0.0
    for proc in [server, *server.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def run_variant(
    with_sdk: bool, base_url: str, args: argparse.Namespace, work: Path
) -> tuple[float, float]:
    """(requests/s, server CPU ms per request) of one variant's measured run."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_WITH_SDK": "1" if with_sdk else "0",
        "BENCH_SCHEMAS": str(ROOT / "schemas"),
        "SPOTIFY_EVENTS_ENDPOINT": f"{base_url}/v1/batches",
        "SPOTIFY_EVENTS_QUEUE_PATH": str(work / "events.db"),
        "PYTHONPATH": os.pathsep.join([str(work), str(ROOT)]),  # this tree's package
    }
    if args.server == "flask":
        command = [
            *(sys.executable, "-m", "gunicorn", "-c", str(work / "gunicorn_conf.py")),
            *("--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "bench_app:app"),
        ]
    else:
        command = [
            *(sys.executable, "-m", "uvicorn", "--workers", str(args.workers)),
            *("--port", str(port), "--no-access-log", "--log-level", "warning"),
            "bench_asgi:app",
        ]
    server = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/play/0", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[2]} did not start") from None
                time.sleep(0.1)
        load(port, args.clients, 1.0)  # warm-up: imports, first commit, first batch
        master = psutil.Process(server.pid)
        before = server_cpu(master)
        done = load(port, args.clients, args.seconds)
        return done / args.seconds, 1e3 * (server_cpu(master) - before) / max(done, 1)
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--server",
        choices=["flask", "fastapi"],
        default="flask",
        help="Flask under gunicorn (sync workers) or FastAPI under uvicorn",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=4, help="load generator threads")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flask-shape-"))
    (work / "bench_view.py").write_text(VIEW)
    (work / "bench_app.py").write_text(APP)
    (work / "gunicorn_conf.py").write_text(CONF)
    (work / "bench_asgi.py").write_text(FASTAPI_APP)
    sink, base_url = start_sink()
    load_avg = os.getloadavg()
    print(
        f"{SHAPES[args.server]} shape {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load "
        f"{load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; {args.workers} workers, "
        f"{args.clients} client threads, {args.seconds:g} s per run",
        flush=True,
    )
    results: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    try:
        for _ in range(args.repeat):
            for variant in ("without", "with"):
                rps, cpu_ms = run_variant(variant == "with", base_url, args, work)
                results[variant].append(rps)
                cpu[variant].append(cpu_ms)
                print(
                    f"  {variant:7} SDK: {rps:8.1f} requests/s, {cpu_ms:.3f} ms server CPU/request",
                    flush=True,
                )
        with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
    finally:
        sink.terminate()
        sink.wait(10)
    without, with_sdk = (statistics.median(results[v]) for v in ("without", "with"))
    cost = 100 * (without - with_sdk) / without
    extra = statistics.median(cpu["with"]) - statistics.median(cpu["without"])
    print("\n| variant | requests/s (median) | runs | server CPU ms/request (median) |")
    print("|---|---|---|---|")
    for variant in ("without", "with"):
        runs = ", ".join(f"{v:.0f}" for v in results[variant])
        print(
            f"| {variant} the SDK | {statistics.median(results[variant]):.0f} | {runs} | "
            f"{statistics.median(cpu[variant]):.3f} |"
        )
    print(
        f"\nthroughput cost of the SDK: {cost:.1f}%; server CPU per request: {extra:+.3f} ms "
        f"(two events); events at the sink: {stats['events']:,}"
    )


if __name__ == "__main__":
    main()
