"""Loss accounting: from a stream's ledger state to received / dropped / rejected / gaps / lost.

Pure functions over :class:`~.ledger.StreamState`, shared by the report, the
``_CLOSED.json`` marker and the metrics, so every place counts the same way.
Precedence for a sequence number: received, else rejected (by the collector or a
``rejected:`` drop notice), else dropped (drop notice), else missing. A missing
number is an open gap until it has been below the announced watermark for the
grace period, then lost; one the producer holds (its schema was unknown to the
collector, ``held`` marks) stays an open gap however old: it is in the producer's
queue, waiting for the schema to be deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ledger import MARK_KINDS, StreamState
from .ranges import RangeSet


@dataclass
class Accounting:
    received: int = 0
    dropped: int = 0
    rejected: int = 0
    open_gaps: int = 0
    lost: int = 0
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    gap_ranges: list[list[int]] = field(default_factory=list)  # first few missing ranges

    @property
    def accounted(self) -> int:
        return self.received + self.dropped + self.rejected + self.open_gaps + self.lost


def account(
    stream: StreamState,
    now: float,
    grace: float,
    *,
    low: int = 1,
    high: int | None = None,
    max_gap_ranges: int = 20,
) -> Accounting:
    """Count a stream's numbers in ``[low, high]`` (default: 1 .. watermark-1)."""
    if high is None:
        high = stream.next_seq - 1
    out = Accounting()
    if high < low:
        return out
    received = stream.received.clipped(low, high)
    out.received = received.count()
    by_kind = {kind: RangeSet() for kind in MARK_KINDS}
    for (kind, _), ranges in stream.marks.items():
        by_kind[kind].update(ranges.clipped(low, high))
    rejects, drops, held = by_kind["reject"], by_kind["drop"], by_kind["held"]
    rejected = rejects.difference(received)
    out.rejected = rejected.count()
    dropped = drops.difference(received).difference(rejected)
    out.dropped = dropped.count()
    # A number under two reasons of one kind (a rejection retried after a restart with
    # another setting, worded differently) counts under the first only.
    told = {"reject": received.copy(), "drop": received.union(rejected)}
    for (kind, reason), ranges in sorted(stream.marks.items()):
        if kind == "held":
            continue
        mine = ranges.clipped(low, high).difference(told[kind])
        told[kind].update(mine)
        n = mine.count()
        if n:
            target = out.rejected_reasons if kind == "reject" else out.dropped_reasons
            target[reason] = target.get(reason, 0) + n
    missing = RangeSet([(low, high)]).difference(received).difference(rejects).difference(drops)
    for start, end in missing:
        if len(out.gap_ranges) < max_gap_ranges:
            out.gap_ranges.append([start, end])
    ageing = missing.difference(held)
    out.open_gaps += missing.count() - ageing.count()
    deadline = now - grace
    for start, end in ageing:
        prev = 1
        for step_next, since in stream.steps:
            a, b = max(start, prev), min(end, step_next - 1)
            if a <= b:
                if since <= deadline:
                    out.lost += b - a + 1
                else:
                    out.open_gaps += b - a + 1
            prev = step_next
            if prev > end:
                break
        if prev <= end:  # above every recorded step: cannot happen, count as open
            out.open_gaps += end - max(start, prev) + 1
    return out


def missing_count(stream: StreamState) -> int:
    """Open gaps plus lost of a whole stream: numbers below the watermark that are
    neither received nor marked. The split between the two moves with the clock,
    their sum only when the stream changes, so it can be kept per stream."""
    high = stream.next_seq - 1
    if high < 1:
        return 0
    marks = [
        ranges.clipped(1, high) for (kind, _), ranges in stream.marks.items() if kind != "held"
    ]
    return high - stream.received.clipped(1, high).union(*marks).count()
