"""RangeSet: a set of sequence numbers stored as sorted, disjoint, inclusive ranges.

The ledger keeps, per (producer, event type), every sequence number it has seen.
Producers number events 1, 2, 3, ... and ship them mostly in order, so the set
is almost always one range plus a few holes; storing ranges keeps it a few
bytes per stream no matter how many events arrive, and the common case (the
next number appended to the last range) is O(1).

Numbers sent out of order with gaps between them (hostile, or a producer that drops
every other event) make one range each, and opening a range in the middle shifts
the list after it: a memmove of the set's size. So a caller that takes numbers from
clients passes ``limit``: a number or range that would open a new range in a set
already holding ``limit`` ranges raises :class:`TooManyRanges` and changes nothing.
A lookup is a bisection, an insert therefore O(log n + limit), and merging two sets
is one linear pass.
"""

from __future__ import annotations

import heapq
import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from ..errors import SpotifyEventsError


class TooManyRanges(SpotifyEventsError, ValueError):
    """Adding the number would open a range past the set's ``limit``; nothing changed."""


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
    def add(self, n: int, limit: int | None = None) -> bool:
        """Add one number; False when it was already present (a duplicate).

        TooManyRanges if it joins no range and the set holds ``limit`` ranges already."""
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
            if limit is not None and len(starts) >= limit:
                raise TooManyRanges(f"{n} would open range {len(starts) + 1} of at most {limit}")
            starts.insert(i + 1, n)
            ends.insert(i + 1, n)
        return True

    def add_range(self, start: int, end: int, limit: int | None = None) -> None:
        """Add every integer in ``[start, end]`` (merging what overlaps or touches).

        TooManyRanges if it touches no range and the set holds ``limit`` ranges already."""
        if end < start:
            return
        starts, ends = self._starts, self._ends
        if ends and start == ends[-1] + 1:  # in order, right after the last range
            ends[-1] = end
            return
        lo = bisect_right(ends, start - 2)  # first range that ends at or after start-1
        hi = bisect_right(starts, end + 1)  # ranges before hi start at or before end+1
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
        elif limit is not None and len(starts) >= limit:
            raise TooManyRanges(
                f"{start}..{end} would open range {len(starts) + 1} of at most {limit}"
            )
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    def update(self, other: RangeSet) -> None:
        """Add every number of ``other``: one merge of the two sorted lists."""
        if not other._starts:
            return
        if not self._starts or other._starts[0] > self._ends[-1] + 1:
            self._starts += other._starts
            self._ends += other._ends
            return
        starts: list[int] = []
        ends: list[int] = []
        for start, end in heapq.merge(self, other):
            if ends and start <= ends[-1] + 1:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        self._starts, self._ends = starts, ends

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
        new = RangeSet()
        lo = bisect_left(self._ends, low)  # the first range ending at or after low
        hi = bisect_right(self._starts, high)  # ranges before hi start at or before high
        if lo < hi:
            new._starts, new._ends = self._starts[lo:hi], self._ends[lo:hi]
            new._starts[0] = max(new._starts[0], low)
            new._ends[-1] = min(new._ends[-1], high)
        return new

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
