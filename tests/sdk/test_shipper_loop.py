"""The shipper's loop without its thread: the shipping lease, linger, the idle heartbeat,
retries and their backoff, stop(), and what a batch carries on the wire.

A real queue file and ``MockTransport`` answering as the collector would; the shipper's
clock is a fake (``ModuleClock``, put in place of the module's ``time``) and its waits are
``Waits`` events that record each timeout and move the clock on by it instead of
sleeping, so every pause is checked as a number and nothing here waits for real."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import ModuleClock
from writer_helpers import Blocker

import spotify_events.shipper as shipper_module
from spotify_events.config import ClientConfig
from spotify_events.errors import QueueError
from spotify_events.queue import DROP_BUFFER_FULL, DurableQueue, PendingEvent, QueueDepth
from spotify_events.shipper import (
    LINGER_POLL,
    MAX_RETRY_AFTER,
    MIN_RETRY_DELAY,
    TRICKLE_POLL,
    Shipper,
    _Prefetcher,
)
from spotify_events.transport import MockTransport, SendResult
from spotify_events.wire import Envelope, decode_batch

A = "test.events.Alpha"
B = "test.events.Beta"
FP = b"\x11" * 8
FP2 = b"\x22" * 8
TS = 1_763_158_400_000
OTHER = "elsewhere:1:other-holder"  # a live holder on another host


class Waits(threading.Event):
    """An Event whose ``wait`` records its timeout and advances ``clock`` by it instead of
    sleeping; ``then`` runs after each wait (to set the event, change the queue, ...)."""

    def __init__(
        self, clock: ModuleClock, then: Callable[[int], None] | None = None, advance: bool = True
    ) -> None:
        super().__init__()
        self.clock = clock
        self.advance = advance
        self.timeouts: list[float | None] = []
        self.then = then

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        if timeout is not None and self.advance:
            self.clock.now += timeout
        if self.then is not None:
            self.then(len(self.timeouts))
        return self.is_set()


def ack(sent: int) -> SendResult:
    return SendResult(200, {"accepted": sent, "duplicates": 0, "rejected": []})


class Collector:
    """Answers each batch from ``answers`` (a list of callables taking the event count,
    used in order, the last one for ever), recording what was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.answers: list[Callable[[int], SendResult]] = [ack]

    def __call__(self, body: bytes, headers: Mapping[str, str]) -> SendResult:
        self.bodies.append(body)
        self.headers.append(dict(headers))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(len(decode_batch(body).envelopes))

    @property
    def sent(self) -> list[list[tuple[str, int]]]:
        return [[(e.event_type, e.seq) for e in decode_batch(b).envelopes] for b in self.bodies]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ModuleClock:
    c = ModuleClock()
    monkeypatch.setattr(shipper_module, "time", c)
    return c


@pytest.fixture
def collector() -> Collector:
    return Collector()


Make = Callable[..., tuple[Shipper, DurableQueue]]


@pytest.fixture
def make_shipper(
    make_queue: Callable[..., DurableQueue], collector: Collector, clock: ModuleClock
) -> Iterator[Make]:
    made: list[Shipper] = []

    def _make(**options: Any) -> tuple[Shipper, DurableQueue]:
        queue = make_queue()
        settings = replace(ClientConfig().shipper_settings(), **options)
        shipper = Shipper(queue, MockTransport(collector), settings)
        shipper._stop = Waits(clock)
        shipper._last_send = clock.now
        made.append(shipper)
        return shipper, queue

    yield _make
    for shipper in made:
        shipper._stop.set()
        shipper._prefetch.stop()


@pytest.fixture
def other_queue(make_queue: Callable[..., DurableQueue], queue_path: Path) -> DurableQueue:
    """A second connection to the same file: another process sharing the queue."""
    return make_queue(queue_path)


def ev(event_type: str = A, fingerprint: bytes = FP, payload: bytes = b"x" * 20) -> PendingEvent:
    return PendingEvent(event_type, fingerprint, TS, payload)


def no_jitter(monkeypatch: pytest.MonkeyPatch, factor: float = 1.0) -> None:
    """Full jitter picks uniformly in [0, delay]; pin it to ``factor * delay``."""
    monkeypatch.setattr(shipper_module.backoff, "full_jitter", lambda delay: delay * factor)


def answer(status: int | None, retry_after: float | None = None) -> Callable[[int], SendResult]:
    return lambda _n: SendResult(status, {"error": "scripted"}, retry_after=retry_after)


# -- the shipping lease -------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "pause"), [(6.0, 2.0), (30.0, 5.0)])
def test_a_shipper_without_the_lease_sends_nothing_and_checks_back_within_a_third_of_its_ttl(
    make_shipper: Make,
    other_queue: DurableQueue,
    collector: Collector,
    clock: ModuleClock,
    ttl: float,
    pause: float,
) -> None:
    shipper, queue = make_shipper(lease_ttl=ttl)
    assert other_queue.acquire_lease(OTHER, 60)
    queue.append([ev()])
    shipper._wake = Waits(clock)
    shipper.committed.set()
    shipper._step()
    assert collector.bodies == []
    assert shipper._wake.timeouts == [pause]  # min(ttl / 3, 5 s)
    assert shipper.committed.is_set()  # a non-holder leaves the writer's wake-up alone
    assert not shipper.holds_lease()
    assert queue.depth().events == 1
    shipper.hurry()  # a flush waiting: still no write transaction against the holder's
    shipper._step()
    assert shipper.counters.lease_writes == 0


