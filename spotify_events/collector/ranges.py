"""RangeSet: a set of sequence numbers stored as sorted, disjoint, inclusive ranges.

The ledger keeps, per (producer, event type), every sequence number it has seen.
Producers number events 1, 2, 3, ... and ship them mostly in order, so the set
is almost always one range plus a few holes; storing ranges keeps it a few
bytes per stream no matter how many events arrive, and the common case (the
next number appended to the last range) is O(1).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable, Iterator


class RangeSet:
    """Integers as sorted disjoint inclusive ``[start, end]`` ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add_range(start, end)

    # -- queries --------------------------------------------------------------
    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect_right(self._starts, n) - 1
        return i >= 0 and self._ends[i] >= n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=False))

    def __len__(self) -> int:
        """Number of ranges (not of integers; see :meth:`count`)."""
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def count(self) -> int:
        """How many integers the set holds."""
        return sum(e - s + 1 for s, e in zip(self._starts, self._ends, strict=False))

    def max(self) -> int | None:
        return self._ends[-1] if self._ends else None

    def copy(self) -> RangeSet:
        new = RangeSet()
        new._starts = list(self._starts)
        new._ends = list(self._ends)
        return new

    # -- mutation -------------------------------------------------------------
    def add(self, n: int) -> bool:
        """Add one number; False when it was already present (a duplicate)."""
        ends = self._ends
        if ends and n == ends[-1] + 1:  # the common case: the next number in order
            ends[-1] = n
            return True
        starts = self._starts
        i = bisect_right(starts, n) - 1
        if i >= 0 and ends[i] >= n:
            return False
        joins_left = i >= 0 and ends[i] == n - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == n + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = n
        elif joins_right:
            starts[i + 1] = n
        else:
            starts.insert(i + 1, n)
            ends.insert(i + 1, n)
        return True

    def add_range(self, start: int, end: int) -> None:
        """Add every integer in ``[start, end]`` (merging what overlaps or touches)."""
        if end < start:
            return
        starts, ends = self._starts, self._ends
        lo = bisect_right(ends, start - 2)  # first range that ends at or after start-1
        hi = bisect_right(starts, end + 1)  # ranges before hi start at or before end+1
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    def update(self, other: RangeSet) -> None:
        for start, end in other:
            self.add_range(start, end)

    # -- set algebra ----------------------------------------------------------
    def union(self, *others: RangeSet) -> RangeSet:
        new = self.copy()
        for other in others:
            new.update(other)
        return new

    def difference(self, other: RangeSet) -> RangeSet:
        """Numbers in ``self`` that are not in ``other``."""
        out: list[tuple[int, int]] = []
        theirs = list(other)
        j = 0
        for start, end in self:
            cur = start
            while j < len(theirs) and theirs[j][1] < cur:
                j += 1
            k = j
            while k < len(theirs) and theirs[k][0] <= end and cur <= end:
                o_start, o_end = theirs[k]
                if o_start > cur:
                    out.append((cur, o_start - 1))
                cur = max(cur, o_end + 1)
                k += 1
            if cur <= end:
                out.append((cur, end))
        return RangeSet(out)

    def clipped(self, low: int, high: int) -> RangeSet:
        """The part of the set inside ``[low, high]``."""
        return RangeSet((max(s, low), min(e, high)) for s, e in self if e >= low and s <= high)

    # -- storage --------------------------------------------------------------
    def to_list(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    @classmethod
    def from_list(cls, data: Iterable[Iterable[int]]) -> RangeSet:
        pairs = [tuple(pair) for pair in data]
        return cls((int(p[0]), int(p[1])) for p in pairs)

    def to_json(self) -> str:
        return json.dumps(self.to_list(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RangeSet:
        return cls.from_list(json.loads(text))
