"""QueueWriter at its edges: the 64-bit timestamp limits, the exact buffer bound, the
wait for space and its end at close, the re-entrant side list (without signals: the
test thread holds the buffer lock itself), commit_through's shortcuts and timeouts,
drop accounting across failed commits, the file check, and close's busy-wait cut.

Each test drives a real QueueWriter over a real queue file. A call that would hang if
the writer regressed runs in a :class:`Call` thread and is waited for with a timeout,
so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from queue_helpers import TS, A, MakeQueue
from support import stored_events, wait_for
from writer_helpers import FP, PAYLOAD, SIZE, Blocker, MakeWriter, drops

from spotify_events import writer as writer_module
from spotify_events.errors import ClientClosedError
from spotify_events.queue import (
    DROP_BUFFER_FULL,
    DROP_REENTERED,
    DROP_WRITE_FAILED,
    PendingEvent,
)
from spotify_events.settings import EVENT_MEMORY_OVERHEAD

HOUR = 3600.0
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def ev(n: int = 0, payload: int = PAYLOAD, ts: int = TS) -> PendingEvent:
    return PendingEvent(A, FP, ts, f"{n:08d}".encode().ljust(payload, b"."))


def numbers(path: Path) -> list[int]:
    return [int(e.payload[:8]) for e in stored_events(path)]


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


class Call:
    """Runs ``fn`` in a daemon thread: a call that should return at once but might hang."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def done(self, timeout: float = 10.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


