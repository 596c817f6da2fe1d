"""The shipping lease: only one process at a time sends from a queue file."""

from __future__ import annotations

from .store import QueueStore


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
