"""Putting our queue file back when someone deletes or replaces it while we run."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import suppress

from .files import file_identity, move_aside
from .rows import insert_incident
from .store import QueueStore


class QueueRestore(QueueStore):
    """Watching and restoring the file under an open queue."""

    def file_state(self) -> str | None:
        """None while ``path`` is still the file our connection opened; else
        ``"deleted"`` or ``"replaced"`` (someone removed or swapped it while we run:
        our open connection still reaches the old file, nobody else will)."""
        if self._identity is None or self._conn is None:
            return None  # not open (forked child, closed): checked again at reopen
        identity = file_identity(self.path)
        if identity == self._identity:
            return None
        return "deleted" if identity is None else "replaced"

    def restore_file(self, peers: Sequence[QueueStore] = ()) -> str | None:
        """Put our file back at ``path`` if it was deleted or replaced; what was done.

        Copies everything through our still-open connection (SQLite's backup API,
        so committed WAL frames come along) into a new file beside ``path``, closes
        our connections and those of ``peers`` (other instances on the same file in
        this process; they reopen on next use) and renames the copy into place.
        A file that replaced ours is moved aside, never deleted. Nothing is lost:
        producer id, sequence numbers, events, drops and dead letters are the same."""
        queues = [self, *peers]
        for queue in queues:
            queue._lock.acquire()
        try:
            state = self.file_state()
            if state is None:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            copy = self.path.with_name(f"{self.path.name}.restoring-{os.getpid()}")
            target = sqlite3.connect(copy)
            try:
                self._connection().backup(target)
            finally:
                target.close()
            for queue in queues:
                conn, queue._conn, queue._cache = queue._conn, None, None
                if conn is not None:
                    with suppress(sqlite3.Error):
                        conn.close()
            aside = None
            if state == "replaced" and self.path.exists():
                aside = move_aside(self.path, f"replaced-{stamp}")
            else:
                for suffix in ("-wal", "-shm"):  # companions of a file that is gone
                    with suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
            os.replace(copy, self.path)
            with self.atomic() as conn:  # reopened: a new inode, and still this file's home
                conn.execute("UPDATE meta SET value = ? WHERE key = 'home'", (self._home(),))
            detail = f"queue file {self.path} was {state} while in use; restored from the open copy"
            if aside is not None:
                detail += f"; the file found in its place was moved to {aside}"
            with self.atomic() as conn:
                insert_incident(conn, f"queue_file_{state}", detail)
            return detail
        finally:
            for queue in reversed(queues):
                queue._lock.release()
