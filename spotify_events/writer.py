"""QueueWriter: the bounded in-memory buffer and its group commit into the queue.

``log()`` must cost microseconds, so the caller only encodes and appends to a
list here; a daemon thread commits what accumulated in one SQLite transaction
(group commit). The cadence follows the work: the first event of a group wakes
the thread, which commits once the group is ``commit_interval`` old or reaches
``COMMIT_GROUP_EVENTS``, whichever comes first, and sleeps while nothing is
buffered. At a few events per second that is one transaction per
``commit_interval`` at most; at high rates groups fill and commit at once. At the ``commit`` and ``fsync``
levels the caller instead waits for the commit that contains its event, and
becomes the committer itself when no commit is running (leader/follower group
commit: one thread alone pays one transaction per event with no thread
hand-off; many threads share transactions).

The buffer is bounded in bytes. When the writer falls behind, callers wait up
to ``block_timeout`` for space (backpressure), then drop the event; a drop is
counted per (type, reason) and later committed as a drop record that consumes
sequence numbers, so the collector reports it instead of seeing a gap.

``log()`` may be re-entered in one thread: a signal handler, a ``__del__`` run
by the garbage collector, or a logging handler that logs an event can run while
that very thread holds the buffer lock (or is inside a commit). Waiting for the
lock there would wait forever, so such a call appends to a lock-free side list
instead (a ``deque`` append is atomic), which the writer moves into the buffer
at its next commit. The side list is bounded too; what does not fit is dropped
and counted as ``reentrant_buffer_full``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import get_ident

import backoff

from .config import ClientConfig
from .errors import ClientClosedError, QueueBusyError, QueueError
from .queue import (
    DROP_BUFFER_FULL,
    DROP_REENTERED,
    DROP_WRITE_FAILED,
    DurableQueue,
    PendingRow,
)
from .settings import EVENT_MEMORY_OVERHEAD, WriterSettings

logger = logging.getLogger("spotify_events.writer")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: The least time close() gives the final commit of the buffer, whatever its timeout.
FINAL_COMMIT_SECONDS = 2.0
#: How long log() waits for a buffer lock that another thread seems to hold before
#: taking the side list: this thread may hold it itself, interrupted between taking
#: the lock and noting itself as its owner. Other threads hold it for microseconds.
REENTRY_WAIT = 0.25
#: The writer thread looks at the side list at least this often (a re-entered log()
#: may not set an Event: the interrupted code may be inside that Event's own lock).
REENTERED_POLL = 1.0
#: How often the writer thread runs ``file_check`` (is the queue file still ours?).
FILE_CHECK_INTERVAL = 2.0


@dataclass
class WriterCounters:
    """Counts kept by the writer; read them through ``EventClient.stats()``."""

    logged: int = 0
    committed: int = 0
    commits: int = 0
    write_errors: int = 0
    reentered: int = 0  # log() calls that re-entered this thread and took the side list
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


class QueueWriter:
    """Buffers encoded events in memory and group-commits them to a DurableQueue."""

    def __init__(
        self,
        queue: DurableQueue,
        settings: WriterSettings | None = None,
        *,
        on_commit: threading.Event | None = None,
    ) -> None:
        """``settings`` default to :class:`~spotify_events.config.ClientConfig`'s."""
        if settings is None:
            settings = ClientConfig().writer_settings()
        self.queue = queue
        self.settings = settings
        self.commit_interval = settings.commit_interval
        self.max_buffer_bytes = settings.max_buffer_bytes
        self.block_timeout = settings.block_timeout
        self.group_events = settings.group_events
        self.on_commit = on_commit
        #: Called from the writer thread every FILE_CHECK_INTERVAL seconds (the client
        #: puts a deleted or replaced queue file back there); never raises into the loop.
        self.file_check: Callable[[], None] | None = None
        self.counters = WriterCounters()
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._lock_owner = 0  # thread ident while a thread holds _lock, else 0
        self._space = threading.Condition(self._lock)
        self._space_waiters = 0  # callers in _wait_for_space: a commit notifies only them
        self._holding_buffer = _BufferLock(self)
        # Re-entrant: a signal handler can run right after this thread took the lock and
        # before it noted itself in _commit_owner; its log() then commits on its own.
        self._commit_lock = threading.RLock()
        self._commit_owner = 0  # thread ident while a thread commits, else 0
        self._reentered: deque[PendingRow] = deque()
        self._reentered_bytes = 0
        self._reentered_drops: deque[str] = deque()  # event types dropped from the side list
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._stopping = False
        self._pending: list[PendingRow] = []
        self._pending_bytes = 0
        self._overflow: dict[tuple[str, str], int] = {}
        self._ticket = 0
        self._committed_ticket = 0
        self._failing = False
        self._file_check_failing = False
        self._dropping = False
        self._thread: threading.Thread | None = None

    # -- caller side -------------------------------------------------------------
    def submit(self, event: PendingRow) -> int:
        """Buffer one encoded event; returns its ticket, or 0 when it was dropped.

        Raises ValueError for a timestamp SQLite cannot store, so one bad event
        can never fail the commit of the whole group it would travel with."""
        if not _INT64_MIN <= event[2] <= _INT64_MAX:
            raise ValueError(f"{event[0]}: timestamp {event[2]} does not fit a 64-bit integer")
        size = len(event[3]) + EVENT_MEMORY_OVERHEAD
        me = get_ident()
        lock = self._lock
        if not lock.acquire(False) and (
            self._lock_owner == me or not lock.acquire(timeout=REENTRY_WAIT)
        ):
            return self._submit_reentered(event, size)
        self._lock_owner = me
        try:
            if self._stopping:  # the final commit may already have run: refuse, loudly
                raise ClientClosedError("the client is closing; the event was not logged")
            self.counters.logged += 1
            if self._pending_bytes + size > self.max_buffer_bytes and not self._wait_for_space(
                size
            ):
                reason = DROP_WRITE_FAILED if self._failing else DROP_BUFFER_FULL
                key = (event[0], reason)
                self._overflow[key] = self._overflow.get(key, 0) + 1
                self.counters.dropped[reason] = self.counters.dropped.get(reason, 0) + 1
                first_drop, self._dropping = not self._dropping, True
                self._wake.set()  # the drop record must reach the queue even if nothing follows
            else:
                self._pending.append(event)
                self._pending_bytes += size
                self._ticket += 1
                n = len(self._pending)
                if n == 1 and not self._wake.is_set():  # a set Event costs a notify_all
                    self._wake.set()
                elif n == self.group_events:
                    self._hurry.set()
                return self._ticket
        finally:
            self._lock_owner = 0
            lock.release()
        if first_drop:  # once per episode, not once per event
            logger.warning(
                "spotify-events buffer full (%d bytes): dropping %s events (counted and reported); "
                "the queue writer is not keeping up%s",
                self.max_buffer_bytes,
                event[0],
                f" ({self.counters.last_error})" if self._failing else "",
            )
        return 0

    def _wait_for_space(self, size: int) -> bool:
        """Called with the lock held: wait for the writer to drain (backpressure)."""
        if self.block_timeout <= 0 or self._thread is None:
            return False
        self._hurry.set()
        deadline = time.monotonic() + self.block_timeout
        while self._pending_bytes + size > self.max_buffer_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                return False
            self._lock_owner = 0  # released while waiting
            self._space_waiters += 1
            try:
                self._space.wait(remaining)
            finally:
                self._space_waiters -= 1
            self._lock_owner = get_ident()
        return True

    def _submit_reentered(self, event: PendingRow, size: int) -> int:
        """Buffer an event from a log() that re-entered a thread holding the buffer lock.

        Takes no lock and sets no Event (the interrupted code may hold either);
        the writer picks the event up at its next commit, so it gets no ticket and
        a ``commit``-level caller does not wait for it."""
        if self._stopping:
            raise ClientClosedError("the client is closing; the event was not logged")
        if self._reentered_bytes + size > self.max_buffer_bytes:
            self._reentered_drops.append(event[0])  # counted and reported at the next commit
            return 0
        self._reentered_bytes += size
        self._reentered.append(event)
        return 0

    def _take_reentered(self) -> int:
        """Move side-list events into the buffer (caller holds ``_lock``); returns drops."""
        while self._reentered:
            event = self._reentered.popleft()
            size = len(event[3]) + EVENT_MEMORY_OVERHEAD
            self._reentered_bytes -= size
            self._pending.append(event)
            self._pending_bytes += size
            self._ticket += 1
            self.counters.logged += 1
            self.counters.reentered += 1
        dropped = 0
        while self._reentered_drops:
            key = (self._reentered_drops.popleft(), DROP_REENTERED)
            self._overflow[key] = self._overflow.get(key, 0) + 1
            self.counters.logged += 1
            self.counters.reentered += 1
            dropped += 1
        return dropped

    @property
    def _has_reentered(self) -> bool:
        return bool(self._reentered or self._reentered_drops)

    def commit_through(self, ticket: int, timeout: float | None = None) -> bool:
        """Return once the event with ``ticket`` is committed, committing it ourselves
        if no one else is (used by the ``commit``/``fsync`` levels and by flush).
        ``ticket`` is one :meth:`submit` returned (or :attr:`last_ticket`)."""
        if ticket <= self._committed_ticket and not self._overflow and not self._has_reentered:
            return True
        if ticket > self._ticket:  # no commit would ever reach it: we would commit in a loop
            raise ValueError(f"ticket {ticket} was never issued (the last is {self._ticket})")
        if self._commit_owner == get_ident():
            return False  # re-entered from inside our own commit: the writer commits it later
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True  # pending drop counts get one commit too: flush() must report them
        while first or ticket > self._committed_ticket:
            first = False
            if not self._commit_lock.acquire(False):  # a lone caller takes it at once
                wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._commit_lock.acquire(timeout=wait):
                    return False
            try:
                if self._commit_owner == get_ident():
                    return False  # re-entered mid-commit: the writer commits it later
                due = ticket > self._committed_ticket or self._overflow or self._has_reentered
                if due and not self._commit_as_owner(deadline):  # another process's lock too
                    return False
            finally:
                self._commit_lock.release()
            if ticket <= self._committed_ticket:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return ticket <= self._committed_ticket

    @property
    def last_ticket(self) -> int:
        return self._ticket

    @property
    def buffered(self) -> tuple[int, int]:
        """(events, bytes) waiting in memory."""
        return len(self._pending) + len(
            self._reentered
        ), self._pending_bytes + self._reentered_bytes

    # -- writer thread -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="spotify-events-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        delays = backoff.expo(base=2, factor=0.01, max_value=2.0)
        next(delays)  # the generator's first value is a priming None
        next_check = time.monotonic() + FILE_CHECK_INTERVAL
        while True:
            woken = self._wake.wait(REENTERED_POLL)
            if self.file_check is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + FILE_CHECK_INTERVAL
                self._run_file_check()
            if not woken and not self._has_reentered:
                continue
            if not self._stopping:
                self._hurry.wait(self.commit_interval)
            self._wake.clear()
            self._hurry.clear()
            with self._commit_lock:
                ok = self._commit_as_owner()
            if self._stopping:
                return
            if ok:
                delays = backoff.expo(base=2, factor=0.01, max_value=2.0)
                next(delays)
            else:
                self._wake.set()  # the events are still pending: come back after the pause
                self._hurry.wait(backoff.full_jitter(next(delays)))

    def _run_file_check(self) -> None:
        assert self.file_check is not None
        try:
            self.file_check()
        except Exception as exc:  # the writer thread must live on; commits report their own errors
            self.counters.last_error = f"queue file check failed: {exc}"
            if not self._file_check_failing:  # once per episode, not every few seconds
                logger.error("spotify-events: checking the queue file failed: %s", exc)
            self._file_check_failing = True
        else:
            self._file_check_failing = False

    def _commit_as_owner(self, deadline: float | None = None) -> bool:
        """:meth:`_commit_pending`, with this thread noted as the committer (the caller
        holds ``_commit_lock``), so a log() re-entering it does not wait for itself."""
        self._commit_owner = get_ident()
        try:
            return self._commit_pending(deadline)
        finally:
            self._commit_owner = 0

    def _commit_pending(self, deadline: float | None = None) -> bool:
        """Commit everything buffered (caller holds ``_commit_lock``); False on a write
        error, or when ``deadline`` (``time.monotonic()``) passed waiting for a lock."""
        with self._holding_buffer:
            reentered_drops = self._take_reentered() if self._has_reentered else 0
            events, self._pending = self._pending, []
            # In-flight events stay counted in _pending_bytes until their commit
            # succeeds: releasing the space before the commit let callers refill the
            # buffer during every failed attempt, and each put-back then grew memory by
            # another max_buffer_bytes (tests/sdk/test_writer.py, writes failing).
            inflight = self._pending_bytes
            overflow, self._overflow = self._overflow, {}
            upto = self._ticket
        if reentered_drops:
            logger.warning(
                "spotify-events: %d event(s) logged re-entrantly (signal handler, __del__, logging "
                "handler) did not fit the side buffer; dropped (counted and reported as %s)",
                reentered_drops,
                DROP_REENTERED,
            )
        if not events and not overflow:
            self._committed_ticket = upto
            return True
        try:
            result = self.queue.append(events, overflow, deadline)
        except BaseException as exc:  # even KeyboardInterrupt: the events are not ours to lose
            with self._holding_buffer:
                # put them back in front so order (and so sequence order) is kept;
                # their bytes were never released
                self._pending[:0] = events
                for key, n in overflow.items():
                    self._overflow[key] = self._overflow.get(key, 0) + n
            if not isinstance(exc, Exception):
                raise  # SystemExit from a signal handler, say: events are back in the buffer
            if isinstance(exc, QueueBusyError):
                return False  # a caller's deadline, not a failure: the writer thread commits them
            if not isinstance(exc, QueueError):
                logger.exception("spotify-events: unexpected error committing to the queue")
            self.counters.write_errors += 1
            self.counters.last_error = str(exc)
            if not self._failing:
                logger.error(
                    "spotify-events cannot write to its queue, keeping events in memory: %s", exc
                )
            self._failing = True
            return False
        if self._failing:
            logger.warning("spotify-events queue writes recovered")
            self._failing = False
        with self._holding_buffer:
            self._pending_bytes -= inflight
            if self._space_waiters:
                self._space.notify_all()
            self._dropping = False
            self.counters.committed += result.stored
            self.counters.commits += 1
            for reason, n in result.dropped.items():
                if reason != DROP_BUFFER_FULL and reason != DROP_WRITE_FAILED:
                    self.counters.dropped[reason] = self.counters.dropped.get(reason, 0) + n
        self._committed_ticket = upto
        # Setting a set Event still takes its lock and notifies. No wake-up is lost by
        # skipping it: the shipper clears it before it looks at the queue, after this commit.
        on_commit = self.on_commit
        if on_commit is not None and not on_commit.is_set():
            on_commit.set()
        return True

    def stop(self, timeout: float) -> bool:
        """Stop the thread and commit what is left; True when nothing stayed in memory.

        The final commit gets at least ``FINAL_COMMIT_SECONDS`` even when
        ``timeout`` is shorter (putting the buffer on local disk is what every
        durability level promises at close), and at most that much more than
        ``timeout``: SQLite's busy wait is cut to the time left, so another
        process holding the write lock cannot stretch interpreter exit."""
        self._stopping = True
        self._wake.set()
        self._hurry.set()
        with self._holding_buffer:
            self._space.notify_all()
        thread = self._thread
        deadline = time.monotonic() + max(timeout, FINAL_COMMIT_SECONDS)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        remaining = max(0.1, deadline - time.monotonic())
        self.queue.set_busy_timeout(remaining)
        ok = self.commit_through(self._ticket, remaining)
        left, _ = self.buffered
        if not ok or left or self._overflow:
            # The writer thread's own commit ends its wait when ours does: which of the two
            # notes its error first is a race, so without one the message names the cause.
            why = self.counters.last_error or (
                "a commit was still waiting for the queue: another process holding its "
                "write lock, or a slow disk"
            )
            logger.error(
                "spotify-events: %d event(s) still in memory at close could not be committed "
                "(%s); they are lost", left, why,
            )  # fmt: skip
        return ok and not left and not self._overflow

    def before_fork(self) -> None:
        """Nothing to quiesce: the writer's SQLite work goes through its queue, which holds."""

    def after_fork_in_parent(self) -> None:
        """The parent's writer carries on as it was."""

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's buffer (the parent commits it), its
        counters, and every lock a parent thread might have held at fork time."""
        self.counters = WriterCounters()
        self._init_state()


class _BufferLock:
    """``QueueWriter._lock`` with the holding thread noted in ``_lock_owner`` (see
    :meth:`QueueWriter.submit`). A class rather than a generator context manager: a
    ``commit``-level caller takes it twice per event, and the generator's frames
    cost as much as the rest of that bookkeeping."""

    __slots__ = ("_writer",)

    def __init__(self, writer: QueueWriter) -> None:
        self._writer = writer

    def __enter__(self) -> None:
        writer = self._writer
        writer._lock.acquire()
        writer._lock_owner = get_ident()

    def __exit__(self, *exc: object) -> None:
        writer = self._writer
        writer._lock_owner = 0
        writer._lock.release()
