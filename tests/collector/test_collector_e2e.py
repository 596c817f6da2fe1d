"""End-to-end: a real ``spotify-events collector`` process on a loopback port.

Batches are built with ``encode_batch`` (not the SDK client) and POSTed over HTTP;
results are checked by reading the bucket files back with fastavro and by the
report (HTTP and the ``report`` command on the stopped collector's data dir).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastavro
import requests
from collector_helpers import (
    AD,
    END_SONG,
    PAGE_VIEW,
    SEARCH,
    SERVICE_CALL,
    BatchMaker,
    expected_uids,
    part_files,
    post,
    read_uids,
    stream,
)
from failpoints import failpoint_program

from spotify_events.collector.process import CollectorProcess
from spotify_events.wire import DropNotice


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run_report(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from spotify_events.cli import main; main()",
            "report",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def build_bodies(maker: BatchMaker, per_type: dict[str, int], batch: int = 1000) -> list[bytes]:
    ts = now_ms()
    bodies = []
    for event_type, n in per_type.items():
        for start in range(1, n + 1, batch):
            seqs = range(start, min(start + batch, n + 1))
            bodies.append(maker.body(maker.envelopes(event_type, seqs, ts)))
    return bodies


def test_100k_events_across_types_arrive_exactly_once(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    c = start_collector()
    per_type = {
        END_SONG: 40_000,
        PAGE_VIEW: 25_000,
        SEARCH: 15_000,
        SERVICE_CALL: 15_000,
        AD: 5_000,
    }
    bodies = build_bodies(maker, per_type)
    with requests.Session() as session, ThreadPoolExecutor(4) as pool:

        def send(body: bytes) -> dict[str, Any]:
            r = session.post(f"{c.url}/v1/batches", data=body, timeout=60)
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        results = list(pool.map(send, bodies))
    assert sum(r["accepted"] for r in results) == 100_000
    assert all(r["duplicates"] == 0 and r["rejected"] == [] for r in results)
    expected: Counter[str] = Counter()
    for event_type, n in per_type.items():
        expected += expected_uids("producer-a", event_type, range(1, n + 1))
    assert read_uids(c.data_dir) == expected
    report = c.report()
    for event_type, n in per_type.items():
        s = stream(report, "producer-a", event_type)
        assert (s["received"], s["duplicates"], s["open_gaps"], s["lost"]) == (n, 0, 0, 0)
    assert c.stop() == 0


def test_same_batch_twice_is_written_once_and_counted_duplicate(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    c = start_collector()
    body = maker.body(maker.envelopes(END_SONG, range(1, 101), now_ms()))
    first, second = post(c.url, body).json(), post(c.url, body).json()
    assert (first["accepted"], first["duplicates"]) == (100, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 100)
    assert read_uids(c.data_dir) == expected_uids("producer-a", END_SONG, range(1, 101))
    assert stream(c.report(), "producer-a", END_SONG)["duplicates"] == 100


def test_drop_notice_gap_and_loss_and_report_command(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    # A grace period no slow machine can outlast: the gap is open however long the round
    # trips take. When it turns lost is tested in-process with a fake clock
    # (test_accounting.py); here the report command's --grace-period override shows it.
    c = start_collector("--grace-period", "3600")
    ts = now_ms()
    drops = [DropNotice(END_SONG, 3, 4, 2, "queue full")]
    # 1, 2 received; 3-4 dropped on purpose; 5 never arrives; 6 received; watermark 7
    body = maker.body(maker.envelopes(END_SONG, [1, 2, 6], ts), drops=drops, next_seq={END_SONG: 7})
    assert post(c.url, body).status_code == 200
    report = c.report()
    assert report["grace_period"] == 3600
    s = stream(report, "producer-a", END_SONG)
    assert (s["received"], s["dropped"], s["dropped_reasons"]) == (3, 2, {"queue full": 2})
    assert (s["open_gaps"], s["lost"], s["gap_ranges"]) == (1, 0, [[5, 5]])
    assert c.stop() == 0  # clean SIGTERM shutdown
    done = run_report(c.data_dir, "--json")  # the stopped collector's own grace period
    assert done.returncode == 0, done.stderr
    s = stream(json.loads(done.stdout), "producer-a", END_SONG)
    assert (s["received"], s["dropped"], s["lost"], s["open_gaps"]) == (3, 2, 0, 1)
    # past the grace period the gap is lost (and the dropped ones are still dropped)
    done = run_report(c.data_dir, "--json", "--grace-period", "0")
    assert done.returncode == 0, done.stderr
    s = stream(json.loads(done.stdout), "producer-a", END_SONG)
    assert (s["received"], s["dropped"], s["lost"], s["open_gaps"]) == (3, 2, 1, 0)
    table = run_report(c.data_dir)
    assert table.returncode == 0 and END_SONG in table.stdout and "queue full" in table.stdout


def test_sigkill_mid_stream_then_restart_completes_without_duplicates(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    c = start_collector(data_dir=data)
    bodies = build_bodies(maker, {END_SONG: 60_000, PAGE_VIEW: 20_000})
    acked: list[int] = []
    stop = threading.Event()

    def sender() -> None:
        with requests.Session() as session:
            for i, body in enumerate(bodies):
                if stop.is_set():
                    return
                try:
                    r = session.post(f"{c.url}/v1/batches", data=body, timeout=30)
                except requests.RequestException:
                    return
                if r.status_code == 200:
                    acked.append(i)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(acked) >= 10)
    assert c.proc is not None
    c.proc.kill()  # SIGKILL while requests are in flight
    c.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    # every file is a readable Avro container even right after the kill + restart
    c2 = start_collector(data_dir=data)
    for path in part_files(data):
        with open(path, "rb") as fh:
            list(fastavro.reader(fh))
    # acknowledged events survived the kill
    before = stream(c2.report(), "producer-a", END_SONG)["received"]
    assert before >= 1000
    # the SDK retries everything not acknowledged; here: simply everything
    with requests.Session() as session:
        for body in bodies:
            r = session.post(f"{c2.url}/v1/batches", data=body, timeout=60)
            assert r.status_code == 200, r.text
    expected = expected_uids("producer-a", END_SONG, range(1, 60_001)) + expected_uids(
        "producer-a", PAGE_VIEW, range(1, 20_001)
    )
    assert read_uids(data) == expected  # exactly once: nothing missing, no duplicates
    report = c2.report()
    assert stream(report, "producer-a", END_SONG)["received"] == 60_000
    assert stream(report, "producer-a", END_SONG)["lost"] == 0


def test_bad_input_over_http_and_auth(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    c = start_collector("--max-body-bytes", "50000", env={"SPOTIFY_EVENTS_TOKEN": "t0ken"})
    good = maker.body(maker.envelopes(END_SONG, [1], now_ms()))
    r = post(c.url, good)
    assert r.status_code == 401 and r.json()["error"]
    assert post(c.url, good, token="nope").status_code == 403
    r = post(c.url, b"\x00garbage", token="t0ken")
    assert r.status_code == 400 and "error" in r.json()
    r = post(c.url, b"x" * 60_000, token="t0ken")
    assert r.status_code == 413 and "error" in r.json()
    hostile = maker.envelope(END_SONG, 2, now_ms())._replace(event_type="../x")
    r = post(c.url, maker.body([hostile], next_seq={}), token="t0ken")
    assert r.status_code == 200 and r.json()["rejected"][0]["reason"] == "invalid event type name"
    assert part_files(c.data_dir) == []
    assert not (c.data_dir.parent / "x").exists()
    r = post(c.url, good, token="t0ken")
    assert (r.status_code, r.json()["accepted"]) == (200, 1)
    # /metrics needs the token too: it is not a side door
    assert requests.get(f"{c.url}/metrics", timeout=10).status_code == 401
    auth = {"Authorization": "Bearer t0ken"}
    metrics = requests.get(f"{c.url}/metrics", headers=auth, timeout=10).text
    assert "spotify_events_collector_decode_errors_total 1.0" in metrics
    assert c.alive()


def test_crash_between_bucket_write_and_ledger_commit(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker, tmp_path: Path
) -> None:
    """The worst moment to die: bytes fsynced to the bucket, ledger not yet committed."""
    data = tmp_path / "data"
    c = start_collector(data_dir=data, program=failpoint_program("crash-after-write:2"))
    ts = now_ms()
    first = maker.body(maker.envelopes(END_SONG, range(1, 501), ts))
    second = maker.body(
        maker.envelopes(END_SONG, range(501, 1001), ts)
        + maker.envelopes(PAGE_VIEW, range(1, 11), ts)
    )
    assert post(c.url, first).status_code == 200
    try:
        post(c.url, second)
        raise AssertionError("the failpoint should have killed the collector")
    except requests.ConnectionError:
        pass
    assert c.proc is not None and c.proc.wait(10) == 137
    (end_song_part,) = [p for p in part_files(data) if END_SONG in str(p)]
    torn_size = end_song_part.stat().st_size
    assert len(part_files(data)) == 2  # the PageView part exists but was never committed
    c2 = start_collector(data_dir=data)
    log = "".join(c2.stderr_lines)
    assert wait_until(lambda: "unknown_part_file" in "".join(c2.stderr_lines), 5), log
    kinds = {i["kind"] for i in c2.report()["incidents"]}
    assert kinds == {"uncommitted_bytes", "unknown_part_file"}  # moved aside, not deleted
    assert end_song_part.stat().st_size < torn_size  # cut back to its committed length
    assert [p for p in part_files(data) if PAGE_VIEW in str(p)] == []
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 501))
    # the SDK got no 200 for the second batch, so it retries: written exactly once
    r = post(c2.url, second)
    assert (r.status_code, r.json()["accepted"], r.json()["duplicates"]) == (200, 510, 0)
    assert read_uids(data) == expected_uids("producer-a", END_SONG, range(1, 1001)) + (
        expected_uids("producer-a", PAGE_VIEW, range(1, 11))
    )


def test_sigint_shuts_down_cleanly_and_keeps_acknowledged_events(
    start_collector: Callable[..., CollectorProcess], maker: BatchMaker
) -> None:
    c = start_collector()
    body = maker.body(maker.envelopes(SEARCH, range(1, 201), now_ms()))
    assert post(c.url, body).json()["accepted"] == 200
    assert c.proc is not None
    c.proc.send_signal(signal.SIGINT)
    assert c.proc.wait(20) == 0
    assert read_uids(c.data_dir) == expected_uids("producer-a", SEARCH, range(1, 201))
    done = run_report(c.data_dir, "--json")
    assert stream(json.loads(done.stdout), "producer-a", SEARCH)["received"] == 200
