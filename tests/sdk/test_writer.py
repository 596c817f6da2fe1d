"""QueueWriter: group commit, the commit path, backpressure, write errors, shutdown, memory."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from queue_helpers import TS, A, MakeQueue
from support import stored_events
from writer_helpers import FP, PAYLOAD, SIZE, Blocker, MakeWriter, drops

from spotify_events.queue import DROP_BUFFER_FULL, DROP_WRITE_FAILED, PendingEvent

B = "test.events.Beta"
WaitFor = Callable[..., bool]


def ev(event_type: str = A, n: int = 0) -> PendingEvent:
    return PendingEvent(event_type, FP, TS + n, f"{n:08d}".encode().ljust(PAYLOAD, b"."))


def number(payload: bytes) -> int:
    return int(payload[:8])


def rows(path: Path) -> list[tuple[str, int, bytes]]:
    return [(e.event_type, e.seq, e.payload) for e in stored_events(path)]


def assert_contiguous(path: Path) -> dict[str, int]:
    """Stored + dropped sequence numbers cover 1..next-1 exactly once, per type."""
    seqs: dict[str, list[int]] = {}
    for t, s, _ in rows(path):
        seqs.setdefault(t, []).append(s)
    for t, first, last, count, _ in drops(path):
        assert count == last - first + 1
        seqs.setdefault(t, []).extend(range(first, last + 1))
    with sqlite3.connect(path) as conn:
        next_seqs = dict(conn.execute("SELECT event_type, next_seq FROM sequences").fetchall())
    assert set(seqs) == set(next_seqs)
    for t, numbers in seqs.items():
        assert sorted(numbers) == list(range(1, next_seqs[t])), t
    return {t: n - 1 for t, n in next_seqs.items()}


# -- group commit ---------------------------------------------------------------------


def test_group_commit_commits_everything(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    on_commit = threading.Event()
    writer = make_writer(make_queue(), commit_interval=0.002, on_commit=on_commit)
    writer.start()
    tickets = [writer.submit(ev(A if i % 3 else B, i)) for i in range(5000)]
    assert tickets == list(range(1, 5001))
    assert writer.stop(timeout=10)
    assert on_commit.is_set()
    assert writer.counters.logged == writer.counters.committed == 5000
    assert writer.counters.commits < 5000  # grouped, not one transaction per event
    assert writer.counters.dropped == {} and writer.counters.write_errors == 0
    stored = rows(queue_path)
    assert [number(p) for _, _, p in stored] == list(range(5000))  # commit order = submit order
    assert assert_contiguous(queue_path) == {A: 3333, B: 1667}
    assert writer.buffered == (0, 0)


@pytest.mark.parametrize("started", [False, True])
def test_commit_through_makes_the_event_visible_to_another_connection(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path, started: bool
) -> None:
    # a long commit_interval: commit_through must not wait for the writer's timer
    writer = make_writer(make_queue(), commit_interval=60)
    if started:
        writer.start()
    for i in range(3):
        ticket = writer.submit(ev(A, i))
        assert writer.commit_through(ticket, timeout=10)  # the timer would take 60 s
        with sqlite3.connect(queue_path) as conn:  # a fresh connection, like another process
            assert conn.execute("SELECT max(seq) FROM events").fetchone() == (i + 1,)
    assert writer.commit_through(0, timeout=0)  # a dropped event's ticket: nothing to wait for
    assert writer.commit_through(1, timeout=0)  # already committed


def test_commit_level_from_many_threads_shares_transactions(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue(), commit_interval=0.005)
    writer.start()
    failures: list[int] = []

    def log(thread: int) -> None:
        for i in range(300):
            ticket = writer.submit(ev(A if thread % 2 else B, thread * 1000 + i))
            if not writer.commit_through(ticket, timeout=10):
                failures.append(ticket)

    threads = [threading.Thread(target=log, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert writer.counters.committed == 1200
    stored = rows(queue_path)
    for thread in range(4):  # each thread's events stay in its own order
        mine = [number(p) for _, _, p in stored if number(p) // 1000 == thread]
        assert mine == [thread * 1000 + i for i in range(300)]
    assert_contiguous(queue_path)


# -- backpressure and drops -------------------------------------------------------------


def test_backpressure_then_drops_are_counted_and_committed_as_drop_records(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = make_queue(busy_timeout=60)  # the writer waits on the lock; it does not fail
    writer = make_writer(
        queue, commit_interval=0.001, max_buffer_bytes=3 * SIZE, block_timeout=0.05
    )
    writer.start()
    with blocker():
        first = writer.submit(ev(A, 0))
        assert first == 1
        assert wait_for(lambda: writer.buffered[0] == 0)  # taken by the writer, stuck on the lock
        # the bound counts the event in flight too: room for two more
        buffered = [writer.submit(ev(A, n)) for n in (1, 2)]
        assert buffered == [2, 3]
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="spotify_events.writer"):
            dropped = [writer.submit(ev(t, 10 + k)) for k, t in enumerate((A, B, A, A))]
        assert dropped == [0, 0, 0, 0]
        assert time.monotonic() - began >= 4 * 0.05 * 0.9  # each waited block_timeout first
        assert writer.counters.dropped == {DROP_BUFFER_FULL: 4}
        assert writer.counters.logged == 7
        assert (
            len([r for r in caplog.records if "buffer full" in r.getMessage()]) == 1
        )  # once per episode
        assert rows(queue_path) == []
    assert writer.commit_through(buffered[-1], timeout=10)
    assert writer.stop(timeout=10)
    assert [number(p) for _, _, p in rows(queue_path)] == [0, 1, 2]
    assert sorted((t, c, r) for t, _, _, c, r in drops(queue_path)) == [
        (A, 3, DROP_BUFFER_FULL),
        (B, 1, DROP_BUFFER_FULL),
    ]
    assert assert_contiguous(queue_path) == {A: 6, B: 1}  # stored + dropped, no gap
    assert writer.counters.committed == 3


def test_no_thread_no_wait(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path, wait_for: WaitFor
) -> None:
    # nobody could drain the buffer: a full one drops at once instead of blocking for an hour
    writer = make_writer(make_queue(), max_buffer_bytes=2 * SIZE, block_timeout=3600)
    tickets: list[int] = []
    submitter = threading.Thread(
        target=lambda: tickets.extend(writer.submit(ev(A, n)) for n in range(4)), daemon=True
    )
    submitter.start()
    assert wait_for(lambda: not submitter.is_alive(), timeout=30)
    assert tickets == [1, 2, 0, 0]
    assert writer.stop(timeout=5)
    assert assert_contiguous(queue_path) == {A: 4}


def test_memory_bounded_while_a_caller_outruns_the_writer(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    limit = 400 * SIZE
    writer = make_writer(
        make_queue(), commit_interval=0.005, max_buffer_bytes=limit, block_timeout=0.001
    )
    writer.start()
    peak = 0
    for n in range(40_000):
        writer.submit(ev(A, n))
        peak = max(peak, writer.buffered[1])
    assert peak <= limit
    assert writer.stop(timeout=20)
    counters = writer.counters
    dropped = sum(counters.dropped.values())
    assert counters.committed + dropped == counters.logged == 40_000
    assert assert_contiguous(queue_path) == {A: 40_000}
    stored = [number(p) for _, _, p in rows(queue_path)]
    assert stored == sorted(stored)


# -- write errors ---------------------------------------------------------------------


def test_write_error_keeps_events_in_memory_until_recovery(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
    wait_for: WaitFor,
) -> None:
    queue = make_queue(busy_timeout=0.02)  # the lock outlives the busy timeout: appends fail
    writer = make_writer(queue, commit_interval=0.001)
    writer.start()
    with blocker():
        tickets = [writer.submit(ev(A, n)) for n in range(10)]
        assert wait_for(lambda: writer.counters.write_errors >= 2)
        assert not writer.commit_through(tickets[-1], timeout=1)  # the commit path reports it
        assert writer.counters.committed == 0
        assert writer.buffered == (10, 10 * SIZE)
        assert writer.counters.last_error and str(queue_path) in writer.counters.last_error
        tickets += [writer.submit(ev(A, n)) for n in range(10, 15)]
    assert writer.commit_through(tickets[-1], timeout=10)
    assert wait_for(lambda: writer.counters.committed == 15)
    assert [number(p) for _, _, p in rows(queue_path)] == list(range(15))
    assert [s for _, s, _ in rows(queue_path)] == list(range(1, 16))
    assert writer.stop(timeout=5)


def test_memory_stays_bounded_while_writes_fail(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
) -> None:
    limit = 20 * SIZE
    queue = make_queue(busy_timeout=0.02)
    writer = make_writer(queue, commit_interval=0.001, max_buffer_bytes=limit, block_timeout=0)
    writer.start()
    peak = 0
    with blocker():
        deadline = time.monotonic() + 10
        n = 0
        while writer.counters.write_errors < 5 and time.monotonic() < deadline:
            writer.submit(ev(A, n))
            n += 1
            peak = max(peak, writer.buffered[1])
    # what is held in memory never exceeds the configured bound
    assert peak <= limit, f"{peak} bytes buffered with max_buffer_bytes={limit}"
    assert writer.counters.dropped.get(DROP_WRITE_FAILED, 0) > 0
    assert writer.stop(timeout=10)
    assert writer.counters.committed + sum(writer.counters.dropped.values()) == n
    assert_contiguous(queue_path)


# -- shutdown -------------------------------------------------------------------------


@pytest.mark.parametrize("started", [False, True])
def test_stop_commits_what_is_left(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path, started: bool
) -> None:
    writer = make_writer(
        make_queue(), commit_interval=60, max_buffer_bytes=100 * SIZE, block_timeout=0
    )
    if started:
        writer.start()
    for n in range(120):  # 20 of them overflow the buffer
        writer.submit(ev(A, n))
    assert writer.stop(timeout=10)
    assert writer.buffered == (0, 0)
    assert len(rows(queue_path)) == 100
    assert [(c, r) for _, _, _, c, r in drops(queue_path)] == [(20, DROP_BUFFER_FULL)]
    assert assert_contiguous(queue_path) == {A: 120}
    assert writer.stop(timeout=1)  # idempotent


def test_stop_reports_what_it_could_not_commit(
    make_queue: MakeQueue, make_writer: MakeWriter, blocker: Callable[[], Blocker], queue_path: Path
) -> None:
    writer = make_writer(make_queue(busy_timeout=0.02), commit_interval=60)
    writer.start()
    writer.submit(ev(A))
    with blocker():
        assert writer.stop(timeout=0.5) is False
    assert writer.buffered[0] == 1
    assert writer.stop(timeout=5)  # once the lock is gone, a second stop commits it
    assert len(rows(queue_path)) == 1


# -- fork ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reinits_and_both_sides_keep_one_numbering(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path, wait_for: WaitFor
) -> None:
    """A gunicorn-style fork with the writer running and events buffered: the child
    forgets the parent's buffer and locks, reopens its connection, starts its own writer."""
    queue = make_queue()
    writer = make_writer(queue, commit_interval=0.001)
    writer.start()
    for n in range(200):
        writer.submit(ev(A, n))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            writer.after_fork_in_child()
            queue.after_fork_in_child()
            writer.start()
            for n in range(1000, 1100):
                ticket = writer.submit(ev(B if n % 2 else A, n))
                assert writer.commit_through(ticket, timeout=10)
            code = 0 if writer.stop(timeout=10) else 2
        finally:
            os._exit(code)
    for n in range(200, 300):
        writer.submit(ev(A, n))
    status: list[int] = []

    def child_done() -> bool:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(st)
        return bool(done)

    if not wait_for(child_done, timeout=30):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("forked child hung (a lock inherited from the parent?)")
    assert os.waitstatus_to_exitcode(status[0]) == 0
    assert writer.stop(timeout=10)
    numbers = [number(p) for _, _, p in rows(queue_path)]
    assert sorted(n for n in numbers if n < 1000) == list(range(300))  # parent's, once each
    assert sorted(n for n in numbers if n >= 1000) == list(range(1000, 1100))  # child's
    assert assert_contiguous(queue_path) == {A: 350, B: 50}


