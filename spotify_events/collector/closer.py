"""Hourly buckets: opened on first use, closed once their hour plus the lateness has
passed (a marker file with the summary; a closed bucket is never written again)."""

from __future__ import annotations

import os
from typing import Any

from .buckets import bucket_dir, read_marker, write_marker
from .ledger import BucketState, PartState
from .parts import PartFiles


class BucketCloser(PartFiles):
    """The open buckets and the next time one is due to close."""

    def _bucket(
        self, etype: str, hour: int, dirty: dict[tuple[str, int], BucketState]
    ) -> BucketState:
        """The bucket of (type, hour) as a group commit sees it, recorded in ``dirty``.

        A bucket not yet in the state is made here but joins the state (and the buckets
        due to close) only when :meth:`_keep` is called for it, once a run has counted
        something into it: a run refused whole (too many hours, conflicts only) leaves
        no bucket behind. Until then ``dirty`` holds it, so the group finds the same
        object again. A bucket closed under a ledger that was lost (a marker on disk)
        joins the state at once: that is a fact of the disk, not of the batch.
        """
        key = (etype, hour)
        b = self.state.buckets.get(key) or dirty.get(key)
        if b is None:
            b = BucketState(etype, hour)
            marker = read_marker(
                os.path.join(self.data_dir, bucket_dir(etype, hour)), self.layout.marker
            )
            if marker is not None:  # closed under a ledger that was lost: still immutable
                b.closed, b.closed_at, b.summary = True, marker.get("closed_at"), marker
                self.state.buckets[key] = b
        dirty[key] = b
        return b

    def _keep(self, b: BucketState) -> None:
        """Put a bucket made by :meth:`_bucket` into the state and the buckets due to close."""
        key = (b.event_type, b.hour)
        if key not in self.state.buckets:
            self.state.buckets[key] = b
            self._open_buckets[key] = b
            self._next_close_at = min(self._next_close_at, self._close_deadline(b.hour))

    def _close_deadline(self, hour: int) -> float:
        return (hour + 1) * 3600 + self.config.lateness

    def _close_due(self, now: float) -> int:
        if now < self._next_close_at:  # the per-batch fast path: nothing is due yet
            return 0
        due = [b for b in self._open_buckets.values() if self._close_deadline(b.hour) <= now]
        for b in due:
            directory = os.path.join(self.data_dir, bucket_dir(b.event_type, b.hour))
            parts = [
                p
                for p in self.state.parts.values()
                if p.event_type == b.event_type and p.hour == b.hour
            ]
            for p in parts:
                pf = self._files.pop(p.path, None)
                if pf is not None:
                    pf.close()
                self._active.pop((p.event_type, p.hour, p.fingerprint), None)
            summary = self._summary(b, parts, now)
            summary["closed"] = True
            summary["closed_at"] = now
            if os.path.isdir(directory):
                write_marker(directory, summary, self.config.modes, self.layout.marker)
            b.closed, b.closed_at, b.summary = True, now, summary
        if due:
            self.ledger.save(buckets=due)
            for b in due:
                del self._open_buckets[(b.event_type, b.hour)]
        self._next_close_at = min(
            (self._close_deadline(b.hour) for b in self._open_buckets.values()),
            default=float("inf"),
        )
        return len(due)

    def _summary(self, b: BucketState, parts: list[PartState], now: float) -> dict[str, Any]:
        from .report import bucket_summary

        return bucket_summary(b, parts, self.state, now=now, grace=self.config.grace_period)