@pytest.fixture
def long_reentry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that fails to recognise its own buffer lock would now wait 30 s for it
    (instead of 0.25 s) before taking the side list: long enough for a test to see."""
    monkeypatch.setattr(writer_module, "REENTRY_WAIT", 30.0)


# -- the buffer's bounds -----------------------------------------------------------------


def test_timestamps_at_the_64_bit_limits_are_buffered_and_one_beyond_is_refused(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue())
    assert writer.submit(ev(0, ts=INT64_MAX)) == 1
    assert writer.submit(ev(1, ts=INT64_MIN)) == 2
    for ts in (INT64_MAX + 1, INT64_MIN - 1):
        with pytest.raises(ValueError) as refused:
            writer.submit(ev(2, ts=ts))
        assert str(refused.value) == f"{A}: timestamp {ts} does not fit a 64-bit integer"
    assert writer.counters.logged == 2
    assert writer.stop(timeout=10)
    stored = [(e.timestamp,) for e in stored_events(queue_path)]
    assert stored == [(INT64_MAX,), (INT64_MIN,)]


def test_the_buffer_holds_exactly_max_buffer_bytes(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    writer = make_writer(make_queue(), max_buffer_bytes=3 * SIZE, block_timeout=0)
    assert [writer.submit(ev(n)) for n in range(3)] == [1, 2, 3]
    assert writer.buffered == (3, 3 * SIZE)  # payload plus the per-event overhead
    assert writer.submit(ev(3)) == 0
    assert writer.counters.dropped == {DROP_BUFFER_FULL: 1}
    assert writer.commit_through(3, timeout=10)
    assert writer.buffered == (0, 0)
    whole = ev(4, payload=3 * SIZE - EVENT_MEMORY_OVERHEAD)  # as large as the whole buffer
    assert writer.submit(whole) == 4


def test_an_event_larger_than_the_buffer_is_dropped_and_its_drop_record_committed_unprompted(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(
        make_queue(), commit_interval=0.001, max_buffer_bytes=SIZE, block_timeout=0
    )
    writer.start()
    assert writer.submit(ev(0, payload=PAYLOAD + 1)) == 0
    # nothing else is logged: the drop alone must wake the writer
    assert wait_for(lambda: drops(queue_path) == [(A, 1, 1, 1, DROP_BUFFER_FULL)])
    assert writer.counters.dropped == {DROP_BUFFER_FULL: 1}  # counted once, not again at commit
    assert writer.counters.logged == 1


# -- waiting for space --------------------------------------------------------------------


def test_a_full_buffer_hurries_the_writer_instead_of_waiting_out_commit_interval(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(
        make_queue(), commit_interval=HOUR, max_buffer_bytes=2 * SIZE, block_timeout=60
    )
    writer.start()
    assert [writer.submit(ev(n)) for n in range(2)] == [1, 2]
    third = Call(lambda: writer.submit(ev(2)))
    assert third.done(), "the caller waited for the hour-long commit interval"
    assert third.result == 3
    assert numbers(queue_path) == [0, 1]
    assert writer.counters.dropped == {}


def test_an_event_as_large_as_the_buffer_gets_in_once_the_buffer_drains(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(
        make_queue(), commit_interval=HOUR, max_buffer_bytes=2 * SIZE, block_timeout=60
    )
    writer.start()
    whole = 2 * SIZE - EVENT_MEMORY_OVERHEAD
    assert writer.submit(ev(0, payload=whole)) == 1
    second = Call(lambda: writer.submit(ev(1, payload=whole)))
    assert second.done()
    assert second.result == 2
    assert writer.counters.dropped == {}


def test_every_caller_waiting_for_space_gets_in_after_the_commit(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
) -> None:
    writer = make_writer(
        make_queue(busy_timeout=60), commit_interval=0.001, max_buffer_bytes=SIZE, block_timeout=60
    )
    writer.start()
    lock = blocker().hold()
    assert writer.submit(ev(0)) == 1
    assert wait_for(lambda: writer.buffered[0] == 0)  # in flight, waiting for the lock
    callers = [Call(lambda n=n: writer.submit(ev(n))) for n in (1, 2)]
    assert wait_for(lambda: writer._space_waiters == 2)
    lock.release()
    assert all(c.done() for c in callers)
    assert sorted(c.result for c in callers) == [2, 3]
    assert writer._space_waiters == 0
    assert writer.commit_through(3, timeout=10)
    assert sorted(numbers(queue_path)) == [0, 1, 2]


def test_close_ends_a_wait_for_space_with_a_counted_drop(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
) -> None:
    writer = make_writer(
        make_queue(busy_timeout=60), commit_interval=0.001, max_buffer_bytes=SIZE, block_timeout=60
    )
    writer.start()
    lock = blocker().hold()
    assert writer.submit(ev(0)) == 1
    assert wait_for(lambda: writer.buffered[0] == 0)
    waiting = Call(lambda: writer.submit(ev(1)))
    assert wait_for(lambda: writer._space_waiters == 1)
    closing = Call(lambda: writer.stop(timeout=30))
    try:
        # close() must not leave a caller waiting, nor let it into the buffer after the
        # final commit: it is turned away and counted
        assert waiting.done(), "close() left a caller waiting for space"
        assert waiting.result == 0
        assert writer.counters.dropped == {DROP_BUFFER_FULL: 1}
    finally:
        lock.release()
    assert closing.done(30)
    assert closing.result is True
    assert numbers(queue_path) == [0]
    assert drops(queue_path) == [(A, 2, 2, 1, DROP_BUFFER_FULL)]


# -- the re-entrant side list ---------------------------------------------------------------


@pytest.mark.usefixtures("long_reentry_wait")
def test_a_log_re_entering_the_thread_that_holds_the_buffer_takes_the_side_list(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    queue_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_writer(make_queue(), max_buffer_bytes=2 * SIZE)

    def reentered(first: int, count: int) -> tuple[list[int], tuple[int, int]]:
        with writer._holding_buffer:  # as a signal handler would find it
            tickets = [writer.submit(ev(n)) for n in range(first, first + count)]
            return tickets, writer.buffered

    call = Call(lambda: reentered(0, 4))
    assert call.done(), "a re-entered log() waited for the lock its own thread holds"
    assert call.result == ([0, 0, 0, 0], (2, 2 * SIZE))  # two fit the side list, two do not
    with caplog.at_level(logging.WARNING, logger="spotify_events.writer"):
        assert writer.commit_through(writer.last_ticket, timeout=10)  # the side list is due
    assert numbers(queue_path) == [0, 1]
    assert drops(queue_path) == [(A, 1, 2, 2, DROP_REENTERED)]  # numbered before the events
    assert messages(caplog, "re-entrantly") == [
        "spotify-events: 2 event(s) logged re-entrantly (signal handler, __del__, logging "
        "handler) did not fit the side buffer; dropped (counted and reported as "
        "reentrant_buffer_full)"
    ]
    counters = writer.counters
    assert (counters.logged, counters.reentered, counters.committed) == (4, 4, 2)
    assert counters.dropped == {DROP_REENTERED: 2}
    assert writer.buffered == (0, 0)
    assert writer.submit(ev(10)) == 3  # the side list's events took tickets 1 and 2
    # its bytes were given back: two fit again
    again = Call(lambda: reentered(20, 3))
    assert again.done()
    assert again.result == ([0, 0, 0], (3, 3 * SIZE))
    assert writer.commit_through(writer.last_ticket, timeout=10)
    assert numbers(queue_path) == [0, 1, 10, 20, 21]


@pytest.mark.usefixtures("long_reentry_wait")
def test_side_list_events_reach_the_queue_with_nothing_else_logged(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue(), commit_interval=0.001, max_buffer_bytes=2 * SIZE)
    writer.start()

    def reentered() -> list[int]:
        with writer._holding_buffer:
            return [writer.submit(ev(0)), writer.submit(ev(1, payload=2 * SIZE))]

    call = Call(reentered)
    assert call.done()
    assert call.result == [0, 0]
    # a re-entered log() sets no Event: the writer's poll finds the side list
    assert wait_for(lambda: numbers(queue_path) == [0] and len(drops(queue_path)) == 1)
    assert drops(queue_path) == [(A, 1, 1, 1, DROP_REENTERED)]


@pytest.mark.usefixtures("long_reentry_wait")
def test_side_list_events_in_flight_count_against_the_buffer_bound(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module, "REENTERED_POLL", 0.001)
    writer = make_writer(
        make_queue(busy_timeout=60),
        commit_interval=0.001,
        max_buffer_bytes=2 * SIZE,
        block_timeout=0,
    )
    writer.start()
    lock = blocker().hold()
    try:

        def reentered() -> list[int]:
            with writer._holding_buffer:
                return [writer.submit(ev(n)) for n in range(2)]

        call = Call(reentered)
        assert call.done()
        assert call.result == [0, 0]
        # the writer took both into its commit, which waits for the lock
        assert wait_for(lambda: writer.buffered[0] == 0)
        assert writer.buffered == (0, 2 * SIZE)  # in flight, still counted
        assert writer.submit(ev(2)) == 0  # so the buffer is full
    finally:
        lock.release()
    assert writer.commit_through(writer.last_ticket, timeout=10)
    assert writer.buffered == (0, 0)
    assert numbers(queue_path) == [0, 1]


@pytest.mark.usefixtures("long_reentry_wait")
def test_a_side_list_drop_alone_is_reported(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue(), commit_interval=0.001, max_buffer_bytes=SIZE)
    writer.start()

    def reentered() -> int:
        with writer._holding_buffer:
            return writer.submit(ev(0, payload=2 * SIZE))

    call = Call(reentered)
    assert call.done()
    assert call.result == 0
    assert wait_for(lambda: drops(queue_path) == [(A, 1, 1, 1, DROP_REENTERED)])


@pytest.mark.usefixtures("long_reentry_wait")
def test_a_log_after_close_began_is_refused_re_entered_or_not(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    writer = make_writer(make_queue())
    assert writer.stop(timeout=5)

    def reentered() -> int:
        with writer._holding_buffer:
            return writer.submit(ev(0))

    call = Call(reentered)
    assert call.done()
    assert isinstance(call.error, ClientClosedError)
    assert str(call.error) == "the client is closing; the event was not logged"
    with pytest.raises(
        ClientClosedError, match=r"^the client is closing; the event was not logged$"
    ):
        writer.submit(ev(1))  # and the same outside a re-entered call
    assert writer.buffered == (0, 0)
    assert writer.counters.logged == 0


@pytest.mark.usefixtures("long_reentry_wait")
def test_a_log_inside_log_takes_the_side_list(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    """The signal-handler case of tests/sdk/test_reentrant_log.py in this process: the
    buffer's wake-up call, made with the lock held, logs again."""
    writer = make_writer(make_queue())
    inner: list[int] = []

    class LoggingEvent(threading.Event):
        def set(self) -> None:
            if not inner:
                inner.append(writer.submit(ev(1)))
            super().set()

    writer._wake = LoggingEvent()
    call = Call(lambda: writer.submit(ev(0)))
    assert call.done(), "log() inside log() waited for its own lock"
    assert (call.result, inner) == (1, [0])
    assert writer.commit_through(writer.last_ticket, timeout=10)
    assert numbers(queue_path) == [0, 1]
    assert writer.counters.reentered == 1


