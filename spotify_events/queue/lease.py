"""The shipping lease: only one process at a time sends from a queue file; and what
the other processes tell its holder through the file (a flush asking to ship now)."""

from __future__ import annotations

import json

from .rows import set_meta
from .store import QueueStore

#: The meta row a flush in a process that does not ship writes: the marks it waits for.
SHIP_REQUEST = "ship_through"


class QueueLease(QueueStore):
    """A named row with a holder and an expiry on :attr:`clock`'s time."""

    def acquire_lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the shipping lease; False while another live holder has it."""
        now = self.clock()
        with self.atomic() as conn:
            row = conn.execute(
                "SELECT holder, expires_at FROM lease WHERE name = 'shipper'"
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO lease (name, holder, expires_at) VALUES ('shipper', ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (holder, now + ttl),
            )
        return True

    def release_lease(self, holder: str) -> None:
        with self.atomic() as conn:
            conn.execute("DELETE FROM lease WHERE name = 'shipper' AND holder = ?", (holder,))

    def lease_holder(self) -> str | None:
        rows = self._read(
            "SELECT holder FROM lease WHERE name = 'shipper' AND expires_at > ?", (self.clock(),)
        )
        return str(rows[0][0]) if rows else None

    def request_shipping(self, last_id: int, last_drop_id: int) -> None:
        """Ask the lease holder, whichever process it is, to ship events up to ``last_id``
        and drop records up to ``last_drop_id`` without waiting out its linger: what a
        flush does when another process (an agent) ships this file. One row, overwritten
        by the next request; a holder that predates it never reads it and ships on its
        linger as before."""
        with self.atomic() as conn:
            set_meta(conn, [(SHIP_REQUEST, json.dumps([last_id, last_drop_id]))])

    def shipping_request(self) -> tuple[int, int] | None:
        """The marks of the last :meth:`request_shipping`, while it names an event still
        queued or a drop record not yet reported. Once those have shipped the request asks
        nothing more, so later events linger as usual without anyone clearing it."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (SHIP_REQUEST,))
        if not rows:
            return None
        last_id, last_drop_id = json.loads(rows[0][0])
        (pending,) = self._read(
            "SELECT EXISTS (SELECT 1 FROM events WHERE id <= ?) "
            "OR EXISTS (SELECT 1 FROM blocks WHERE first_id <= ?) "
            "OR EXISTS (SELECT 1 FROM drops WHERE id <= ?)",
            (last_id, last_id, last_drop_id),
        )
        return (int(last_id), int(last_drop_id)) if pending[0] else None

    def data_version(self) -> int:
        """A number that changes whenever another connection, in this process or another,
        has committed to the file since this one last asked (SQLite's ``PRAGMA
        data_version``: read from shared memory in WAL mode, no page read). How a
        lingering holder notices other processes' commits without a query per look."""
        return int(self._read("PRAGMA data_version")[0][0])
