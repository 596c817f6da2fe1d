"""Pre-fork servers: a client created at import time in gunicorn's master (--preload),
used by 4 forked workers in request handlers, under load, then a graceful stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fault_helpers import bucket_ids, stream_of, wait_for
from support import SCHEMAS, free_port

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None,
        reason="gunicorn is not installed",
    ),
]

APP = """
import os
import threading

from spotify_events import EventClient

# created at import time, in the master, before the workers are forked
client = EventClient(endpoint=os.environ["SE_ENDPOINT"], queue_path=os.environ["SE_QUEUE"],
                     schemas=os.environ["SE_SCHEMAS"], lease_ttl=3, connect_timeout=0.3,
                     read_timeout=1.0, exit_timeout=10)
assert threading.active_count() == 1, "creating the client must not start threads"


def app(environ, start_response):
    uid = environ["QUERY_STRING"]
    if not uid:  # a readiness probe: nothing to log
        start_response("204 No Content", [])
        return [b""]
    client.log("EndSong", {"user_id": "u1", "track_id": uid, "ms_played": 1, "reason_start": "CLICKROW",
                           "reason_end": "TRACKDONE", "platform": "web"})
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Worker", str(os.getpid()))])
    return [b"ok"]
"""


def test_gunicorn_workers_deliver_everything_and_stop_cleanly(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    (tmp_path / "webapp.py").write_text(textwrap.dedent(APP))
    queue_path = tmp_path / "queue.db"
    port = free_port()
    gunicorn = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--preload",
            "-w",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "--graceful-timeout",
            "30",
            "webapp:app",
        ],
        env={
            **os.environ,
            "SE_ENDPOINT": collector.endpoint,
            "SE_QUEUE": str(queue_path),
            "SE_SCHEMAS": str(SCHEMAS),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        assert wait_for(lambda: _up(base), timeout=30), "gunicorn did not come up"
        workers: set[str] = set()

        def hit(i: int) -> str | None:
            response = requests.get(f"{base}?{i}", timeout=10)
            if response.status_code == 200:
                workers.add(response.headers["X-Worker"])
                return str(i)
            return None

        with ThreadPoolExecutor(8) as pool:
            served = {uid for uid in pool.map(hit, range(3000)) if uid is not None}
        assert len(served) == 3000 and len(workers) >= 2  # several workers really logged
        before_stop = time.monotonic()
        gunicorn.send_signal(signal.SIGTERM)
        assert gunicorn.wait(timeout=60) == 0
        stop_seconds = time.monotonic() - before_stop
    finally:
        if gunicorn.poll() is None:
            gunicorn.kill()
    delivered_at_exit = len(bucket_ids(collector.data_dir).keys() & served)
    # whatever did not ship before the workers exited is in the queue file: the next start ships it
    with EventClient(
        endpoint=collector.endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS)
    ) as client:
        assert client.flush(timeout=60)
    found = bucket_ids(collector.data_dir)
    assert served <= found.keys() and max(found.values()) == 1
    (stream,) = stream_of(
        collector.report()
    )  # one queue file = one producer, shared by all workers
    assert stream["received"] == 3000 and stream["open_gaps"] == 0 and stream["lost"] == 0
    assert stop_seconds < 30, f"graceful stop took {stop_seconds:.1f}s"
    print(
        f"\ngunicorn: 4 workers, 3000 requests, {delivered_at_exit} delivered before exit, "
        f"graceful stop in {stop_seconds:.1f}s, all 3000 delivered exactly once"
    )


def _up(base: str) -> bool:
    try:
        return requests.get(base, timeout=1).status_code == 204
    except requests.RequestException:
        return False