@pytest.mark.usefixtures("long_reentry_wait")
def test_a_log_inside_log_after_waiting_for_space_takes_the_side_list(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    """After waiting for space the caller holds the lock again, and is still known as
    its holder: a log() re-entering it there does not wait for its own lock."""
    inner: list[int] = []
    armed = threading.Event()

    class LoggingEvent(threading.Event):
        def set(self) -> None:
            if armed.is_set() and not inner:
                inner.append(writer.submit(ev(2)))
            super().set()

    writer = make_writer(
        make_queue(), commit_interval=HOUR, max_buffer_bytes=SIZE, block_timeout=60
    )
    writer._wake = LoggingEvent()
    writer.start()
    assert writer.submit(ev(0)) == 1
    armed.set()
    # waits for space; once the writer has committed event 0, event 1 is the first
    # in the buffer and wakes the writer, which logs event 2 from inside log()
    call = Call(lambda: writer.submit(ev(1)))
    assert call.done(), "log() inside log() waited for its own lock"
    assert (call.result, inner) == (2, [0])
    assert writer.commit_through(writer.last_ticket, timeout=10)
    assert numbers(queue_path) == [0, 1, 2]


def test_a_lock_held_past_the_reentry_wait_sends_the_event_to_the_side_list(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    queue_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock's holder may be this very thread, interrupted before it noted itself
    as the owner: after REENTRY_WAIT the call stops waiting and takes the side list."""
    monkeypatch.setattr(writer_module, "REENTRY_WAIT", 0.01)
    writer = make_writer(make_queue())
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with writer._holding_buffer:
            held.set()
            release.wait(30)

    holder = Call(hold)
    assert held.wait(10)
    try:
        call = Call(lambda: writer.submit(ev(0)))
        assert call.done()
        assert call.result == 0
        assert writer.buffered == (1, SIZE)
    finally:
        release.set()
    assert holder.done()
    assert writer.commit_through(writer.last_ticket, timeout=10)
    assert numbers(queue_path) == [0]
    assert writer.counters.reentered == 1


# -- commit_through ---------------------------------------------------------------------------


def test_commit_through_a_committed_ticket_still_commits_a_pending_drop(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    writer = make_writer(make_queue(), max_buffer_bytes=SIZE, block_timeout=0)
    ticket = writer.submit(ev(0))
    assert writer.commit_through(ticket, timeout=10)
    assert writer.submit(ev(1, payload=2 * SIZE)) == 0
    assert writer.commit_through(ticket, timeout=10)  # flush(): the drop must be reported
    assert drops(queue_path) == [(A, 2, 2, 1, DROP_BUFFER_FULL)]
    assert (writer.counters.commits, writer.counters.committed) == (2, 1)


def test_commit_through_a_ticket_never_issued_is_refused_at_once(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    """No commit can ever reach such a ticket: without the check, a caller with no
    timeout committed an empty buffer in a loop forever."""
    writer = make_writer(make_queue())
    ticket = writer.submit(ev(0))
    with pytest.raises(ValueError, match=f"ticket {ticket + 1} was never issued"):
        writer.commit_through(ticket + 1)
    assert writer.commit_through(ticket, timeout=10)


def test_a_commit_level_log_re_entered_from_its_own_commit_returns_at_once(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    """A logging handler (or signal handler) logging at the ``commit`` level while this
    thread commits: it must not commit inside the commit; the next commit takes it."""
    inner: list[tuple[int, bool]] = []

    class LoggingOnCommit(threading.Event):
        def set(self) -> None:
            if not inner:
                ticket = writer.submit(ev(1))
                inner.append((ticket, writer.commit_through(ticket, timeout=10)))
            super().set()

    writer = make_writer(make_queue(), on_commit=LoggingOnCommit())
    call = Call(lambda: writer.commit_through(writer.submit(ev(0)), timeout=10))
    assert call.done()
    assert call.result is True
    assert inner == [(2, False)]
    assert writer.buffered == (1, SIZE)
    assert numbers(queue_path) == [0]
    assert writer.commit_through(2, timeout=10)
    assert numbers(queue_path) == [0, 1]


def test_commit_through_gives_up_at_its_timeout_while_another_thread_commits(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
) -> None:
    writer = make_writer(make_queue(busy_timeout=60), commit_interval=0.001)
    writer.start()
    committed = writer.submit(ev(0))
    assert writer.commit_through(committed, timeout=10)
    lock = blocker().hold()
    ticket = writer.submit(ev(1))
    try:
        assert wait_for(lambda: writer.buffered[0] == 0)  # the writer thread is committing
        call = Call(lambda: writer.commit_through(ticket, timeout=0.2))
        assert call.done(), "commit_through outlived its timeout"
        assert call.result is False
        # an event committed earlier needs no commit lock: it is answered at once
        earlier = Call(lambda: writer.commit_through(committed, timeout=0.2))
        assert earlier.done()
        assert earlier.result is True
    finally:
        lock.release()
    assert writer.commit_through(ticket, timeout=10)


# -- failed commits --------------------------------------------------------------------------


def test_drops_during_failed_commits_are_committed_once_each_after_recovery(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_writer(
        make_queue(busy_timeout=0.02),
        commit_interval=0.001,
        max_buffer_bytes=2 * SIZE,
        block_timeout=0,
    )
    writer.start()
    lock = blocker().hold()
    with caplog.at_level(logging.WARNING, logger="spotify_events.writer"):
        try:
            assert [writer.submit(ev(n)) for n in range(2)] == [1, 2]
            # failing from here on (set after the error count and the log line)
            assert wait_for(lambda: writer._failing)
            assert [writer.submit(ev(n)) for n in range(2, 5)] == [0, 0, 0]
            errors, failure = writer.counters.write_errors, writer.counters.last_error
            # the drop counts go back into the buffer with each failed commit
            assert wait_for(lambda: writer.counters.write_errors >= errors + 2)
        finally:
            lock.release()
        assert writer.commit_through(2, timeout=10)
        assert writer.submit(ev(5, payload=3 * SIZE)) == 0  # writes work again: buffer full
        assert writer.commit_through(2, timeout=10)
    assert numbers(queue_path) == [0, 1]
    assert drops(queue_path) == [(A, 1, 3, 3, DROP_WRITE_FAILED), (A, 6, 6, 1, DROP_BUFFER_FULL)]
    assert writer.counters.dropped == {DROP_WRITE_FAILED: 3, DROP_BUFFER_FULL: 1}
    assert messages(caplog, "cannot write to its queue") == [  # once per episode
        f"spotify-events cannot write to its queue, keeping events in memory: {failure}"
    ]
    assert messages(caplog, "queue writes recovered") == ["spotify-events queue writes recovered"]
    full = (
        f"spotify-events buffer full ({2 * SIZE} bytes): dropping {A} events (counted and "
        "reported); the queue writer is not keeping up"
    )
    # one per episode of drops, the first naming the write error behind it
    assert messages(caplog, "buffer full") == [f"{full} ({failure})", full]
    assert messages(caplog, "re-entrantly") == []


def test_a_failed_commit_puts_its_events_and_drop_counts_back_before_what_came_meanwhile(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    queue_path: Path,
) -> None:
    writer = make_writer(make_queue(busy_timeout=2), max_buffer_bytes=2 * SIZE, block_timeout=0)
    assert writer.submit(ev(0)) == 1
    assert writer.submit(ev(10, payload=3 * SIZE)) == 0  # a drop count waiting to be committed
    lock = blocker().hold()
    try:
        committing = Call(lambda: writer.commit_through(1, timeout=30))
        assert wait_for(lambda: writer.buffered[0] == 0 and not writer._overflow)  # taken
        # while that commit waits for the lock (and fails): one more event, one more drop
        assert writer.submit(ev(1)) == 2
        assert writer.submit(ev(11, payload=3 * SIZE)) == 0
        assert committing.done(30)
        assert committing.result is False
        assert writer.counters.write_errors == 1  # one failed commit, counted once
    finally:
        lock.release()
    assert writer.commit_through(2, timeout=10)
    assert numbers(queue_path) == [0, 1]  # the failed commit's event first, none lost
    assert sum(count for *_, count, _ in drops(queue_path)) == 2


# -- the writer thread ------------------------------------------------------------------------


def test_after_a_commit_the_writer_waits_for_the_next_event(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    idle = make_writer(make_queue(), group_events=3)
    idle.submit(ev(0))
    idle.submit(ev(1))
    assert not idle._hurry.is_set()  # a group not yet full waits for commit_interval
    idle.submit(ev(2))
    assert idle._hurry.is_set()

    writer = make_writer(make_queue(), commit_interval=HOUR, group_events=2)
    writer.start()
    assert writer._thread is not None and writer._thread.daemon  # never keeps a process alive
    writer.submit(ev(0))
    writer.submit(ev(1))  # a full group: committed without the hour's wait
    assert wait_for(lambda: writer.counters.committed == 2)
    # both wake-ups were consumed: the next lone event waits for its interval again
    assert not writer._wake.is_set()
    assert not writer._hurry.is_set()


def test_close_ends_the_writer_thread_even_with_an_hour_long_commit_interval(
    make_queue: MakeQueue, make_writer: MakeWriter, queue_path: Path
) -> None:
    waiting = threading.Event()

    class NotedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait(timeout)

    writer = make_writer(make_queue(), commit_interval=HOUR)
    writer._hurry = NotedEvent()
    writer.start()
    writer.submit(ev(0))
    assert waiting.wait(10)  # the writer thread waits out the commit interval
    assert writer.stop(timeout=5)
    assert writer._thread is not None
    assert not writer._thread.is_alive()
    assert numbers(queue_path) == [0]


def test_close_cuts_the_busy_wait_of_its_final_commit(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holding the write lock must not stretch close() to the queue's
    busy timeout (an hour here): the final commit gets FINAL_COMMIT_SECONDS."""
    writer = make_writer(make_queue(busy_timeout=HOUR))
    writer.submit(ev(0))
    lock = blocker().hold()
    try:
        with caplog.at_level(logging.ERROR, logger="spotify_events.writer"):
            closing = Call(lambda: writer.stop(timeout=0))
            assert closing.done(30), "close() waited for the queue's hour-long busy timeout"
        assert closing.result is False
        assert writer.buffered == (1, SIZE)
        [message] = messages(caplog, "still in memory at close")
        assert message.startswith(
            "spotify-events: 1 event(s) still in memory at close could not be committed ("
        )
    finally:
        lock.release()
    assert writer.stop(timeout=5)


def test_a_failing_file_check_is_reported_once_per_episode_and_the_writer_lives_on(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    queue_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(writer_module, "FILE_CHECK_INTERVAL", 0.001)
    monkeypatch.setattr(writer_module, "REENTERED_POLL", 0.001)
    outcomes = ["boom", "boom", "", "", "again"]  # "" passes
    calls = [0]

    def file_check() -> None:
        calls[0] += 1
        if calls[0] <= len(outcomes) and outcomes[calls[0] - 1]:
            raise RuntimeError(outcomes[calls[0] - 1])

    writer = make_writer(make_queue(), commit_interval=0.001)
    writer.file_check = file_check
    with caplog.at_level(logging.ERROR, logger="spotify_events.writer"):
        writer.start()
        assert wait_for(lambda: calls[0] > len(outcomes))
        assert writer.counters.last_error == "queue file check failed: again"
        writer.submit(ev(0))
        assert wait_for(lambda: writer.counters.committed == 1)  # the thread lived on
    assert messages(caplog, "checking the queue file failed") == [
        "spotify-events: checking the queue file failed: boom",
        "spotify-events: checking the queue file failed: again",
    ]
    assert numbers(queue_path) == [0]