def test_writer_and_shipper_instances_interleave_on_a_bounded_queue(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    """The client's shape: the writer appends through one DurableQueue, a shipper thread
    reads and acks through another, on a queue small enough to evict. Every number ends
    up acked or dropped, none twice on either side, and nothing is deleted twice.

    An event the shipper has read may be evicted (drop-oldest) before its ack: it is then
    both sent and announced as dropped. The collector's ledger resolves that overlap
    ("received beats rejected beats dropped"), so it is allowed here, but counted.
    """
    limit = 300 * (PAYLOAD + 48)
    writer_queue = make_queue(max_queue_bytes=limit)
    shipper_queue = make_queue(max_queue_bytes=limit)
    writer = make_writer(writer_queue, commit_interval=0.001)
    writer.start()
    done = threading.Event()
    sent: list[tuple[str, int]] = []
    deleted = [0]

    def ship() -> None:
        while not done.is_set() or shipper_queue.depth().events:
            batch = shipper_queue.read_batch(max_events=97)
            if batch:
                sent.extend((e.event_type, e.seq) for e in batch)
                deleted[0] += shipper_queue.ack(batch[0].id, batch[-1].id)

    shipper = threading.Thread(target=ship)
    shipper.start()
    for n in range(20_000):
        writer.submit(ev(A if n % 5 else B, n))
    assert writer.stop(timeout=20)
    done.set()
    shipper.join(30)
    assert not shipper.is_alive()
    dropped = [(t, s) for t, f, last, _, _ in drops(queue_path) for s in range(f, last + 1)]
    assert dropped, "the queue was meant to overflow"
    assert len(set(sent)) == len(sent) and len(set(dropped)) == len(dropped)
    everything = {(A, s) for s in range(1, 16_001)} | {(B, s) for s in range(1, 4_001)}
    assert set(sent) | set(dropped) == everything
    assert deleted[0] + len(dropped) == 20_000  # each row left the table exactly once
    assert writer.counters.dropped.get("queue_full", 0) == len(dropped)
    depth = writer_queue.depth()
    assert (depth.events, depth.bytes) == (0, 0)


def test_a_poison_event_neither_kills_the_writer_nor_loses_its_batch(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue(), commit_interval=0.001)
    writer.start()
    writer.submit(ev(A, 1))
    with contextlib.suppress(ValueError):  # refusing it at submit() is one good answer
        writer.submit(PendingEvent(A, FP, 2**64, b"poison"))
    last = writer.submit(ev(A, 3))
    writer.commit_through(last, timeout=5)
    assert writer.stop(timeout=5)
    assert [number(p) for _, _, p in rows(queue_path)] == [1, 3]
