"""Hourly buckets: opened on first use, closed once their hour plus the lateness has
passed (a marker file with the summary; a closed bucket is never written again).

A bucket past its hour takes no more events whether or not it is closed yet (they go
to the current hour, counted as skewed), so one whose marker cannot be written (its
directory made read-only) waits and is tried again, instead of failing every batch.
"""

from __future__ import annotations

import os
from typing import Any

from .buckets import bucket_dir, read_marker, write_marker
from .ledger import BucketState, PartState
from .parts import PartFiles

#: How long a bucket whose marker could not be written waits before the next try.
MARKER_RETRY_SECONDS = 60.0


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

    def _due_at(self, b: BucketState) -> float:
        """When to close ``b``: its deadline, or the next try of a marker that failed."""
        retry = self._marker_retry.get((b.event_type, b.hour), 0.0)
        return max(self._close_deadline(b.hour), retry)

    def _close_due(self, now: float) -> int:
        if now < self._next_close_at:  # the per-batch fast path: nothing is due yet
            return 0
        due = [b for b in self._open_buckets.values() if self._due_at(b) <= now]
        closed = []
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
            if os.path.isdir(directory) and not self._wrote_marker(b, directory, summary, now):
                continue
            b.closed, b.closed_at, b.summary = True, now, summary
            closed.append(b)
        if closed:
            self.ledger.save(buckets=closed)
            for b in closed:
                del self._open_buckets[(b.event_type, b.hour)]
        self._next_close_at = min(
            (self._due_at(b) for b in self._open_buckets.values()), default=float("inf")
        )
        return len(closed)

    def _wrote_marker(
        self, b: BucketState, directory: str, summary: dict[str, Any], now: float
    ) -> bool:
        """Write ``b``'s marker; if the directory refuses it, say so (once) and retry later."""
        key = (b.event_type, b.hour)
        try:
            write_marker(directory, summary, self.config.modes, self.layout.marker)
        except OSError as exc:
            if key not in self._marker_retry:
                self._collector_incident(
                    self.state,
                    "marker_not_written",
                    f"{bucket_dir(b.event_type, b.hour)} cannot take its {self.layout.marker} "
                    f"({exc.strerror}); the bucket takes no more events and stays open, its "
                    f"marker tried again every {MARKER_RETRY_SECONDS:g} s",
                )
            self._marker_retry[key] = now + MARKER_RETRY_SECONDS
            return False
        self._marker_retry.pop(key, None)
        return True

    def _summary(self, b: BucketState, parts: list[PartState], now: float) -> dict[str, Any]:
        from .report import bucket_summary

        return bucket_summary(b, parts, self.state, now=now, grace=self.config.grace_period)
