"""Pipeline: the one-way path of an event, built from a ClientConfig and wired once.

It owns the parts between ``log()`` and the collector: the queue file opened
twice (the writer's connection and the shipper's, so appends and reads do not
serialise on one Python lock; a damaged file is quarantined at open), the
:class:`QueueWriter` that group-commits into it, the :class:`Shipper` that sends
from it, and the wiring between them (a commit wakes the shipper; the writer
thread puts back a queue file deleted under it). "Is everything up to here
delivered?" is one question, :meth:`Pipeline.delivered_through`. The client on
top keeps the public API, encoding, close idempotence and the stats.
"""

from __future__ import annotations

import functools
import logging
import time

from .config import ClientConfig
from .errors import QueueCorruptError, QueueError
from .lifecycle import Lifecycle
from .queue import DurableQueue, QueueDepth, quarantine
from .settings import QueueSettings, Shipping
from .shipper import Shipper
from .transport import Transport
from .writer import QueueWriter

logger = logging.getLogger("spotify_events")


class Pipeline:
    """Queues, writer, shipper and their wiring for one client."""

    def __init__(self, config: ClientConfig, transport: Transport) -> None:
        queue_settings = config.queue_settings()
        self.writer_queue = _open_or_quarantine(config.queue_path, queue_settings)
        self.shipper_queue = DurableQueue(config.queue_path, queue_settings)
        self.writer = QueueWriter(self.writer_queue, config.writer_settings())
        self.shipper = Shipper(self.shipper_queue, transport, config.shipper_settings())
        self.transport = transport
        # With shipping="agent" a `spotify-events agent` process holds the lease and sends;
        # the shipper here never starts a thread and only watches the queue drain.
        self.ships = config.shipping is Shipping.IN_PROCESS
        self.wire()
        self.writer.file_check = functools.partial(
            _restore_queue_file, self.writer_queue, self.shipper_queue
        )

    def wire(self) -> None:
        """A commit wakes the shipper (again after a fork gave both fresh primitives)."""
        self.writer.on_commit = self.shipper.committed

    def parts(self) -> list[Lifecycle]:
        """The parts with process state, in the order their fork hooks must run: the
        queues quiesce SQLite first; a transport that keeps sockets resets last."""
        parts: list[Lifecycle] = [self.writer_queue, self.shipper_queue, self.writer, self.shipper]
        if isinstance(self.transport, Lifecycle):
            parts.append(self.transport)
        return parts

    def start(self) -> None:
        self.writer.start()
        if self.ships:
            self.shipper.start()

    def delivered_through(self, timeout: float) -> bool:
        """Wait until every event submitted so far (and every drop noted so far) is
        acknowledged by the collector or dead-lettered; False if ``timeout`` passed.
        With an agent shipping, "acknowledged" is seen as the events leaving the queue
        file: the agent deletes them only on the collector's acknowledgement."""
        deadline = time.monotonic() + timeout
        if not self.writer.commit_through(self.writer.last_ticket, timeout):
            return False
        # Both connections: the writer and shipper threads hold theirs through their own
        # waits for another process's lock, which this wait must not outlast.
        with self.writer_queue.waiting_until(deadline), self.shipper_queue.waiting_until(deadline):
            marks = self.writer_queue.shipping_marks()
            done = self.shipper_queue.shipped_check(marks)
            if not (self.ships and self.shipper.holds_lease()) and not done():
                self._ask_holder(marks)
            return self.shipper.wait_acked(done, max(0.0, deadline - time.monotonic()))

    def _ask_holder(self, marks: tuple[int, int]) -> None:
        """Another process ships this file (an agent, or the lease holder among processes
        sharing it): ask it through the file to ship these marks without its linger; our
        own shipper's hurry() cannot reach it. Best effort: if the request cannot be
        written, the holder still ships on its linger and flush waits as before. Written
        through the writer's connection, whose wait for the write lock close() has cut
        to its own time (the shipper's is not cut: its thread may still be running)."""
        try:
            self.writer_queue.request_shipping(*marks)
        except QueueError as exc:
            logger.debug("could not ask the shipping process to hurry: %s", exc)

    def depth(self) -> QueueDepth:
        return self.writer_queue.depth()

    def held(self) -> dict[str, int]:
        """Queued events per type whose schema the collector lacks."""
        held: dict[str, int] = {}
        for hold in self.writer_queue.holds():
            held[hold.event_type] = held.get(hold.event_type, 0) + hold.events
        return held

    def close_queues(self) -> None:
        self.writer_queue.close()
        self.shipper_queue.close()


def _open_or_quarantine(path: str, settings: QueueSettings) -> DurableQueue:
    """Open the queue; a damaged file is moved aside (never deleted), a fresh
    queue starts, and the incident travels to the collector with the next batch.
    Foreign or newer files raise: they are somebody's data, not ours to move."""
    try:
        return DurableQueue(path, settings, verify=True)
    except QueueCorruptError as exc:
        moved = quarantine(path)
        logger.error(
            "spotify-events: queue file %s is damaged (%s); moved it to %s and started a fresh "
            "queue. Events still in the old file are not shipped; the collector is told.",
            path,
            exc,
            moved,
        )
        queue = DurableQueue(path, settings)
        queue.record_incident("queue_quarantined", f"{exc}; moved to {moved}")
        return queue


def _restore_queue_file(queue: DurableQueue, peer: DurableQueue) -> None:
    """The writer thread's periodic check: a queue file deleted or replaced under a
    running client is put back from the open connection, with everything in it."""
    if queue.file_state() is None:
        return
    detail = queue.restore_file([peer])
    if detail is not None:
        logger.error(
            "spotify-events: %s. No event was lost; delete or move a queue file only while "
            "no process uses it.",
            detail,
        )
