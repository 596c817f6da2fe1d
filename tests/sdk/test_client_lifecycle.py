"""A client's life around its host: log() racing close(), a forked child's stats(),
a fork while another process holds the queue's write lock, multiprocessing children
leaving through os._exit(), a client dropped without close()."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sdk_helpers import END_SONG, Sink, wait_for

from spotify_events import EventClient
from spotify_events.errors import ClientClosedError
from spotify_events.settings import QUEUE_BUSY_TIMEOUT

EndSong = "spotify.events.playback.EndSong"
MakeClient = Callable[..., EventClient]


def test_events_logged_while_close_runs_are_delivered_or_refused(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint)
    accepted: list[int] = []
    refused = threading.Event()

    def spam() -> None:
        i = 0
        while True:
            try:
                client.log("EndSong", {**END_SONG, "ms_played": i})
            except ClientClosedError:
                refused.set()
                return
            accepted.append(i)
            i += 1

    thread = threading.Thread(target=spam)
    thread.start()
    assert wait_for(lambda: len(accepted) > 2000)
    client.close(timeout=30)
    thread.join(10)
    assert refused.is_set()
    assert sink.count() == len(accepted)  # every log() that returned is delivered


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_read_stats_from_any_thread_before_logging(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint)
    client.log("EndSong", END_SONG)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            done = threading.Event()

            def read() -> None:
                client.stats()
                done.set()

            threading.Thread(target=read, daemon=True).start()
            code = 0 if done.wait(10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


#: Another process in a long write transaction on the queue file, until told to end it.
HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds ``path``'s write lock while the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("\n", timeout=30)


def fork_once_waiting(queue_lock: threading.RLock) -> float:
    """Once a thread of ours holds ``queue_lock`` (waiting inside it for the other
    process's lock), fork a child that exits at once; how long ``os.fork()`` took."""

    def held() -> bool:
        if not queue_lock.acquire(blocking=False):
            return True
        queue_lock.release()
        return False

    assert wait_for(held)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    took = time.monotonic() - started
    os.waitpid(pid, 0)
    return took


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_does_not_wait_while_another_process_holds_the_write_lock(
    sink: Sink, make_client: MakeClient, tmp_path: Path
) -> None:
    """The writer thread waits for another process's write lock holding its queue's
    lock, which ``os.fork()`` takes (the queue's fork hook): the fork waited as long
    as that process kept the lock, up to the busy timeout, holding up the host. The
    wait now gives way to the fork, and the event is committed once the lock is free."""
    path = tmp_path / "queue.db"
    client = make_client(endpoint=sink.endpoint, queue_path=str(path))
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=30)
    with write_lock_held_elsewhere(path):
        client.log("EndSong", {**END_SONG, "ms_played": 1})
        took = fork_once_waiting(client._pipeline.writer_queue._lock)
    assert took < QUEUE_BUSY_TIMEOUT / 2
    assert client.flush(timeout=30)
    assert sink.count() == 2 and client.stats().dropped == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_cuts_the_shipper_s_wait_for_the_write_lock_quietly(
    sink: Sink, make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipper thread, acknowledging a batch while another process holds the write
    lock, gives way to a fork as the writer does; its step runs again afterwards, with
    no error logged for what is not one, and the event is acknowledged once."""
    path = tmp_path / "queue.db"
    answering = threading.Event()
    release = threading.Event()

    def hold_the_answer(payload: bytes) -> bool:
        answering.set()
        release.wait(30)
        return False

    sink.poison = hold_the_answer
    client = make_client(endpoint=sink.endpoint, queue_path=str(path))
    client.log("EndSong", END_SONG)
    client._pipeline.shipper.hurry()
    assert wait_for(answering.is_set)
    try:
        with write_lock_held_elsewhere(path):
            release.set()  # the answer arrives; the acknowledgement waits for the lock
            took = fork_once_waiting(client._pipeline.shipper_queue._lock)
    finally:
        release.set()
    assert took < QUEUE_BUSY_TIMEOUT / 2
    assert client.flush(timeout=30)
    assert sink.count() == 1 and client.stats().dropped == {}
    shipper_errors = [
        r for r in caplog.records if r.name == "spotify_events.shipper" and r.levelno >= 40
    ]
    assert shipper_errors == []


def _log_in_worker(client: EventClient, n: int) -> None:
    for i in range(n):
        client.log("EndSong", {**END_SONG, "ms_played": i})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocessing_fork_child_commits_its_buffer_at_exit(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint, commit_interval=5.0)  # nothing commits on its own
    client.log("PageView", {"session_id": "s", "page_uri": "p", "load_ms": 1})
    worker = multiprocessing.get_context("fork").Process(target=_log_in_worker, args=(client, 50))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0
    assert client.flush(timeout=30)
    assert sink.seqs(EndSong) == list(range(1, 51))  # multiprocessing leaves via os._exit
    assert sink.duplicates == 0


def test_a_client_dropped_without_close_commits_its_buffer(sink: Sink, tmp_path: Path) -> None:
    import gc

    from support import SCHEMAS

    from spotify_events.queue import DurableQueue

    client = EventClient(
        endpoint=sink.endpoint,
        queue_path=str(tmp_path / "q.db"),
        schemas=str(SCHEMAS),
        commit_interval=5.0,  # nothing would commit on its own before the client is gone
    )
    for _ in range(10):
        client.log("EndSong", END_SONG)
    del client
    gc.collect()
    queue = DurableQueue(tmp_path / "q.db")
    try:
        assert queue.depth().events + sink.count() == 10
    finally:
        queue.close()


@pytest.mark.parametrize("token", ["токен", "s3cret\n", " s3cret"])
def test_a_token_no_http_header_can_carry_is_refused_at_construction(
    tmp_path: Path, token: str
) -> None:
    """Such a token fails every send (a traceback each time) and nothing ships, and the
    collector never matches it; a secret file's trailing newline is the usual way in."""
    from spotify_events.collector.server import CollectorConfig
    from spotify_events.config import ClientConfig
    from spotify_events.errors import ConfigError

    with pytest.raises(ConfigError, match="token"):
        ClientConfig.build(environ={}, token=token)
    for option in ("token", "metrics_token"):
        with pytest.raises(ConfigError, match=option):
            CollectorConfig(data_dir=str(tmp_path), schemas=str(tmp_path), **{option: token})