def test_a_live_holder_elsewhere_means_may_ship_is_false_without_a_write(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    assert other_queue.acquire_lease(OTHER, 60)
    assert not shipper.may_ship()
    assert shipper.counters.lease_writes == 0  # seen with a read: close() never waits a lock
    assert other_queue.lease_holder() == OTHER


def test_may_ship_takes_a_free_lease_and_keeps_its_own(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    assert shipper.may_ship()
    assert other_queue.lease_holder() == shipper.holder
    assert shipper.holds_lease()
    assert shipper.may_ship()  # its own lease is no obstacle


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    dead = f"{shipper.settings.host}:{dead_pid()}:gone"
    assert other_queue.acquire_lease(dead, 3600)
    assert shipper.may_ship()
    assert other_queue.lease_holder() == shipper.holder


def test_the_lease_of_a_dead_process_is_taken_over_by_the_loop_too(
    make_shipper: Make, other_queue: DurableQueue, collector: Collector
) -> None:
    shipper, queue = make_shipper(linger=0)
    assert other_queue.acquire_lease(f"{shipper.settings.host}:{dead_pid()}:gone", 3600)
    queue.append([ev()])
    shipper._step()
    assert collector.sent == [[(A, 1)]]
    assert other_queue.lease_holder() == shipper.holder


@pytest.mark.parametrize(
    "holder",
    [
        "no-colons-at-all",
        "host:not-a-pid:x",
        f"elsewhere:{os.getpid()}:x",  # a pid on another host says nothing about ours
    ],
    # ids without the pid: pytest-xdist's workers must collect the same test names
    ids=["no-colons", "not-a-pid", "pid-elsewhere"],
)
def test_a_holder_that_is_not_a_dead_process_here_is_left_alone(
    make_shipper: Make, other_queue: DurableQueue, holder: str
) -> None:
    shipper, _ = make_shipper()
    if holder.startswith("elsewhere"):
        holder = holder.replace("elsewhere", "elsewhere-" + shipper.settings.host)
    assert other_queue.acquire_lease(holder, 60)
    assert not shipper._holder_is_dead(holder)
    assert not shipper.may_ship()
    assert other_queue.lease_holder() == holder


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process of our own (never a signal to someone else's)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield child.pid
    child.communicate(b"", timeout=10)
    assert child.returncode == 0, "the liveness check must not signal the process"


def test_a_live_process_and_this_process_on_this_host_are_not_dead(
    make_shipper: Make, live_pid: int
) -> None:
    shipper, _ = make_shipper()
    host = shipper.settings.host
    assert not shipper._holder_is_dead(f"{host}:{os.getpid()}:another-client")
    assert not shipper._holder_is_dead(f"{host}:{live_pid}:alive")
    assert shipper._holder_is_dead(f"{host}:{dead_pid()}:gone")


def test_a_process_of_another_user_is_alive(make_shipper: Make) -> None:
    """Signalling pid 1 as another user raises PermissionError: alive, so never taken over.
    As root the signal would simply be allowed, so a forked child drops root first."""
    shipper, _ = make_shipper()
    holder = f"{shipper.settings.host}:1:init"
    if os.geteuid() != 0:
        assert not shipper._holder_is_dead(holder)
        return
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only an exit code
        code = 2
        try:
            os.setuid(65534)
            code = 0 if shipper._holder_is_dead(holder) is False else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_pid_gone_here_says_nothing_about_a_holder_on_another_host(make_shipper: Make) -> None:
    shipper, _ = make_shipper()
    assert not shipper._holder_is_dead(f"other-{shipper.settings.host}:{dead_pid()}:x")


def test_a_host_name_with_colons_is_read_from_the_right(make_shipper: Make) -> None:
    shipper, _ = make_shipper(host="fe80::1")
    assert shipper._holder_is_dead(f"fe80::1:{dead_pid()}:gone")
    assert not shipper._holder_is_dead(f"fe80::1:{os.getpid()}:another-client")


def test_the_lease_is_written_when_taken_and_again_only_once_half_its_ttl_has_passed(
    make_shipper: Make, other_queue: DurableQueue, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(lease_ttl=10.0)
    start = clock.now
    assert shipper._hold_lease()
    assert shipper.counters.lease_writes == 1
    assert shipper._lease_until == start + 10.0
    clock.now = start + 4.999
    assert shipper._hold_lease()
    assert shipper.counters.lease_writes == 1
    clock.now = start + 5.0
    assert shipper._hold_lease()
    assert shipper.counters.lease_writes == 2
    assert shipper._lease_until == start + 15.0
    assert other_queue.lease_holder() == shipper.holder


def test_holds_lease_is_true_until_the_instant_the_lease_lapses(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(lease_ttl=10.0)
    assert not shipper.holds_lease()
    assert shipper._hold_lease()
    clock.now += 9.999
    assert shipper.holds_lease()
    clock.now += 0.001
    assert not shipper.holds_lease()


def test_a_refused_lease_is_not_held_and_is_asked_for_again_next_time(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    assert other_queue.acquire_lease(OTHER, 60)
    assert not shipper._hold_lease()
    assert shipper._lease_until == 0.0
    other_queue.release_lease(OTHER)
    assert shipper._hold_lease()
    assert shipper.counters.lease_writes == 1  # the refusal was a read: no write transaction


def test_stop_gives_the_lease_back_so_another_process_ships_at_once(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    assert shipper.may_ship()
    assert shipper.stop(timeout=1)
    assert other_queue.lease_holder() is None
    assert other_queue.acquire_lease(OTHER, 60)


def test_stop_of_a_shipper_that_never_held_the_lease_leaves_the_holder_alone(
    make_shipper: Make, other_queue: DurableQueue
) -> None:
    shipper, _ = make_shipper()
    assert other_queue.acquire_lease(OTHER, 60)
    assert shipper.stop(timeout=1)
    assert other_queue.lease_holder() == OTHER


# -- retries and backoff ------------------------------------------------------------


def test_retries_back_off_exponentially_up_to_backoff_max(
    make_shipper: Make, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_jitter(monkeypatch)
    shipper, queue = make_shipper(backoff_max=0.5, lease_ttl=60.0, linger=0)
    collector.answers = [answer(500)] * 5 + [ack]
    queue.append([ev(), ev()])
    shipper._deliver(queue.read_batch(), [], [])
    assert shipper._stop.timeouts == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert shipper.counters.retries == 5
    assert (shipper.counters.batches_sent, shipper.counters.events_sent) == (6, 12)
    assert queue.depth().events == 0
    assert shipper.counters.last_error is not None


def test_each_retry_waits_a_random_part_of_its_backoff_step(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(backoff_max=0.4, lease_ttl=60.0)
    collector.answers = [answer(None)] * 30 + [ack]
    queue.append([ev()])
    shipper._deliver(queue.read_batch(), [], [])
    waits = shipper._stop.timeouts
    steps = [0.1, 0.2] + [0.4] * 28
    assert len(waits) == 30
    assert all(0 <= w <= s for w, s in zip(waits, steps, strict=True))  # type: ignore[operator]
    assert len(set(waits)) > 1  # jittered, not one fixed pause


def test_a_long_backoff_is_slept_in_pieces_that_keep_the_lease(
    make_shipper: Make,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    other_queue: DurableQueue,
) -> None:
    no_jitter(monkeypatch)
    shipper, queue = make_shipper(backoff_max=10.0, lease_ttl=0.9)
    collector.answers = [answer(503, retry_after=1.0), ack]
    queue.append([ev()])
    shipper._deliver(queue.read_batch(), [], [])
    assert shipper._stop.timeouts == pytest.approx([0.3, 0.3, 0.3, 0.1])
    assert shipper.counters.lease_writes == 2  # taken, then renewed once past half its ttl
    assert queue.depth().events == 0


@pytest.mark.parametrize(
    ("retry_after", "jitter", "expected"),
    [
        (2.0, 1.0, 2.0),  # as asked
        (10_000.0, 1.0, MAX_RETRY_AFTER),  # a day-long Retry-After is cut short
        (0.0, 1.0, 0.1),  # never shorter than our own backoff
        (0.0, 0.0, MIN_RETRY_DELAY),  # nor a tight loop on "Retry-After: 0"
        (None, 1.0, 0.1),  # no Retry-After: our backoff
    ],
)
def test_a_throttled_batch_waits_as_asked_within_limits(
    make_shipper: Make,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    retry_after: float | None,
    jitter: float,
    expected: float,
) -> None:
    no_jitter(monkeypatch, jitter)
    shipper, queue = make_shipper(backoff_max=1.0, lease_ttl=10_000.0)
    collector.answers = [answer(429, retry_after=retry_after), ack]
    queue.append([ev()])
    shipper._deliver(queue.read_batch(), [], [])
    assert shipper._stop.timeouts == pytest.approx([expected])
    assert queue.depth().events == 0


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_a_setting_only_a_person_can_fix_is_retried_slowly(
    make_shipper: Make, collector: Collector, status: int
) -> None:
    shipper, queue = make_shipper(backoff_max=8.0, lease_ttl=10_000.0)
    collector.answers = [answer(status)] * 20 + [ack]
    queue.append([ev()])
    shipper._deliver(queue.read_batch(), [], [])
    waits = shipper._stop.timeouts
    assert len(waits) == 20
    assert all(4.0 <= w <= 8.0 for w in waits)  # type: ignore[operator]
    assert queue.depth().events == 0


@pytest.mark.parametrize(
    ("status", "level", "words"),
    [
        (503, logging.WARNING, "collector throttling (HTTP 503: scripted); waiting "),
        (
            401,
            logging.ERROR,
            "refused our credentials (HTTP 401: scripted): "
            "check SPOTIFY_EVENTS_TOKEN; events are kept in the queue",
        ),
        (404, logging.ERROR, "; events are kept in the queue and retried every 0.5s or so"),
        (
            500,
            logging.WARNING,
            "collector unreachable (HTTP 500: scripted); events are kept in the queue and retried",
        ),
        (
            None,
            logging.WARNING,
            "collector unreachable (no response); events are kept in the queue and retried",
        ),
    ],
)
def test_each_trouble_is_logged_once_and_the_recovery_once(
    make_shipper: Make,
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
    status: int | None,
    level: int,
    words: str,
) -> None:
    shipper, queue = make_shipper(backoff_max=0.5, lease_ttl=10_000.0)
    collector.answers = [answer(status)] * 3 + [ack]
    queue.append([ev()])
    with caplog.at_level(logging.INFO, logger="spotify_events.shipper"):
        shipper._deliver(queue.read_batch(), [], [])
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(records) == 2, records
    assert records[0][0] == level
    assert words in records[0][1]
    assert records[1] == (
        logging.INFO,
        "spotify-events collector reachable again; delivery resumed",
    )
    assert shipper._state == "ok"


def test_a_throttle_message_says_how_long_we_wait(
    make_shipper: Make, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    shipper, queue = make_shipper(lease_ttl=10_000.0)
    collector.answers = [answer(429, retry_after=7.0), ack]
    queue.append([ev()])
    with caplog.at_level(logging.WARNING, logger="spotify_events.shipper"):
        shipper._deliver(queue.read_batch(), [], [])
    assert "; waiting 7.0s as asked" in caplog.records[0].getMessage()
    assert shipper.counters.last_error is not None
    assert "429" in shipper.counters.last_error


def test_stop_cuts_a_backoff_short_and_keeps_the_events(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(backoff_max=30.0, lease_ttl=10_000.0)
    collector.answers = [answer(503, retry_after=30.0)]
    shipper._stop.then = lambda n: shipper._stop.set()
    queue.append([ev()])
    assert shipper._send_until_answered(queue.read_batch(), [], []) is None
    assert len(collector.bodies) == 1
    assert shipper._stop.timeouts == [30.0]  # one wait, then out
    assert queue.depth().events == 1


def test_a_shipper_that_loses_the_lease_while_backing_off_stops_sending(
    make_shipper: Make,
    collector: Collector,
    other_queue: DurableQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_jitter(monkeypatch)
    shipper, queue = make_shipper(backoff_max=10.0, lease_ttl=3.0)
    collector.answers = [answer(503, retry_after=10.0)]

    def taken_over(_n: int) -> None:
        other_queue.release_lease(shipper.holder)
        other_queue.acquire_lease(OTHER, 60)

    shipper._stop.then = taken_over
    queue.append([ev()])
    assert shipper._send_until_answered(queue.read_batch(), [], []) is None
    assert len(collector.bodies) == 1
    assert shipper._stop.timeouts == [1.0, 1.0]  # the renewal after the second piece fails
    assert queue.depth().events == 1


def test_a_stopped_shipper_sends_nothing(make_shipper: Make, collector: Collector) -> None:
    shipper, queue = make_shipper()
    queue.append([ev()])
    shipper._stop.set()
    assert shipper._send_until_answered(queue.read_batch(), [], []) is None
    assert collector.bodies == []


def test_a_shipper_without_the_lease_sends_nothing_even_when_asked_to(
    make_shipper: Make, collector: Collector, other_queue: DurableQueue
) -> None:
    shipper, queue = make_shipper()
    assert other_queue.acquire_lease(OTHER, 60)
    queue.append([ev()])
    assert shipper._send_until_answered(queue.read_batch(), [], []) is None
    assert collector.bodies == []
    assert shipper.counters.batches_sent == 0


# -- what a batch carries -------------------------------------------------------------


def test_a_batch_carries_its_events_numbers_and_the_producers_identity(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(service="checkout", host="web-7", sdk_version="9.9.9")
    queue.append([ev(A, FP, b"a1"), ev(B, FP2, b"b1"), ev(A, FP, b"a2")])
    queue.append([], overflow={(B, DROP_BUFFER_FULL): 2})
    drops = queue.unreported_drops()
    shipper._deliver(queue.read_batch(), drops, [])
    (body,) = collector.bodies
    batch = decode_batch(body)
    assert batch.producer_id == queue.producer_id
    assert [
        (e.event_type, e.seq, e.fingerprint, e.payload, e.timestamp) for e in batch.envelopes
    ] == [(A, 1, FP, b"a1", TS), (B, 1, FP2, b"b1", TS), (A, 2, FP, b"a2", TS)]
    assert batch.next_seq == {A: 3, B: 4}
    assert [d.event_type for d in batch.drops] == [B]
    assert (batch.service, batch.host, batch.sdk_version) == ("checkout", "web-7", "9.9.9")
    assert collector.headers == [{"X-SE-Producer-Id": queue.producer_id, "X-SE-Event-Count": "3"}]


def test_a_heartbeat_says_it_carries_no_events(make_shipper: Make, collector: Collector) -> None:
    shipper, queue = make_shipper()
    shipper._deliver([], [], [])
    assert collector.headers == [{"X-SE-Producer-Id": queue.producer_id, "X-SE-Event-Count": "0"}]
    assert decode_batch(collector.bodies[0]).envelopes == []
    assert shipper.counters.heartbeats == 1


def test_events_whose_acknowledgement_could_not_be_written_are_counted_once(
    make_shipper: Make, collector: Collector, blocker: Callable[[], Blocker]
) -> None:
    """The collector took them, but another connection held the write lock past the busy
    timeout: they stay queued, are sent again, and ``stats().acknowledged`` counts them
    when that second answer is written, not twice."""
    shipper, queue = make_shipper(linger=0)
    queue.set_busy_timeout(0.2)
    queue.append([ev(), ev(), ev()])
    lock = blocker()
    collector.answers = [lambda n: (lock.hold(), ack(n))[1], ack]
    with pytest.raises(QueueError, match="locked"):
        shipper._step()
    lock.release()
    assert queue.depth().events == 3
    assert shipper.counters.acknowledged == 0
    shipper._step()
    assert collector.sent == [[(A, 1), (A, 2), (A, 3)]] * 2
    assert (queue.depth().events, shipper.counters.acknowledged) == (0, 3)


# -- linger, the idle heartbeat and the step ---------------------------------------------


def depth(events: int, size: int = 100) -> QueueDepth:
    return QueueDepth(events, size, None)


def lingered(waits: Waits) -> float:
    """How long a linger waited on ``waits``, in pieces no longer than a look's pace."""
    assert waits.timeouts and all(t is not None and t <= TRICKLE_POLL for t in waits.timeouts)
    return sum(t for t in waits.timeouts if t is not None)


def test_a_batch_that_is_not_full_waits_out_linger_from_when_it_was_first_seen(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(linger=2.0, max_events=100, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    start = clock.now
    assert shipper._lingering(depth(1))
    assert shipper._linger_until == start + 2.0
    assert lingered(shipper.committed) == pytest.approx(2.0)
    clock.now = start + 1.5
    shipper.committed.timeouts.clear()
    assert shipper._lingering(depth(1))
    assert lingered(shipper.committed) == pytest.approx(0.5)
    clock.now = start + 2.0
    assert not shipper._lingering(depth(1))  # linger is over: ship


def test_a_linger_wait_is_cut_to_a_third_of_the_lease_ttl(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(linger=10.0, max_events=100, lease_ttl=3.0)
    shipper.committed = Waits(clock)
    assert shipper._lingering(depth(1))
    assert lingered(shipper.committed) == pytest.approx(1.0)  # the lease is renewed meanwhile


@pytest.mark.parametrize(
    ("d", "lingers"),
    [
        (depth(99, 999), True),
        (depth(100, 10), False),  # as many events as a batch holds
        (depth(1, 1000), False),  # as many bytes as a batch holds
    ],
)
def test_a_full_batch_does_not_linger(
    make_shipper: Make, clock: ModuleClock, d: QueueDepth, lingers: bool
) -> None:
    shipper, _ = make_shipper(linger=2.0, max_events=100, max_bytes=1000)
    shipper.committed = Waits(clock)
    assert shipper._lingering(d) is lingers


@pytest.mark.parametrize("linger", [0.0, -1.0])
def test_no_linger_means_no_wait(make_shipper: Make, clock: ModuleClock, linger: float) -> None:
    shipper, _ = make_shipper(linger=linger)
    shipper.committed = Waits(clock)
    assert not shipper._lingering(depth(1))
    assert shipper.committed.timeouts == []


def test_a_stopping_shipper_does_not_linger(make_shipper: Make, clock: ModuleClock) -> None:
    shipper, _ = make_shipper(linger=2.0, max_events=100)
    shipper.committed = Waits(clock)
    shipper._stop.set()
    assert not shipper._lingering(depth(1))


@pytest.mark.parametrize(
    ("events_then", "events_now", "commits_wake"),
    [
        (10, 10, True),  # no new events yet: no rate known, commits may wake it
        (0, 10, False),  # 20/s: 10 + 20 * 0.5 = 20 events by the end, far from 500
        (0, 249, False),  # 498/s: 249 + 249 = 498, just short of half a batch
        (0, 250, True),  # 500/s: 250 + 250 = 500, exactly half of 1000
        (0, 400, True),
    ],
)
def test_commits_wake_the_linger_only_while_they_could_fill_half_a_batch(
    make_shipper: Make, clock: ModuleClock, events_then: int, events_now: int, commits_wake: bool
) -> None:
    shipper, _ = make_shipper(linger=1.0, max_events=1000, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    shipper._wake = Waits(clock)
    start = clock.now
    shipper._linger_until = start + 1.0
    shipper._linger_from = (start, events_then)
    shipper._seen_version = shipper.queue.data_version()
    clock.now = start + 0.5
    assert shipper._lingering(depth(events_now))
    woken_by = shipper.committed if commits_wake else shipper._wake
    assert lingered(woken_by) == pytest.approx(0.5)


def test_the_first_look_at_a_batch_starts_its_linger_and_knows_no_rate(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(linger=1.0, max_events=1000, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    shipper._wake = Waits(clock)
    start = clock.now
    assert shipper._lingering(depth(7))
    assert shipper._linger_from == (start, 7)
    assert lingered(shipper.committed) == pytest.approx(1.0)
    assert shipper._wake.timeouts == []


def test_a_small_batch_is_held_back_until_linger_then_ships_and_a_flush_skips_linger(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, queue = make_shipper(linger=2.0, max_events=100, lease_ttl=30.0)
    shipper.committed = Waits(clock, advance=False)
    queue.append([ev()])
    shipper._step()
    assert collector.bodies == []
    assert shipper._linger_until is not None
    clock.now += 0.1
    shipper._step()  # still within linger: nothing yet
    assert collector.bodies == []
    shipper.hurry()  # a flush
    shipper._step()
    assert collector.sent == [[(A, 1)]]
    assert not shipper._urgent.is_set()  # no hurry left behind for the next batch
    assert shipper._linger_until is None
    queue.append([ev()])
    shipper._step()
    assert len(collector.bodies) == 1  # the next batch lingers again
    clock.now += 2.0
    shipper._step()
    assert collector.sent[-1] == [(A, 2)]


def test_a_lingering_shipper_ships_a_batch_another_process_filled_without_waiting_out_linger(
    make_shipper: Make, collector: Collector, clock: ModuleClock, other_queue: DurableQueue
) -> None:
    """No writer of ours sets ``committed`` (an agent has none; processes sharing a file
    commit unseen): the linger notices the other connection's commits by itself."""
    shipper, queue = make_shipper(linger=3600.0, max_events=10, lease_ttl=30.0)
    queue.append([ev()])

    def other_process_fills_the_batch(waits: int) -> None:
        if waits == 3:
            other_queue.append([ev() for _ in range(9)])

    shipper.committed = Waits(clock, then=other_process_fills_the_batch)
    start = clock.now
    while not collector.bodies and clock.now < start + 3600.0:
        shipper._step()
    assert collector.sent == [[(A, seq) for seq in range(1, 11)]]
    assert clock.now - start == pytest.approx(3 * LINGER_POLL)  # not the hour of linger


def test_a_flush_in_another_process_ships_the_events_it_waits_for_without_their_linger(
    make_shipper: Make, collector: Collector, clock: ModuleClock, other_queue: DurableQueue
) -> None:
    shipper, queue = make_shipper(linger=3600.0, max_events=100, lease_ttl=30.0)
    queue.append([ev()])

    def other_process_flushes(waits: int) -> None:
        if waits == 3:
            other_queue.request_shipping(*other_queue.shipping_marks())

    shipper.committed = Waits(clock, then=other_process_flushes)
    start = clock.now
    while not collector.bodies and clock.now < start + 3600.0:
        shipper._step()
    assert collector.sent == [[(A, 1)]]
    assert clock.now - start == pytest.approx(3 * LINGER_POLL)
    queue.append([ev()])  # after the flush's marks: it lingers as usual
    shipper._step()
    assert len(collector.bodies) == 1
    assert shipper._linger_until is not None


def test_a_flush_elsewhere_waiting_for_held_events_leaves_later_batches_their_linger(
    make_shipper: Make, collector: Collector, clock: ModuleClock, other_queue: DurableQueue
) -> None:
    """A flush in another process while a schema is held names the held events, which no
    request can ship before the hold's next try. The request kept asking all the same,
    so every later batch shipped at its first commit, without linger, until the
    collector learnt the schema (with a writer of its own: a request per commit)."""
    shipper, queue = make_shipper(linger=3600.0, max_events=100, lease_ttl=30.0)
    shipper.committed = Waits(clock, advance=False)
    queue.append([ev(B, FP2)])
    queue.hold(queue.read_batch(), "unknown schema", lambda attempts: 3600.0)
    queue.append([ev()])
    other_queue.request_shipping(*other_queue.shipping_marks())
    shipper._step()
    assert collector.sent == [[(A, 1)]]  # what the flush asked for that could ship
    queue.append([ev()])
    shipper._step()
    assert collector.sent == [[(A, 1)]]  # the next batch lingers as usual
    assert shipper._linger_until is not None
    other_queue.request_shipping(*other_queue.shipping_marks())  # a new flush
    shipper._step()  # the linger's next look finds it
    shipper._step()
    assert collector.sent == [[(A, 1)], [(A, 2)]]


def test_a_batch_a_flush_elsewhere_asked_for_before_the_shipper_looked_ships_at_once(
    make_shipper: Make, collector: Collector, clock: ModuleClock, other_queue: DurableQueue
) -> None:
    shipper, queue = make_shipper(linger=3600.0, max_events=100)
    shipper.committed = Waits(clock)
    queue.append([ev()], overflow={(A, DROP_BUFFER_FULL): 1})
    other_queue.request_shipping(*other_queue.shipping_marks())
    shipper._step()
    assert collector.sent == [[(A, 2)]]
    assert shipper.committed.timeouts == []
    assert queue.unreported_drops() == []  # the drop record the flush waits for went along


def test_a_trickle_from_another_process_does_not_end_the_wait_but_a_flush_there_does(
    make_shipper: Make, clock: ModuleClock, other_queue: DurableQueue
) -> None:
    """At a few hundred events a second a commit cannot fill the batch: the wait looks
    for a flush's request at a slower pace, and a commit never returns it to the
    caller's depth read."""
    shipper, queue = make_shipper(linger=2.0, max_events=1000, lease_ttl=30.0)

    def other_process(waits: int) -> None:
        other_queue.append([ev()])
        if waits == 5:
            other_queue.request_shipping(*other_queue.shipping_marks())

    shipper._wake = Waits(clock, then=other_process)
    start = clock.now
    shipper._linger_until = start + 2.0
    shipper._linger_from = (start, 0)
    shipper._seen_version = queue.data_version()
    clock.now = start + 0.5
    assert shipper._lingering(depth(10))  # 20/s: commits could not fill half a batch
    assert shipper._wake.timeouts == [pytest.approx(TRICKLE_POLL)] * 5
    assert shipper._urgent.is_set()


def test_only_a_lingering_shipper_looks_for_other_processes_commits(
    make_shipper: Make, collector: Collector, clock: ModuleClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle, the shipper wakes only for its idle poll (the idle CPU budget)."""
    shipper, queue = make_shipper(linger=1.0, heartbeat_interval=3600.0, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    looks: list[int] = []
    data_version = queue.data_version

    def counted() -> int:
        looks.append(1)
        return data_version()

    monkeypatch.setattr(queue, "data_version", counted)
    queue.append([ev()])
    shipper._step()  # lingers
    assert len(looks) == 1 + 1.0 / LINGER_POLL  # the baseline, then one per look
    shipper.hurry()
    shipper._step()  # it ships
    assert queue.depth().events == 0
    looks.clear()
    shipper._step()  # nothing queued
    assert shipper.committed.timeouts[-1] == pytest.approx(1.0) and looks == []


def test_a_batch_found_when_an_idle_wait_ends_lingers_from_when_that_wait_began(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    """The events came after the queue was last seen empty. An agent has no writer to
    wake it and finds them only when its idle wait ends: a linger counted from then let
    them wait an idle wait and a whole linger (about 1 s at the defaults), not one linger."""
    shipper, queue = make_shipper(linger=1.0, heartbeat_interval=3600.0, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    start = clock.now
    shipper._step()  # nothing queued: an idle wait as long as the linger
    assert shipper.committed.timeouts == [pytest.approx(1.0)]
    queue.append([ev()])
    shipper._step()
    assert collector.sent == [[(A, 1)]]
    assert clock.now == pytest.approx(start + 1.0)  # no second wait


@pytest.mark.parametrize(
    ("events", "commits_wake"),
    [(1, False), (600, True)],  # 3/s: a trickle; 2,000/s: could fill half of 1,000 in 0.7 s
)
def test_a_commit_that_ends_an_idle_wait_early_leaves_the_rest_of_the_linger_at_its_rate(
    make_shipper: Make, clock: ModuleClock, events: int, commits_wake: bool
) -> None:
    """The queue was empty when the idle wait began, so the events' rate is known at the
    first look: a trickle does not wake for every commit (nor look every LINGER_POLL)."""
    shipper, queue = make_shipper(
        linger=1.0, max_events=1000, heartbeat_interval=3600.0, lease_ttl=30.0
    )
    start = clock.now

    def commit(n: int) -> None:  # our writer commits 0.3 s into the idle wait
        clock.now += 0.3
        queue.append([ev() for _ in range(events)])
        shipper.committed.set()

    shipper.committed = Waits(clock, then=commit, advance=False)
    shipper._step()
    shipper.committed = Waits(clock)
    shipper._wake = Waits(clock)
    assert shipper._lingering(queue.depth())
    assert shipper._linger_until == pytest.approx(start + 1.0)
    woken_by, not_woken_by = (
        (shipper.committed, shipper._wake) if commits_wake else (shipper._wake, shipper.committed)
    )
    assert lingered(woken_by) == pytest.approx(0.7)
    assert not_woken_by.timeouts == []


def test_a_full_batch_ships_in_one_step(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, queue = make_shipper(linger=3600.0, max_events=3)
    queue.append([ev(), ev(), ev(), ev()])
    shipper._step()
    assert collector.sent == [[(A, 1), (A, 2), (A, 3)]]
    assert queue.depth().events == 1


def test_an_empty_queue_clears_a_hurry_and_a_linger(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(heartbeat_interval=3600.0)
    shipper.committed = Waits(clock)
    shipper._linger_until = clock.now + 5
    shipper.hurry()
    shipper._step()
    assert collector.bodies == []
    assert shipper._linger_until is None
    assert not shipper._urgent.is_set()


def test_an_idle_shipper_sends_a_heartbeat_once_heartbeat_interval_has_passed(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(heartbeat_interval=10.0, linger=0.5, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    shipper._last_send = clock.now
    clock.now += 9.0
    shipper._idle_step()
    assert collector.bodies == []
    assert shipper.committed.timeouts == [pytest.approx(0.5)]  # polls every max(0.25, linger)
    clock.now = shipper._last_send + 10.0
    shipper._idle_step()
    assert len(collector.bodies) == 1
    assert shipper.counters.heartbeats == 1
    assert shipper._last_send == clock.now


@pytest.mark.parametrize(
    ("seconds", "linger", "ttl", "expected"),
    [
        (0.1, 0.0, 30.0, 0.1),  # the heartbeat is due first
        (5.0, 0.0, 30.0, 0.25),  # IDLE_POLL: other processes' commits are looked for
        (5.0, 2.0, 30.0, 2.0),  # every linger when that is longer
        (5.0, 2.0, 3.0, 1.0),  # and the lease renewed in time
        (-1.0, 0.0, 30.0, 0.0),  # an overdue heartbeat: no negative wait
    ],
)
def test_an_idle_wait_is_the_shortest_of_heartbeat_poll_and_lease(
    make_shipper: Make,
    clock: ModuleClock,
    seconds: float,
    linger: float,
    ttl: float,
    expected: float,
) -> None:
    shipper, _ = make_shipper(linger=linger, lease_ttl=ttl)
    shipper.committed = Waits(clock)
    shipper._idle_wait(seconds)
    assert shipper.committed.timeouts == [pytest.approx(expected)]


def test_drop_notices_and_incidents_are_sent_at_once_when_idle(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, queue = make_shipper(heartbeat_interval=3600.0)
    shipper._last_send = clock.now
    queue.record_incident("queue_file_lost", "gone")
    shipper._idle_step()
    assert len(collector.bodies) == 1
    assert [i["kind"] for i in decode_batch(collector.bodies[0]).incidents] == ["queue_file_lost"]
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 1})
    shipper._idle_step()
    assert len(collector.bodies) == 2
    assert len(decode_batch(collector.bodies[1]).drops) == 1


def test_queued_drop_notices_ride_with_the_next_batch(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, queue = make_shipper(linger=0)
    queue.append([ev()], overflow={(A, DROP_BUFFER_FULL): 1})
    shipper._step()
    batch = decode_batch(collector.bodies[0])
    assert len(batch.envelopes) == 1
    assert len(batch.drops) == 1
    assert queue.unreported_drops() == []


# -- the loop and stop() --------------------------------------------------------------


def test_a_failing_step_is_logged_and_retried_after_a_second(
    make_shipper: Make, caplog: pytest.LogCaptureFixture
) -> None:
    shipper, _ = make_shipper()
    steps: list[int] = []

    def failing_step() -> None:
        steps.append(1)
        if len(steps) == 2:
            shipper._stop.set()
        raise RuntimeError("disk on fire")

    shipper._step = failing_step  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="spotify_events.shipper"):
        shipper._run()
    assert len(steps) == 2  # the thread lived on after the first failure
    assert shipper._stop.timeouts == [1.0, 1.0]
    assert shipper.counters.last_error == "shipper error: RuntimeError: disk on fire"
    assert caplog.records[0].getMessage() == "spotify-events shipper step failed; retrying"
    assert caplog.records[0].exc_info is not None


def test_stop_ends_the_thread_and_reports_it(make_queue: Callable[..., DurableQueue]) -> None:
    queue = make_queue()
    settings = replace(ClientConfig().shipper_settings(), heartbeat_interval=3600.0)
    shipper = Shipper(queue, MockTransport(lambda b, h: ack(0)), settings)
    shipper.start()
    thread = shipper._thread
    assert thread is not None and thread.name == "spotify-events-shipper" and thread.daemon
    shipper.start()  # a second start is a no-op
    assert shipper._thread is thread
    assert shipper.stop(timeout=10)
    assert not thread.is_alive()
    assert queue.lease_holder() is None


# -- the prefetcher -------------------------------------------------------------------


def wait_ready(prefetch: _Prefetcher) -> None:
    deadline = time.monotonic() + 10
    while prefetch._ready is None and time.monotonic() < deadline:
        with prefetch._cond:
            prefetch._cond.wait(0.05)


def test_the_prefetcher_prepares_the_full_batch_after_the_one_on_the_wire(
    make_shipper: Make,
) -> None:
    shipper, queue = make_shipper(max_events=2)
    queue.append([ev(A, FP, b"1"), ev(A, FP, b"2"), ev(A, FP, b"3"), ev(A, FP, b"4")])
    first = queue.read_batch(max_events=2)
    prefetch = shipper._prefetch
    prefetch.request(first[-1].id)
    wait_ready(prefetch)
    assert prefetch.take() is None  # the first batch is still queued: the head did not move
    prefetch.request(first[-1].id)
    wait_ready(prefetch)
    queue.ack(first[0].id, first[-1].id)
    ready = prefetch.take()
    assert ready is not None
    assert [e.payload for e in ready.events] == [b"3", b"4"]
    assert ready.after_id == first[-1].id
    assert [e.payload for e in decode_batch(ready.body).envelopes] == [b"3", b"4"]
    assert prefetch.take() is None  # taken once


def test_the_prefetcher_leaves_a_batch_that_is_not_full_to_linger(make_shipper: Make) -> None:
    shipper, queue = make_shipper(max_events=3)
    queue.append([ev(), ev(), ev(), ev()])
    first = queue.read_batch(max_events=3)
    prefetch = shipper._prefetch
    prefetch.request(first[-1].id)
    with prefetch._cond:  # wait until the request was picked up and finished
        while prefetch._wanted is not None or prefetch._busy:
            prefetch._cond.wait(0.05)
    queue.ack(first[0].id, first[-1].id)
    assert prefetch.take() is None


def test_after_a_short_batch_the_step_reads_nothing_ahead(
    make_shipper: Make, collector: Collector
) -> None:
    """A short batch means the queue held no more when it was read: what arrives while
    it is on the wire would make another short batch, which the prefetcher would only
    read and drop (at low rates that was a second read of every batch)."""
    shipper, queue = make_shipper(max_events=2, linger=0)
    queue.append([ev(A, FP, b"1")])
    shipper._step()
    assert len(collector.bodies) == 1
    queue.append([ev(A, FP, b"2"), ev(A, FP, b"3")])
    assert shipper._prefetch.take() is None
    assert shipper._prefetch._thread is None  # never asked, so never started


def test_a_stopped_prefetcher_prepares_nothing(make_shipper: Make) -> None:
    shipper, queue = make_shipper(max_events=1)
    queue.append([ev(), ev()])
    prefetch = shipper._prefetch
    prefetch.stop()
    prefetch.request(0)
    assert prefetch._thread is None
    assert prefetch.take() is None


def test_a_prepared_batch_is_sent_by_the_step_when_nothing_rides_along(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(max_events=2, linger=0)
    queue.append([ev(A, FP, b"1"), ev(A, FP, b"2"), ev(A, FP, b"3"), ev(A, FP, b"4")])
    shipper._step()  # sends 1, 2 and asks for 3, 4 meanwhile
    wait_ready(shipper._prefetch)
    prepared = shipper._prefetch._ready
    assert prepared is not None
    shipper._step()
    assert collector.bodies[1] == prepared.body  # not encoded again
    assert queue.depth().events == 0


def test_a_prepared_batch_is_not_used_when_a_drop_notice_must_ride_along(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(max_events=2, linger=0)
    queue.append([ev(A, FP, b"1"), ev(A, FP, b"2"), ev(A, FP, b"3"), ev(A, FP, b"4")])
    shipper._step()
    wait_ready(shipper._prefetch)
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 1})
    shipper._step()
    second = decode_batch(collector.bodies[1])
    assert [e.payload for e in second.envelopes] == [b"3", b"4"]
    assert len(second.drops) == 1


def test_an_event_is_encoded_field_for_field(make_shipper: Make) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A, FP, b"p")])
    (e,) = queue.read_batch()
    assert decode_batch(shipper._encode([e], [], [])).envelopes == [Envelope(1, A, FP, TS, b"p")]


# -- a closed queue, flush()'s wait, a stop that times out ---------------------------------


def test_a_lease_that_cannot_be_read_means_do_not_ship_and_says_why(make_shipper: Make) -> None:
    shipper, queue = make_shipper()
    queue.close()
    assert not shipper.may_ship()
    assert shipper.counters.last_error == f"lease: {queue.path}: queue is closed"
    shipper.counters.last_error = None
    assert not shipper._hold_lease()
    assert shipper.counters.last_error == f"lease: {queue.path}: queue is closed"


class RecordingCondition:
    """Stands in for the shipper's ``_acked``: records each wait and moves the clock on."""

    def __init__(self, clock: ModuleClock) -> None:
        self.clock = clock
        self.timeouts: list[float | None] = []

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "flush() must not wait without a bound"
        assert len(self.timeouts) < 100, "flush() is not giving up"
        self.timeouts.append(timeout)
        self.clock.now += timeout
        return False

    def notify_all(self) -> None:
        pass


def test_flush_waits_in_short_steps_hurrying_the_shipper_and_gives_up_at_its_timeout(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper()
    acked = RecordingCondition(clock)
    shipper._acked = acked  # type: ignore[assignment]
    assert not shipper.wait_acked(lambda: False, timeout=0.12)
    assert acked.timeouts == pytest.approx([0.05, 0.05, 0.02])
    assert shipper._urgent.is_set()


def test_flush_that_is_already_done_neither_waits_nor_hurries(
    make_shipper: Make, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper()
    acked = RecordingCondition(clock)
    shipper._acked = acked  # type: ignore[assignment]
    assert shipper.wait_acked(lambda: True, timeout=5)
    checks = iter([False, False, True])
    assert shipper.wait_acked(lambda: next(checks), timeout=5)
    assert acked.timeouts == [0.05, 0.05]


def test_a_stop_that_times_out_keeps_the_lease_while_its_thread_may_still_send(
    make_queue: Callable[..., DurableQueue], other_queue: DurableQueue
) -> None:
    queue = make_queue()
    queue.append([ev()])
    on_the_wire, release = threading.Event(), threading.Event()

    def stuck(body: bytes, headers: Mapping[str, str]) -> SendResult:
        on_the_wire.set()
        release.wait(30)
        return ack(len(decode_batch(body).envelopes))

    settings = replace(ClientConfig().shipper_settings(), linger=0)
    shipper = Shipper(queue, MockTransport(stuck), settings)
    shipper.start()
    try:
        assert on_the_wire.wait(10)
        assert not shipper.stop(timeout=0.2)  # returns although the send is still out
        assert other_queue.lease_holder() == shipper.holder
    finally:
        release.set()
        assert shipper.stop(timeout=10)
    assert other_queue.lease_holder() is None


def test_a_prepared_batch_that_is_too_large_is_split_like_any_other(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(max_events=2, linger=0)
    queue.append([ev(A, FP, b"1"), ev(A, FP, b"2"), ev(A, FP, b"3"), ev(A, FP, b"4")])
    shipper._step()
    wait_ready(shipper._prefetch)
    collector.answers = [lambda n: SendResult(413, {"error": "too large"}), ack]
    shipper._step()  # the prepared 3, 4: refused whole, then sent as two parts
    assert collector.sent[1:] == [[(A, 3), (A, 4)], [(A, 3)], [(A, 4)]]
    assert queue.depth().events == 0


def test_a_batch_read_by_the_step_keeps_to_max_bytes(
    make_shipper: Make, collector: Collector
) -> None:
    shipper, queue = make_shipper(linger=0, max_bytes=1000)
    queue.append([ev(payload=b"x" * 600), ev(payload=b"y" * 600)])
    shipper._step()
    assert collector.sent == [[(A, 1)]]
    shipper._step()
    assert collector.sent == [[(A, 1)], [(A, 2)]]


def test_an_idle_shipper_wakes_for_the_heartbeat_when_it_is_due_before_the_next_poll(
    make_shipper: Make, collector: Collector, clock: ModuleClock
) -> None:
    shipper, _ = make_shipper(heartbeat_interval=10.0, linger=0, lease_ttl=30.0)
    shipper.committed = Waits(clock)
    clock.now = shipper._last_send + 9.9
    shipper._idle_step()
    assert collector.bodies == []
    assert shipper.committed.timeouts == [pytest.approx(0.1)]


def test_a_copied_files_old_events_are_sent_under_their_old_producer_in_header_and_body(
    make_queue: Callable[..., DurableQueue],
    queue_path: Path,
    tmp_path: Path,
    collector: Collector,
    clock: ModuleClock,
) -> None:
    first = make_queue()
    first.append([ev(), ev()])
    old_producer = first.producer_id
    first.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(queue_path, copy)
    queue = make_queue(copy)
    assert queue.producer_id != old_producer
    shipper = Shipper(queue, MockTransport(collector), ClientConfig().shipper_settings())
    shipper._stop = Waits(clock)
    shipper._deliver(queue.read_batch(), [], [])
    assert decode_batch(collector.bodies[0]).producer_id == old_producer
    assert collector.headers[0]["X-SE-Producer-Id"] == old_producer
    shipper._prefetch.stop()


def test_the_prefetch_thread_is_a_named_daemon(make_shipper: Make) -> None:
    shipper, queue = make_shipper(max_events=1)
    queue.append([ev(), ev()])
    shipper._prefetch.request(1)
    thread = shipper._prefetch._thread
    assert thread is not None
    assert thread.daemon  # a client never closed must not hold up interpreter exit
    assert thread.name == "spotify-events-prefetch"


def test_a_prefetched_batch_keeps_to_both_batch_limits(make_shipper: Make) -> None:
    shipper, queue = make_shipper(max_events=2, max_bytes=1000)
    queue.append([ev(payload=b"%d" % i) for i in range(6)])
    prefetch = shipper._prefetch
    prefetch.request(2)
    wait_ready(prefetch)
    queue.ack(1, 2)
    ready = prefetch.take()
    assert ready is not None
    assert [e.id for e in ready.events] == [3, 4]  # not every event after 2
    # two events over max_bytes: the read stops at one, which is not full, so nothing
    queue.append([ev(payload=b"x" * 600), ev(payload=b"y" * 600)])
    prefetch.request(6)
    finished(prefetch)
    queue.ack(3, 6)
    assert prefetch.take() is None


def finished(prefetch: _Prefetcher) -> None:
    with prefetch._cond:
        while prefetch._wanted is not None or prefetch._busy:
            prefetch._cond.wait(0.05)


def test_take_waits_for_a_batch_being_prepared(
    make_shipper: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipper, queue = make_shipper(max_events=2)
    queue.append([ev(), ev(), ev(), ev()])
    encoding, release = threading.Event(), threading.Event()
    taker = threading.current_thread()

    class Cond(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread() is taker:
                release.set()  # take() is waiting: let the preparation finish
            return super().wait(timeout)

    encode = shipper._encode

    def slow_encode(*args: Any) -> bytes:
        encoding.set()
        release.wait(10)
        return encode(*args)

    monkeypatch.setattr(shipper, "_encode", slow_encode)
    prefetch = shipper._prefetch
    prefetch._cond = Cond(threading.Lock())
    prefetch.request(2)
    assert encoding.wait(10)
    queue.ack(1, 2)
    try:
        ready = prefetch.take()
    finally:
        release.set()
    assert ready is not None  # waited for the batch in the making instead of giving up
    assert [e.id for e in ready.events] == [3, 4]


# -- stop() against a locked file; the first answers; a change of trouble ---------------


def test_a_stop_whose_lease_cannot_be_released_gives_up_and_says_why(
    make_shipper: Make,
    blocker: Callable[[], Blocker],
    other_queue: DurableQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, _ = make_shipper()
    assert shipper.may_ship()
    with blocker(), caplog.at_level(logging.DEBUG, logger="spotify_events.shipper"):
        assert shipper.stop(timeout=1)  # the lease row cannot be written: waits 1 s at most
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("could not release the shipping lease: ")
    assert "locked" in record.getMessage()
    assert other_queue.lease_holder() == shipper.holder  # lapses at its ttl instead


def test_stop_of_a_shipper_that_never_held_the_lease_needs_no_write_lock(
    make_shipper: Make, blocker: Callable[[], Blocker], caplog: pytest.LogCaptureFixture
) -> None:
    shipper, _ = make_shipper()
    with blocker(), caplog.at_level(logging.DEBUG, logger="spotify_events.shipper"):
        assert shipper.stop(timeout=1)
    assert caplog.records == []  # no lease release tried: nothing to wait for


def test_a_new_shipper_neither_sends_a_heartbeat_at_once_nor_logs_a_recovery(
    make_queue: Callable[..., DurableQueue],
    collector: Collector,
    clock: ModuleClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = make_queue()
    settings = replace(ClientConfig().shipper_settings(), heartbeat_interval=10.0, linger=0)
    shipper = Shipper(queue, MockTransport(collector), settings)
    shipper._stop = Waits(clock)
    shipper.committed = Waits(clock, advance=False)
    with caplog.at_level(logging.INFO, logger="spotify_events.shipper"):
        shipper._step()
        assert collector.bodies == []  # the heartbeat interval counts from the start
        clock.now += 10.0
        shipper._step()
        assert shipper.counters.heartbeats == 1
        queue.append([ev()])
        shipper._step()
    assert len(collector.bodies) == 2
    assert caplog.records == []  # nothing was wrong: nothing "resumed"
    shipper._prefetch.stop()


def test_a_change_from_one_configuration_error_to_another_is_logged(
    make_shipper: Make, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    shipper, queue = make_shipper(backoff_max=0.5, lease_ttl=10_000.0)
    welcome = SendResult(200, None, preview=b"<html>welcome</html>")
    collector.answers = [answer(404), answer(404), lambda _n: welcome, lambda _n: welcome, ack]
    queue.append([ev()])
    with caplog.at_level(logging.ERROR, logger="spotify_events.shipper"):
        shipper._deliver(queue.read_batch(), [], [])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "HTTP 404" in messages[0]
    assert "not a spotify-events collector" in messages[1]


def test_after_a_fork_the_childs_shipper_starts_afresh(make_shipper: Make) -> None:
    """The fork hook, called directly: fresh wake-up event, counters and holder id, no
    thread and no lease (a real fork runs it in tests/sdk/test_client_lifecycle.py)."""
    shipper, _ = make_shipper()
    assert shipper.may_ship()
    shipper.counters.retries = 3
    parent_event, parent_holder = shipper.committed, shipper.holder
    shipper.after_fork_in_child()
    assert isinstance(shipper.committed, threading.Event)
    assert shipper.committed is not parent_event
    assert shipper.counters.retries == 0
    assert shipper.holder != parent_holder
    assert not shipper.holds_lease()
    assert shipper._thread is None
    shipper.hurry()  # and it can be woken
    assert shipper.committed.is_set()
