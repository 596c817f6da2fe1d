"""DurableQueue: the on-disk write-ahead queue between ``log()`` and the network.

One SQLite file in WAL mode owns everything that must survive the process:

* the producer id (a UUID minted once per file; the collector's ledger key) and
  the file's home (host, path, inode) beside it: a file that finds itself
  elsewhere (a copied image, a restored backup on a second host) mints a new
  producer id for the events logged from then on, so two copies never number
  different events alike; events queued before the copy keep the old id (both
  copies hold the very same events, which the collector then dedupes), and an
  incident tells the collector,
* the next sequence number per event type (assigned inside the committing
  transaction, so numbers are contiguous from 1 and never reused, across drains,
  restarts and processes sharing the file),
* the events themselves, in commit order: a commit group as a block of encoded
  envelopes, a single event (or one of an older file) as a row,
* drop records (sequence ranges dropped on purpose, with the reason, until the
  collector has been told),
* dead letters (events the collector rejected),
* holds: (event type, schema fingerprint) pairs the collector does not know yet;
  their events stay in ``events`` (same ids, same sequence numbers) but are
  skipped by reads until the hold's ``next_try``, then offered again, and
* the shipping lease (so only one process at a time sends from the file).

The layout is fixed by ``FORMAT_VERSION`` (PRAGMA user_version) and
``APPLICATION_ID``; the parts that read and write it:

* :mod:`.store`: the connection, the file's identity and home, migration, transactions;
* :mod:`.events`: append (writer thread), read and acknowledge (shipper thread);
* :mod:`.blocks`: commit groups stored as encoded envelopes, and exploding them into rows;
* :mod:`.outbox`: drops, incidents, dead letters, holds;
* :mod:`.lease`: the shipping lease;
* :mod:`.files` and :mod:`.restore`: the file as a file (path checks, quarantine,
  restoring a deleted or replaced file from the open connection);
* :mod:`.rows`: the row value types and the SQL the parts share.
"""

from __future__ import annotations

from collections.abc import Callable

from .blocks import QueuedBatch
from .events import QueueEvents
from .files import check_queue_path, quarantine
from .lease import QueueLease
from .outbox import QueueOutbox
from .restore import QueueRestore
from .rows import (
    DROP_BUFFER_FULL,
    DROP_QUEUE_FULL,
    DROP_REENTERED,
    DROP_WRITE_FAILED,
    INSERT_CHUNK,
    ROW_OVERHEAD,
    AppendResult,
    Hold,
    PendingEvent,
    PendingRow,
    QueueDepth,
    QueuedEvent,
)
from .store import APPLICATION_ID, FORMAT_VERSION

__all__ = [
    "APPLICATION_ID",
    "DROP_BUFFER_FULL",
    "DROP_QUEUE_FULL",
    "DROP_REENTERED",
    "DROP_WRITE_FAILED",
    "FORMAT_VERSION",
    "INSERT_CHUNK",
    "ROW_OVERHEAD",
    "AppendResult",
    "DurableQueue",
    "Hold",
    "PendingEvent",
    "PendingRow",
    "QueueDepth",
    "QueuedBatch",
    "QueuedEvent",
    "check_queue_path",
    "quarantine",
]


class DurableQueue(QueueEvents, QueueOutbox, QueueLease, QueueRestore):
    """A bounded, multi-process-safe SQLite queue of encoded events.

    One instance is one connection (:class:`~.store.QueueStore`) seen through the
    queue's roles: the events (:mod:`.events`), the outbox of drops, incidents, dead
    letters and holds (:mod:`.outbox`), the shipping lease (:mod:`.lease`) and
    restoring the file under it (:mod:`.restore`).
    """

    def shipping_marks(self) -> tuple[int, int]:
        """(id of the newest queued event, id of the newest drop record not yet reported):
        what :meth:`shipped_through` is later asked about, and a flush's ship request names."""
        return self.max_event_id(), self.last_drop_id()

    def shipped_through(self, last_id: int, last_drop_id: int) -> bool:
        """Whether every event up to ``last_id`` has left the queue (acknowledged or
        dead-lettered) and every drop record up to ``last_drop_id`` reached the
        collector."""
        if self.has_events_through(last_id):
            return False
        pending = self.unreported_drops(1)
        return not pending or pending[0][0] > last_drop_id

    def shipped_check(self, marks: tuple[int, int]) -> Callable[[], bool]:
        """What ``flush()``, an agent's drain and ``queue ship`` wait for, from
        :meth:`shipping_marks`: :meth:`shipped_through` those marks, and once the events
        have left, the drop records there were by then. An event also leaves when a full
        queue evicts it (``drop_policy`` oldest), and its drop record, committed with the
        eviction, is newer than the marks: the collector must hear of it too. So must
        it of the incidents there were when the check was made."""
        last_id, last_drop_id = marks
        last_incident_id = self.last_incident_id()
        left = False

        def check() -> bool:
            nonlocal left, last_drop_id
            if not left:
                if self.has_events_through(last_id):
                    return False
                left = True
                last_drop_id = max(last_drop_id, self.last_drop_id())
            if not self.shipped_through(last_id, last_drop_id):
                return False
            return not last_incident_id or not self.has_incidents_through(last_incident_id)

        return check
