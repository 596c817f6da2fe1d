"""The writer thread's loop, run in the test's thread: the pause after a failed commit
(growing, capped, reset by a success), the file check's cadence, and the thread itself.

A real queue file; a second connection holding SQLite's write lock (``Blocker``) makes
commits fail. The writer module's ``time`` is a fake clock and its events record each
wait instead of sleeping, so every pause is compared as a number."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from queue_helpers import TS, A, MakeQueue
from sdk_helpers import ModuleClock
from support import stored_events, wait_for
from writer_helpers import FP, Blocker, MakeWriter

from spotify_events import writer as writer_module
from spotify_events.queue import PendingEvent
from spotify_events.writer import FILE_CHECK_INTERVAL, REENTERED_POLL, QueueWriter


class Waits(threading.Event):
    """Records each wait's timeout, moves the clock on by it, and answers ``woken``;
    ``then(n)`` runs after the n-th wait."""

    def __init__(
        self, clock: ModuleClock, woken: bool = True, then: Callable[[int], None] | None = None
    ) -> None:
        super().__init__()
        self.clock, self.woken, self.then = clock, woken, then
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        if timeout is not None:
            self.clock.now += timeout
        if self.then is not None:
            self.then(len(self.timeouts))
        return self.woken


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ModuleClock:
    c = ModuleClock()
    monkeypatch.setattr(writer_module, "time", c)
    return c


def ev() -> PendingEvent:
    return PendingEvent(A, FP, TS, b"x" * 20)


def rows(path: Path) -> int:
    return len(stored_events(path))


def test_the_pause_after_a_failed_commit_doubles_up_to_two_seconds_and_resets_on_success(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    clock: ModuleClock,
    queue_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module.backoff, "full_jitter", lambda delay: delay)
    writer: QueueWriter = make_writer(make_queue(busy_timeout=0.001), commit_interval=0.5)
    lock = blocker().hold()
    writer.submit(ev())
    failures = 10

    def then(n: int) -> None:
        # _hurry's waits: commit_interval before each commit, the pause after a failed one
        if n == 2 * failures:
            lock.release()  # the 11th commit succeeds
        if n == 2 * failures + 2:
            writer.submit(ev())  # one more event, whose commits fail 10 times again
            lock.hold()
        if n == 4 * failures + 1:
            writer._stopping = True

    writer._wake = Waits(clock)
    writer._hurry = Waits(clock, woken=False, then=then)
    writer._run()
    growing = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0]
    episode = [x for pause in growing for x in (0.5, pause)]
    # after the success the pauses start over from 10 ms and grow the same way
    assert writer._hurry.timeouts == pytest.approx([*episode, 0.5, *episode])
    assert writer.counters.write_errors == 2 * failures + 1  # and the last try, at stop
    assert writer._wake.timeouts[0] == REENTERED_POLL
    lock.release()
    assert rows(queue_path) == 1


def test_the_file_check_runs_every_file_check_interval_and_not_in_between(
    make_queue: MakeQueue, make_writer: MakeWriter, clock: ModuleClock
) -> None:
    writer: QueueWriter = make_writer(make_queue())
    checks: list[float] = []
    writer.file_check = lambda: checks.append(clock.now)
    start = clock.now
    steps = 0

    def then(n: int) -> None:
        nonlocal steps
        steps = n
        if n == 9:
            writer._stopping = True
            writer._wake.woken = True

    # every poll moves the clock by 0.5 s (an idle writer: nothing woke it)
    writer._wake = Waits(clock, woken=False, then=then)
    writer._wake.wait = _with_step(writer._wake, 0.5)  # type: ignore[method-assign]
    writer._hurry = Waits(clock, woken=False)
    writer._run()
    # the clock passed 0.5, 1.0, ..., 4.5: checks at exactly 2.0 and 4.0 after the start
    assert checks == [start + FILE_CHECK_INTERVAL, start + 2 * FILE_CHECK_INTERVAL]


def _with_step(event: Waits, step: float) -> Callable[[float | None], bool]:
    def wait(timeout: float | None = None) -> bool:
        event.timeouts.append(timeout)
        event.clock.now += step
        if event.then is not None:
            event.then(len(event.timeouts))
        return event.woken

    return wait


def test_without_a_file_check_the_idle_loop_just_polls(
    make_queue: MakeQueue, make_writer: MakeWriter, clock: ModuleClock
) -> None:
    writer: QueueWriter = make_writer(make_queue())
    assert writer.file_check is None

    def then(n: int) -> None:
        if n == 5:
            writer._stopping = True
            writer._wake.woken = True

    writer._wake = Waits(clock, woken=False, then=then)
    writer._hurry = Waits(clock, woken=False)
    writer._run()  # no file check to run, however much time passes
    assert writer._wake.timeouts == [REENTERED_POLL] * 5
    assert writer._hurry.timeouts == []  # stopping: no commit_interval waited
    assert writer.counters.last_error is None


def test_a_file_check_that_recovers_is_reported_again_when_it_fails_again(
    make_queue: MakeQueue, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    writer: QueueWriter = make_writer(make_queue())
    outcomes = iter([OSError("gone"), None, OSError("gone again")])

    def file_check() -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    writer.file_check = file_check
    with caplog.at_level("ERROR", logger="spotify_events.writer"):
        for _ in range(3):
            writer._run_file_check()
    assert [r.getMessage() for r in caplog.records] == [
        "spotify-events: checking the queue file failed: gone",
        "spotify-events: checking the queue file failed: gone again",
    ]
    assert writer._file_check_failing is True
    assert writer.counters.last_error == "queue file check failed: gone again"


def test_the_writer_thread_is_a_named_daemon(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    writer: QueueWriter = make_writer(make_queue())
    writer.start()
    thread = writer._thread
    assert thread is not None
    assert thread.name == "spotify-events-writer"
    assert thread.daemon
    writer.start()
    assert writer._thread is thread


def test_after_a_fork_the_childs_writer_starts_with_an_empty_buffer_and_fresh_counts(
    make_queue: MakeQueue, make_writer: MakeWriter
) -> None:
    """The fork hook, called directly (a real fork runs it in test_client_lifecycle.py)."""
    writer: QueueWriter = make_writer(make_queue())
    writer.submit(ev())
    assert writer.counters.logged == 1
    writer.after_fork_in_child()
    assert writer.counters.logged == 0
    assert writer.buffered == (0, 0)
    assert writer._thread is None
    assert writer.submit(ev()) == 1  # and it buffers again


def test_a_writer_made_without_settings_takes_the_client_defaults(
    make_queue: MakeQueue,
) -> None:
    from spotify_events.config import ClientConfig

    defaults = ClientConfig().writer_settings()
    writer = QueueWriter(make_queue())
    assert writer.settings == defaults
    assert (writer.commit_interval, writer.max_buffer_bytes, writer.block_timeout) == (
        defaults.commit_interval,
        defaults.max_buffer_bytes,
        defaults.block_timeout,
    )
    assert writer.group_events == defaults.group_events


def test_a_commit_waited_for_with_a_timeout_keeps_to_it_while_another_process_writes(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``flush(timeout)`` and the ``commit`` level wait at most their own time for another
    process's write lock, not the queue's busy timeout (an hour here). The event stays in
    memory for the writer's next commit, and nothing is reported as a write failure."""
    writer: QueueWriter = make_writer(make_queue(busy_timeout=3600), commit_interval=3600)
    lock = blocker().hold()
    try:
        ticket = writer.submit(ev())
        result: list[bool] = []
        waiting = threading.Thread(target=lambda: result.append(writer.commit_through(ticket, 0.2)))
        waiting.start()
        waiting.join(30)  # far more than the 0.2 s it may take, far less than the busy timeout
        assert result == [False]
        assert writer.buffered[0] == 1
        assert writer.counters.write_errors == 0
    finally:
        lock.release()
    assert writer.commit_through(ticket, 30)
    assert "cannot write" not in caplog.text


