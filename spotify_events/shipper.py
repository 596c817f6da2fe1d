"""Shipper: the daemon thread that moves committed events from the queue to the collector.

It holds the queue's shipping lease (one sender per queue file, even with many
processes), reads batches in queue order, sends them, and lets only a 2xx
delete anything. The response decides what happens next:

* the collector's acknowledgement (a 2xx whose JSON counts add up to the batch):
  ack the batch; events the body lists as rejected go to dead letters;
* any other 2xx (a proxy's welcome page, an empty body): nothing is acked; the
  events stay, one ERROR says the endpoint is not a collector, slow retry;
* 413: split in halves and resend; 400: bisect until the poison events are
  alone, dead-letter them with the collector's reason, send the rest;
* 429/503: wait ``Retry-After``; 401/403/404/405: keep everything, retry slowly
  (every ``backoff_max``), log one ERROR naming the token or the URL path;
* anything else, or no response: exponential backoff with full jitter, capped,
  never giving up while the queue holds the data (the queue *is* the buffer).

A full batch (count or bytes) ships at once; one that is not full waits up to
``linger`` from when the shipper last found the queue empty (at most an idle
wait before it first saw the batch), so at low rates one request, one
ack and one wake-up serve every event of that span. A flush cuts the wait short:
in this process through :meth:`Shipper.hurry`, in another one (a service whose
file an agent ships) through a request row in the file that the lingering
shipper looks for. The limits (5000 events, 4 MiB) come from the end-to-end
benchmark: going from 1000 to 5000 events per batch cut per-event CPU on both
ends by amortising the HTTP round trip and the collector's fsync; past that,
gains were within noise while the retry unit grew. The linger (0.5 s, as segment's flush interval; OpenTelemetry's batch
processor waits 1 s) comes from the rate curve in benchmarks/RESULTS.md: beyond
its events, a send costs ~2 ms of CPU in this process (the HTTP request, the
reads around it, the ack transaction), so shipping every 50 ms cost ~40 µs per
event at 1,000 events/s, every 0.5 s ~4 and every 1 s ~2; 0.5 s keeps the p99
delivery latency near 0.7 s.

When idle it sends a heartbeat (an empty batch) carrying the per-type next
sequence numbers and unreported drop notices, so the collector can tell
"nothing happened" from "events are missing". Each state change (collector
unreachable, recovered, throttled, token refused) is logged once, not per try.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import backoff

from .decision import Action, decide, sort_rejections
from .errors import QueueBusyError, QueueError
from .queue import DurableQueue, QueuedBatch, QueueDepth, QueuedEvent
from .settings import ShipperSettings
from .transport import Outcome, SendResult, Transport
from .wire import MAX_INCIDENTS_PER_BATCH, DropNotice, WireBatch, encode_batch, join_envelopes

logger = logging.getLogger("spotify_events.shipper")

#: Longest Retry-After honoured as given; beyond it a misconfigured collector
#: could park delivery for days, so we come back after this many seconds.
MAX_RETRY_AFTER = 600.0
#: Least pause between two attempts, whatever a Retry-After says.
MIN_RETRY_DELAY = 0.05
#: How often an idle lease holder looks for events committed by other processes.
IDLE_POLL = 0.25
#: How often a lingering holder looks for other connections' commits while they could
#: fill its batch; only while a batch is pending, never when idle. A look costs ~55 µs
#: of CPU on a 2-core dev machine (the timed-out wait ~40, PRAGMA data_version ~4,
#: the request row ~11), so 20 looks a second are ~0.1 % of a core, and a filled
#: batch waits at most this long.
LINGER_POLL = 0.05
#: How often it looks while commits cannot fill the batch (a trickle), when only a
#: flush's request could end the wait: at 100 events/s the writer commits every 50 ms,
#: so looking at LINGER_POLL would be waking per commit, which the trickle rule avoids.
TRICKLE_POLL = 0.25
#: (producer id, next-sequence watermark) a batch is sent under (``DurableQueue.sender``).
Sender = tuple[str, dict[str, int]]
#: A queued row (id, event_type, seq, fingerprint, timestamp, payload) as an envelope's fields.
_ENVELOPE_FIELDS = itemgetter(2, 1, 3, 4, 5)


@dataclass
class ShipperCounters:
    """Counts kept by the shipper thread (its only writer)."""

    batches_sent: int = 0
    events_sent: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    retries: int = 0
    heartbeats: int = 0
    lease_writes: int = 0  # takes and renewals of the shipping lease (SQLite write transactions)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_success: float | None = None


class Shipper:
    """One daemon thread per client; see the module docstring for the protocol."""

    def __init__(
        self,
        queue: DurableQueue,
        transport: Transport,
        settings: ShipperSettings,
        *,
        committed: threading.Event | None = None,
    ) -> None:
        self.queue = queue
        self.transport = transport
        self.settings = settings
        self.counters = ShipperCounters()
        # Set by the writer after each commit: new work may be waiting.
        self.committed = committed or threading.Event()
        self._init_state()

    def _init_state(self) -> None:
        self.holder = f"{self.settings.host}:{os.getpid()}:{uuid.uuid4()}"
        self._stop = threading.Event()
        self._urgent = threading.Event()  # flush/close asked: skip linger
        self._wake = threading.Event()  # flush/close/stop: a non-holder re-checks the lease now
        self._acked = threading.Condition(threading.Lock())
        self._lease_until = 0.0
        self._linger_until: float | None = None  # when the batch being gathered must go
        self._linger_from = (0.0, 0)  # (when, queue depth) that batch's rate counts from
        self._empty_since: float | None = None  # when the queue was last found empty
        self._seen_version = 0  # the file's data_version when the linger last looked
        self._request: tuple[int, int] | None = None  # a flush's request the linger acted on
        self._request_read: tuple[int, int] | None = None  # one a read has since answered
        self._last_send = time.monotonic()
        self._state = "ok"
        self._thread: threading.Thread | None = None
        self._prefetch = _Prefetcher(self)
        self._held_reported: set[tuple[str, bytes]] = set()  # schemas whose hold was logged

    # -- control -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="spotify-events-shipper", daemon=True
            )
            self._thread.start()

    def hurry(self) -> None:
        """Ship what is queued now, without waiting for linger."""
        self._urgent.set()
        self._wake.set()
        self.committed.set()

    def may_ship(self) -> bool:
        """Whether this shipper holds the lease or can take it now (free, lapsed, or left
        by a dead process). close() asks: a process that cannot ship commits and leaves
        at once, and the holder (or the next process to start) ships its events.
        A live holder is seen with a read, so leaving never waits for the write lock."""
        return self._hold_lease()

    def holds_lease(self) -> bool:
        """Whether this shipper held the lease at its last renewal and it has not lapsed."""
        return time.monotonic() < self._lease_until

    def wait_acked(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, re-checking after every ack and at least
        every 50 ms (another process may hold the lease and be the one shipping)."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Hurried only while something is left: a hurry outliving the flush would
            # ship the next small batch without its linger.
            self.hurry()
            with self._acked:
                self._acked.wait(min(remaining, 0.05))
        return True

    def wait_shipped(self, deadline: float) -> bool:
        """Wait until what the queue holds now has left it (acknowledged, or
        dead-lettered), giving up at ``deadline`` (``time.monotonic()``): a drain before
        stopping. The wait reads through this shipper's connection, which its thread
        holds through any wait for another process's lock: the deadline ends that too."""
        with self.queue.waiting_until(deadline), suppress(QueueBusyError):
            done = self.queue.shipped_check(self.queue.shipping_marks())
            return self.wait_acked(done, max(0.0, deadline - time.monotonic()))
        return False

    def stop(self, timeout: float) -> bool:
        """Stop the thread (cutting a backoff short) and give up the lease; False if the
        thread was still running after ``timeout``."""
        self._stop.set()
        self._wake.set()
        self.committed.set()
        self._prefetch.stop()
        # A wait for another process's lock the thread has under way (an acknowledgement
        # while a peer writes) ends within ``timeout``, not at the queue's busy timeout:
        # until then the thread holds the connection that close() goes on to close.
        self.queue.set_busy_timeout(timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._lease_until and (thread is None or not thread.is_alive()):
            try:
                self.queue.set_busy_timeout(1.0)  # never hold up exit over a lease row
                self.queue.release_lease(self.holder)
            except QueueError as exc:
                logger.debug("could not release the shipping lease: %s", exc)
        return thread is None or not thread.is_alive()

    def before_fork(self) -> None:
        """Nothing to quiesce: the shipper's SQLite work goes through its queue, which holds."""

    def after_fork_in_parent(self) -> None:
        """The parent's shipper carries on as it was."""

    def after_fork_in_child(self) -> None:
        """In a forked child: no thread, fresh primitives and counters, a holder id of its own."""
        self.committed = threading.Event()
        self.counters = ShipperCounters()
        self._init_state()

    # -- the loop --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except QueueBusyError as exc:
                # A wait for another process's lock cut short by this process forking (or
                # by close()): nothing is lost, the step runs again once the fork is done.
                logger.debug("spotify-events shipper step cut short: %s", exc)
            except Exception as exc:  # never let the thread die: log once per error text
                self._note_error(f"shipper error: {type(exc).__name__}: {exc}")
                logger.exception("spotify-events shipper step failed; retrying")
                self._stop.wait(1.0)

    def _step(self) -> None:
        self._wake.clear()
        if not self._hold_lease():
            # Another process ships from this file; check back before its lease could lapse,
            # or at once when flush()/close() asks (its holder may have left meanwhile).
            self._wake.wait(min(self.settings.lease_ttl / 3, 5.0))
            return
        # Clear the wake-up *before* looking at the queue: a commit (or stop) that
        # lands after this line sets it again, so the waits below cannot miss it.
        self.committed.clear()
        depth = self.queue.depth()
        urgent = self._urgent.is_set()
        if depth.events == 0:
            # Nothing left to hurry: a flush that is still waiting hurries again.
            self._linger_until = None
            self._empty_since = time.monotonic()
            self._urgent.clear()
            self._idle_step()
            return
        if not urgent and self._lingering(depth):
            return
        self._linger_until = self._empty_since = None
        self._urgent.clear()
        dropped_by = self.queue.drop_producers()
        incidents = self.queue.unreported_incidents(MAX_INCIDENTS_PER_BATCH)
        prepared = self._prefetch.take()
        if prepared is not None and not dropped_by and not incidents:
            self._deliver(prepared.events, [], [], body=prepared.body)
            return
        batch = self.queue.read_shipment(
            max_events=self.settings.max_events, max_bytes=self.settings.max_bytes
        )
        self._answer_request(batch)
        if not batch:  # every queued event is held until its schema's next try
            self._idle_step()
            return
        producer = self.queue.batch_producer(batch)
        drops = self.queue.unreported_drops(producer=producer) if producer in dropped_by else []
        self._deliver(batch, drops, incidents)
        for other in dropped_by:
            # Drop notices name numbers of one producer: those of another (a copied file's
            # earlier one, or its own while the earlier one's events ship) go on their own.
            if other != producer and not self._stop.is_set():
                self._deliver_drops(other, [])

    def _idle_step(self) -> None:
        """Nothing to send: carry drop notices and incidents, or a heartbeat when due."""
        dropped_by = self.queue.drop_producers()
        incidents = self.queue.unreported_incidents(MAX_INCIDENTS_PER_BATCH)
        if dropped_by:
            self._deliver_drops(dropped_by[0], incidents)
            self._urgent.clear()
            return
        if incidents or time.monotonic() - self._last_send >= self.settings.heartbeat_interval:
            self._deliver([], [], incidents)
            self._urgent.clear()
            return
        self._idle_wait(self.settings.heartbeat_interval - (time.monotonic() - self._last_send))

    def _deliver_drops(self, producer: str, incidents: list[tuple[int, dict[str, Any]]]) -> None:
        """An empty batch under ``producer`` with its unreported drop notices."""
        drops = self.queue.unreported_drops(producer=producer)
        self._deliver([], drops, incidents, sender=self.queue.sender(producer))

    def _lingering(self, depth: QueueDepth) -> bool:
        """While a batch is not full, wait for more until ``linger`` has passed since
        we first saw it; True if we waited (the caller re-checks).

        A small batch waits out the linger and shares one request, one ack and one
        wake-up among its events; a full one ships at once, and so does one that a
        flush in another process asked for (:meth:`DurableQueue.request_shipping`).
        Commits wake the wait only while the rate seen since the linger began could
        fill half a batch before it ends: at a few hundred events a second a commit
        cannot make a batch full, and waking for each would cost more than the
        events. The rate counts from when the queue was last found empty, or, when the
        shipper never saw it empty (a backlog), from its first look at this batch; a
        burst that starts after that waits at most the rest of the linger (its events
        are on disk meanwhile)."""
        settings = self.settings
        full = depth.events >= settings.max_events or depth.bytes >= settings.max_bytes
        if full or settings.linger <= 0:
            return False
        now = time.monotonic()
        if self._linger_until is None:
            # The baseline first: a request committed after it is seen by the next look.
            self._seen_version = self.queue.data_version()
            if self._asked_to_ship():
                return False
            # The events came after the queue was last seen empty: counting the linger from
            # then, not from this first look, keeps their wait within one linger (an agent
            # has no writer to wake it, so it found them only at the end of an idle wait).
            # The queue held none then, so their rate is known from this first look: a
            # trickle waits at a trickle's pace from the start.
            if self._empty_since is None:
                self._linger_from = (now, depth.events)
                self._linger_until = now + settings.linger
            else:
                self._linger_from = (self._empty_since, 0)
                self._linger_until = self._empty_since + settings.linger
                self._empty_since = None
        remaining = self._linger_until - now
        if remaining <= 0 or self._stop.is_set():
            return False
        began, events_then = self._linger_from
        rate = (depth.events - events_then) / (now - began) if now > began else 0.0
        may_fill = rate == 0.0 or depth.events + rate * remaining >= settings.max_events / 2
        self._linger_wait(may_fill, min(remaining, settings.lease_ttl / 3))
        return True

    def _linger_wait(self, may_fill: bool, seconds: float) -> None:
        """Wait up to ``seconds`` for the linger, looking now and then at whether another
        connection committed (``PRAGMA data_version``, no page read): our writer sets
        ``committed``, but an agent has no writer, and processes sharing the file commit
        unseen. A commit ends the wait when a flush asked for the queued events, or while
        commits could fill the batch (the caller then re-reads the depth)."""
        # hurry() and stop() set both events; only commits are left out of _wake
        wake = self.committed if may_fill else self._wake
        looks = math.ceil(seconds / (LINGER_POLL if may_fill else TRICKLE_POLL))
        for _ in range(looks):
            if wake.wait(seconds / looks):
                return
            version = self.queue.data_version()
            if version == self._seen_version:
                continue
            self._seen_version = version
            if self._asked_to_ship():
                self._urgent.set()
                return
            if may_fill:
                return

    def _asked_to_ship(self) -> bool:
        """Whether a flush in another process asks for queued events (or drop records)
        that no read of ours has answered yet (see :meth:`_answer_request`)."""
        request = self.queue.shipping_request()
        if request is None or request == self._request_read:
            return False
        self._request = request
        return True

    def _answer_request(self, batch: Sequence[QueuedEvent]) -> None:
        """A read that reached the last event the request names, or found none it may
        send, answers it: what it names and was not read is held for a schema the
        collector lacks, and can ship only at the hold's next try. The request stays in
        the file until those events leave the queue; taken as still asking, it would
        ship every later batch at its first commit, without linger, while the hold lasts."""
        request = self._request
        if request is not None and (not batch or last_id(batch) >= request[0]):
            self._request_read, self._request = request, None

    def _idle_wait(self, seconds: float) -> None:
        # Our writer wakes us when it commits; other processes sharing the file cannot,
        # so look again (a one-row read) every IDLE_POLL seconds, or every linger when that
        # is longer: their events would wait that long for company anyway.
        poll = max(IDLE_POLL, self.settings.linger)
        self.committed.wait(max(0.0, min(seconds, self.settings.lease_ttl / 3, poll)))

    def _hold_lease(self) -> bool:
        """Take the lease, or renew it once half its ttl has passed: renewals follow
        time, not sends (a write transaction per batch would cost as much as the ack).
        Not holding it, a read first: while another live process holds it, no write
        transaction contends with that holder's (a process that does not ship is
        hurried every 50 ms while its flush waits, and asked again at close)."""
        now = time.monotonic()
        if now < self._lease_until - self.settings.lease_ttl / 2:
            return True
        try:
            if not self._lease_until:
                other = self.queue.lease_holder()
                if other is not None and other != self.holder and not self._holder_is_dead(other):
                    return False
            self.counters.lease_writes += 1
            held = self.queue.acquire_lease(self.holder, self.settings.lease_ttl)
            other = None if held else self.queue.lease_holder()
            if other is not None and self._holder_is_dead(other):
                # A process on this host that died without releasing (SIGKILL, OOM):
                # take over now instead of leaving its queue unshipped for a whole TTL.
                # Releasing names the dead holder, so a live newcomer's lease is never undone.
                self.queue.release_lease(other)
                held = self.queue.acquire_lease(self.holder, self.settings.lease_ttl)
        except QueueError as exc:
            self._note_error(f"lease: {exc}")
            return False
        self._lease_until = now + self.settings.lease_ttl if held else 0.0
        return held

    def _holder_is_dead(self, holder: str) -> bool:
        """True when ``holder`` (host:pid:uuid) names a process on this host that is gone."""
        try:
            host, pid_text, _ = holder.rsplit(":", 2)
            pid = int(pid_text)
        except ValueError:
            return False
        if host != self.settings.host or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by someone else
            return False
        return False

    # -- one batch, with splitting and bisection -------------------------------------
    def _deliver(
        self,
        events: Sequence[QueuedEvent],
        drops: list[tuple[int, DropNotice]],
        incidents: list[tuple[int, dict[str, Any]]],
        body: bytes | None = None,
        sender: Sender | None = None,
    ) -> None:
        """Send ``events`` (plus drop notices and incidents) until each has left the
        queue or we stop. ``body`` is the events already encoded (by the prefetcher);
        ``sender`` the producer an empty batch goes under (default: the file's own)."""
        parts: list[Sequence[QueuedEvent]] = [events]
        while parts and not self._stop.is_set():
            part = parts.pop()
            whole = part is events
            if whole and len(part) >= self.settings.max_events:
                # While this full batch is on the wire, read and encode the next one. After
                # a short batch the queue held no more: what arrives meanwhile makes
                # another short batch, which the prefetcher would read only to drop.
                self._prefetch.request(last_id(part))
            result = self._send_until_answered(
                part, drops, incidents, body if whole else None, sender
            )
            if result is None:
                return  # stopping: the events stay queued for the next run
            outcome = result.outcome(len(part))
            decision = decide(outcome, len(part))
            if decision.action is Action.PROBE:
                decision = decide(outcome, len(part), self._collector_takes_heartbeats())
            if decision.action is Action.ACKNOWLEDGE:
                self._accept(part, drops, result)
                self.queue.mark_incidents_reported([i for i, _ in incidents])
                drops, incidents = [], []  # reported; later parts need not carry them again
            elif decision.action is Action.SPLIT:
                # 413: too big, or 400: something inside is poison. Halve and resend,
                # first half first so acks stay in queue order. Apart, a shipment's
                # blocks go as rows (a block that does not read back is reported dropped).
                if isinstance(part, QueuedBatch):
                    part = self.queue.unpack(part)
                middle = len(part) // 2
                parts += [half for half in (part[middle:], part[:middle]) if half]
            elif decision.action is Action.DEAD_LETTER:
                # The collector takes an empty batch but not this one event: it is poison.
                reason = _reason(result, "collector refused the event")
                self._dead_letter(part, reason, notify_collector=True)
            else:
                # Even a bare heartbeat is refused (a proxy answering 400, or notices the
                # collector cannot parse): nothing to blame on an event. Keep everything
                # and come back after a pause instead of dead-lettering the whole queue.
                self._note_error(f"collector refuses batches outright: {result.describe()}")
                self._set_state(
                    "refused",
                    f"spotify-events collector refuses even empty batches ({result.describe()}); "
                    "events are kept in the queue",
                    level=logging.ERROR,
                )
                self._stop.wait(self.settings.backoff_max)
                return

    def _collector_takes_heartbeats(self) -> bool:
        """Does the collector accept a bare empty batch? Decides whether a refused
        single event is poison, or the refusal is about something else."""
        result = self._send_until_answered([], [], [])
        return result is not None and result.outcome(0) is Outcome.ACCEPTED

    def _send_until_answered(
        self,
        part: Sequence[QueuedEvent],
        drops: list[tuple[int, DropNotice]],
        incidents: list[tuple[int, dict[str, Any]]],
        body: bytes | None = None,
        sender: Sender | None = None,
    ) -> SendResult | None:
        """Send one part, retrying transient failures; None when asked to stop."""
        if body is None:
            body = self._encode(part, [d for _, d in drops], [i for _, i in incidents], sender)
        producer = sender[0] if sender else self.queue.batch_producer(part)
        headers = {"X-SE-Producer-Id": producer, "X-SE-Event-Count": str(len(part))}
        delays = _backoff_delays(self.settings.backoff_max)
        while not self._stop.is_set():
            if not self._hold_lease():  # renewed before each send: a slow send cannot lapse it
                return None
            self.counters.batches_sent += 1
            self.counters.events_sent += len(part)
            result = self.transport.send(body, headers)
            self._last_send = time.monotonic()
            outcome = result.outcome(len(part))
            decision = decide(outcome, len(part))
            if decision.action is not Action.BACK_OFF:  # an answer about the events
                self._set_state("ok", "spotify-events collector reachable again; delivery resumed")
                return result
            self.counters.retries += 1
            delay = backoff.full_jitter(next(delays))
            if decision.slow:
                # Retrying soon cannot help until someone fixes the setting: come back slowly.
                delay = random.uniform(self.settings.backoff_max / 2, self.settings.backoff_max)
            if outcome is Outcome.THROTTLED:
                if result.retry_after is not None:
                    # as asked, but never a tight loop on "Retry-After: 0" or a past date
                    delay = max(min(result.retry_after, MAX_RETRY_AFTER), delay, MIN_RETRY_DELAY)
                self._set_state(
                    "throttled",
                    f"spotify-events collector throttling ({result.describe()}); "
                    f"waiting {delay:.1f}s as asked",
                )
            elif outcome is Outcome.UNAUTHORIZED:
                self._set_state(
                    "unauthorized",
                    f"spotify-events collector refused our credentials ({result.describe()}): "
                    "check SPOTIFY_EVENTS_TOKEN; events are kept in the queue",
                    level=logging.ERROR,
                )
            elif outcome is Outcome.WRONG_ENDPOINT or outcome is Outcome.NOT_A_COLLECTOR:
                self._set_state(
                    outcome.value,
                    f"spotify-events: {result.describe()}; events are kept in the queue "
                    f"and retried every {self.settings.backoff_max:g}s or so",
                    level=logging.ERROR,
                )
            else:
                self._set_state(
                    "unreachable",
                    f"spotify-events collector unreachable ({result.describe()}); "
                    "events are kept in the queue and retried",
                )
            self._note_error(result.describe())
            # sleep in the stop event so close() can cut a backoff short; keep the lease fresh
            slept = 0.0
            while slept < delay and not self._stop.is_set():
                chunk = min(delay - slept, self.settings.lease_ttl / 3)
                self._stop.wait(chunk)
                slept += chunk
                if not self._hold_lease():
                    return None  # someone else took over the queue; let them ship
        return None

    def _encode(
        self,
        part: Sequence[QueuedEvent],
        drops: list[DropNotice],
        incidents: list[dict[str, Any]],
        sender: Sender | None = None,
    ) -> bytes:
        producer, next_seq = sender or self.queue.producer_for(part)
        batch = WireBatch(
            producer_id=producer,
            next_seq=next_seq,
            drops=drops,
            service=self.settings.service,
            host=self.settings.host,
            sdk_version=self.settings.sdk_version,
            incidents=incidents,
        )
        if isinstance(part, QueuedBatch):  # blocks go as they are stored
            return encode_batch(batch, encoded=join_envelopes(part.encoded()))
        return encode_batch(batch, envelopes=map(_ENVELOPE_FIELDS, part))

    def _accept(
        self, part: Sequence[QueuedEvent], drops: list[tuple[int, DropNotice]], result: SendResult
    ) -> None:
        rejections = sort_rejections(part, result.body)
        held = rejections.held
        rejected = sum(
            self._dead_letter(events, reason, notify_collector=False)
            for reason, events in rejections.dead_letters.items()
        )
        if held:
            self._hold(held, rejections.hold_reason)
        # Counted before the queue forgets the events: flush() watches the queue, so a
        # caller that sees flush() return True also sees them in stats().
        body = result.body or {}
        acknowledged = len(part) - len(held)  # held ones come back later
        self.counters.acknowledged += acknowledged
        self.counters.duplicates += int(body.get("duplicates", 0) or 0)
        self.counters.last_success = time.time()
        if not part:
            self.counters.heartbeats += 1
        if part:
            try:
                deleted = self.queue.ack_batch(part, keep=[e.id for e in held])
            except QueueError:
                # Still queued (another process held the lock, close() cut the wait): they
                # are sent again and counted when that answer is acknowledged.
                self.counters.acknowledged -= acknowledged
                raise
            # Those a full queue evicted while the batch was out are counted in dropped.
            self.counters.acknowledged -= acknowledged - rejected - deleted
            held_keys = {(e.event_type, e.fingerprint) for e in held}
            schemas = (
                part.schemas()
                if isinstance(part, QueuedBatch)
                else {(e.event_type, e.fingerprint) for e in part}
            )
            self._release_holds(schemas - held_keys)
        if drops:
            self.queue.mark_drops_reported(drops)
        with self._acked:
            self._acked.notify_all()

    def _hold(self, events: Sequence[QueuedEvent], reason: str) -> None:
        """Keep events whose schema the collector lacks; retry them with capped backoff."""
        self.queue.hold(events, reason, self._hold_delay)
        by_schema: dict[tuple[str, bytes], int] = {}
        for e in events:
            by_schema[(e.event_type, e.fingerprint)] = (
                by_schema.get((e.event_type, e.fingerprint), 0) + 1
            )
        for (event_type, fingerprint), n in by_schema.items():
            message = (
                f"the collector does not know schema {event_type} (fingerprint "
                f"{fingerprint.hex()}): deploy it to the collector"
            )
            self._note_error(message)
            if (event_type, fingerprint) in self._held_reported:
                continue
            self._held_reported.add((event_type, fingerprint))
            logger.error(
                "spotify-events: %s. %d %s event(s) so far are held in the queue and retried "
                "(at most every %gs) until it does; flush() returns False meanwhile",
                message,
                n,
                event_type,
                self.settings.hold_retry_max,
            )

    def _hold_delay(self, attempts: int) -> float:
        return float(
            min(self.settings.hold_retry_max, self.settings.backoff_max * 2 ** (attempts - 1))
        )

    def _release_holds(self, accepted: set[tuple[str, bytes]]) -> None:
        """Schemas the collector took events of in this batch are no longer held."""
        self.queue.release_holds(accepted)
        for event_type, fingerprint in sorted(self._held_reported & accepted):
            logger.info(
                "spotify-events: the collector now accepts schema %s (fingerprint %s); "
                "held events are being delivered",
                event_type,
                fingerprint.hex(),
            )
        self._held_reported -= accepted

    def _dead_letter(
        self, events: Sequence[QueuedEvent], reason: str, *, notify_collector: bool
    ) -> int:
        """Dead-letter those of ``events`` still queued; how many that was (see
        :meth:`~.queue.outbox.QueueOutbox.dead_letter`: another shipper of the file may
        have dead-lettered them already, a full queue evicted them)."""
        moved = self.queue.dead_letter(events, reason, notify_collector=notify_collector)
        if not moved:
            return 0
        self.counters.dead_lettered[reason] = self.counters.dead_lettered.get(reason, 0) + moved
        logger.warning(
            "spotify-events: collector rejected %d %s event(s) (seq %d..%d): %s; moved to dead letters",
            moved,
            events[0].event_type,
            events[0].seq,
            events[-1].seq,
            reason,
        )
        with self._acked:
            self._acked.notify_all()
        return moved

    def _set_state(self, state: str, message: str, level: int = logging.WARNING) -> None:
        if state == self._state:
            return
        if state == "ok":
            logger.info(message)
        else:
            logger.log(level, message)
        self._state = state

    def _note_error(self, message: str) -> None:
        self.counters.last_error = message


class _Prepared(NamedTuple):
    after_id: int
    events: Sequence[QueuedEvent]
    body: bytes


class _Prefetcher:
    """Reads and encodes the next batch while the current one is on the wire.

    Sends stay strictly one at a time and in queue order (acks too); only the
    preparation of batch N+1 overlaps the collector's work on batch N, which the
    shipper would otherwise wait out idle. Measured end to end to the collector:
    see benchmarks/RESULTS.md. A prepared batch is used only if batch N has left
    the queue by then (acked or dead-lettered) and no drop notice or incident is
    waiting to ride along; otherwise it is thrown away and the head is read afresh.
    """

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper
        self._cond = threading.Condition(threading.Lock())
        self._wanted: int | None = None  # prepare the batch after this event id
        self._busy = False
        self._ready: _Prepared | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def request(self, after_id: int) -> None:
        with self._cond:
            if self._stopped:
                return
            self._wanted, self._ready = after_id, None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="spotify-events-prefetch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def take(self) -> _Prepared | None:
        """The prepared batch, if it still starts at the queue's head."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            ready, self._ready, self._wanted = self._ready, None, None
        queue = self.shipper.queue
        if ready is None or queue.has_events_through(ready.after_id):
            return None
        return ready

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        shipper = self.shipper
        while True:
            with self._cond:
                while self._wanted is None and not self._stopped:
                    self._cond.wait()
                if self._stopped or self._wanted is None:
                    return
                after_id = self._wanted
                self._wanted, self._busy = None, True
            prepared = None
            try:
                events = shipper.queue.read_shipment(
                    after_id=after_id,
                    max_events=shipper.settings.max_events,
                    max_bytes=shipper.settings.max_bytes,
                )
                if (
                    len(events) >= shipper.settings.max_events
                ):  # only full batches: no linger skipped
                    prepared = _Prepared(after_id, events, shipper._encode(events, [], []))
            except Exception:  # a read or encode problem: the shipper will meet it itself
                logger.debug("prefetch failed", exc_info=True)
            with self._cond:
                self._busy = False
                if self._wanted is None:  # not superseded meanwhile
                    self._ready = prepared
                self._cond.notify_all()


def last_id(events: Sequence[QueuedEvent]) -> int:
    """The id of the last of ``events`` (a shipment's without decoding its blocks)."""
    return events.last_id if isinstance(events, QueuedBatch) else events[-1].id


def _backoff_delays(cap: float) -> Iterator[float]:
    delays = backoff.expo(base=2, factor=0.1, max_value=cap)
    next(delays)  # the generator yields a priming None first
    return delays


def _reason(result: SendResult, default: str) -> str:
    body = result.body or {}
    reason = body.get("error") or body.get("reason")
    return f"HTTP {result.status}: {reason}" if reason else f"HTTP {result.status}: {default}"