def test_close_does_not_wait_for_a_writer_thread_stuck_in_a_commit(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process holds the write lock while the writer thread commits: close()
    should give up after its time (False, the events reported lost) instead of waiting
    for the thread's commit to wait out the queue's busy timeout (5 s here)."""
    monkeypatch.setattr(writer_module, "FINAL_COMMIT_SECONDS", 0.2)
    writer: QueueWriter = make_writer(make_queue(busy_timeout=5), commit_interval=0.001)
    lock = blocker().hold()
    try:
        writer.start()
        writer.submit(ev())
        assert wait_for(lambda: writer._commit_owner != 0)  # the thread is in its commit
        result: list[bool] = []
        closing = threading.Thread(target=lambda: result.append(writer.stop(timeout=0.1)))
        closing.start()
        closing.join(3)  # far more than the 0.2 s close() may take, less than the 5 s wait
        assert result == [False]
    finally:
        lock.release()


# -- close(): the time its final commit gets, and what it says ----------------------------


@pytest.mark.parametrize(("timeout", "busy"), [(5.0, 5.0), (0.0, 2.0)])
def test_the_final_commit_at_close_gets_the_time_left_and_at_least_final_commit_seconds(
    make_queue: MakeQueue, make_writer: MakeWriter, clock: ModuleClock, timeout: float, busy: float
) -> None:
    queue = make_queue(busy_timeout=3600)
    writer: QueueWriter = make_writer(queue)
    writer.submit(ev())
    assert writer.stop(timeout=timeout)
    assert queue.busy_timeout == busy  # SQLite's busy wait cut to the time close() has


def test_when_close_has_run_out_of_time_its_final_commit_still_gets_a_tenth_of_a_second(
    make_queue: MakeQueue, make_writer: MakeWriter, clock: ModuleClock, queue_path: Path
) -> None:
    queue = make_queue(busy_timeout=3600)
    writer: QueueWriter = make_writer(queue)
    writer.submit(ev())
    start = clock.now
    readings = iter([start, start + 10.0])  # the deadline is taken, then 10 s go by
    clock.monotonic = lambda: next(readings, start + 10.0)  # type: ignore[method-assign]
    assert writer.stop(timeout=1.0)
    assert queue.busy_timeout == 0.1
    assert rows(queue_path) == 1


def test_a_clean_close_reports_nothing(
    make_queue: MakeQueue, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    writer: QueueWriter = make_writer(make_queue())
    writer.submit(ev())
    with caplog.at_level("ERROR", logger="spotify_events.writer"):
        assert writer.stop(timeout=1)
    assert caplog.records == []


def test_a_close_that_cannot_commit_says_what_went_wrong(
    make_queue: MakeQueue,
    make_writer: MakeWriter,
    blocker: Callable[[], Blocker],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module, "FINAL_COMMIT_SECONDS", 0.2)
    writer: QueueWriter = make_writer(make_queue(busy_timeout=3600))
    writer.submit(ev())
    with blocker(), caplog.at_level("ERROR", logger="spotify_events.writer"):
        assert not writer.stop(timeout=0)
    (message,) = [r.getMessage() for r in caplog.records if "still in memory" in r.getMessage()]
    # the writer thread's error, or, when close's own wait ended first, the cause in words
    assert "database is locked" in message or "another process holding its write lock" in message
    assert message.endswith("; they are lost")
