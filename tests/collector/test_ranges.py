"""RangeSet against the obvious model, a Python set of ints.

The ledger's dedupe and the loss report both stand on it: a merge that forgets
the tail of an overlapping range turns received events into "lost" ones, and a
merge that joins non-touching ranges hides a gap.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotify_events.collector.ranges import RangeSet, TooManyRanges


def model(r: RangeSet) -> set[int]:
    return {n for start, end in r for n in range(start, end + 1)}


def assert_canonical(r: RangeSet) -> None:
    """Sorted, each range non-empty, neighbours neither overlapping nor touching."""
    ranges = list(r)
    assert all(start <= end for start, end in ranges), ranges
    assert all(a_end + 1 < b_start for (_, a_end), (b_start, _) in pairwise(ranges)), ranges


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([(1, 5), (3, 10)], [(1, 10)]),  # overlap
        ([(3, 10), (1, 5)], [(1, 10)]),  # overlap, added in the other order
        ([(1, 5), (6, 10)], [(1, 10)]),  # adjacent: touching ranges join
        ([(6, 10), (1, 5)], [(1, 10)]),
        ([(1, 5), (7, 10)], [(1, 5), (7, 10)]),  # one missing number keeps them apart
        ([(1, 10), (3, 4)], [(1, 10)]),  # contained
        ([(3, 4), (1, 10)], [(1, 10)]),  # containing
        ([(5, 5), (5, 5)], [(5, 5)]),  # the same range twice
        ([(1, 2), (4, 5), (7, 8), (3, 6)], [(1, 8)]),  # bridges several
        ([(1, 2), (10, 12), (4, 8)], [(1, 2), (4, 8), (10, 12)]),  # lands between
        ([(1, 2), (10, 12), (3, 9)], [(1, 12)]),  # fills the hole exactly
        ([(5, 4)], []),  # empty
    ],
)
def test_add_range_merges(ranges: list[tuple[int, int]], merged: list[tuple[int, int]]) -> None:
    r = RangeSet()
    for start, end in ranges:
        r.add_range(start, end)
    assert list(r) == merged
    assert list(RangeSet(ranges)) == merged


@pytest.mark.parametrize(
    ("start", "n", "after"),
    [
        ([(1, 3), (5, 7)], 4, [(1, 7)]),  # joins both neighbours
        ([(1, 3), (6, 7)], 4, [(1, 4), (6, 7)]),  # joins the left one
        ([(1, 3), (6, 7)], 5, [(1, 3), (5, 7)]),  # joins the right one
        ([(1, 3), (7, 9)], 5, [(1, 3), (5, 5), (7, 9)]),  # alone
        ([(3, 4)], 1, [(1, 1), (3, 4)]),  # before everything
        ([(3, 4)], 2, [(2, 4)]),
        ([(3, 4)], 5, [(3, 5)]),  # the in-order fast path
    ],
)
def test_add_one_number(start: list[tuple[int, int]], n: int, after: list[tuple[int, int]]) -> None:
    r = RangeSet(start)
    assert r.add(n) is True
    assert list(r) == after
    assert r.add(n) is False  # now a duplicate
    assert list(r) == after


def test_queries_at_range_edges() -> None:
    r = RangeSet([(3, 5), (9, 9)])
    assert [n in r for n in range(1, 11)] == [n in (3, 4, 5, 9) for n in range(1, 11)]
    assert "3" not in r and 3.0 not in r
    assert (len(r), r.count(), r.max(), RangeSet().max()) == (2, 4, 9, None)
    assert r.clipped(4, 9).to_list() == [[4, 5], [9, 9]]
    assert r.clipped(6, 8).to_list() == []
    assert r.clipped(5, 5).to_list() == [[5, 5]]
    assert RangeSet.from_list(r.to_list()) == r == RangeSet.from_json(r.to_json())
    assert r.to_json() == "[[3,5],[9,9]]"  # compact: the ledger stores one per stream
    assert repr(r) == "RangeSet([(3, 5), (9, 9)])"
    assert r != RangeSet([(3, 5)]) and r != [(3, 5), (9, 9)]


ranges_lists = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1] - 1)),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(first=ranges_lists, second=ranges_lists, numbers=st.lists(st.integers(1, 70)))
def test_rangeset_behaves_like_a_set(
    first: list[tuple[int, int]], second: list[tuple[int, int]], numbers: list[int]
) -> None:
    a, b = RangeSet(first), RangeSet(second)
    model_a = {n for s, e in first for n in range(s, e + 1)}
    model_b = {n for s, e in second for n in range(s, e + 1)}
    assert model(a) == model_a and a.count() == len(model_a)
    assert_canonical(a)
    assert model(a.union(b)) == model_a | model_b
    assert_canonical(a.union(b))
    assert model(a.difference(b)) == model_a - model_b
    assert_canonical(a.difference(b))
    assert model(a.clipped(10, 40)) == {n for n in model_a if 10 <= n <= 40}
    assert all((n in a) == (n in model_a) for n in range(0, 72))
    grown, grown_model = a.copy(), set(model_a)
    for n in numbers:
        assert grown.add(n) == (n not in grown_model)
        grown_model.add(n)
        assert_canonical(grown)
    assert model(grown) == grown_model
    assert model(a) == model_a  # copy() shares nothing
    assert a.max() == (max(model_a) if model_a else None)


@settings(max_examples=300, deadline=None)
@given(
    first=ranges_lists,
    adds=st.lists(st.tuples(st.integers(1, 70), st.integers(0, 3), st.booleans()), max_size=30),
    limit=st.integers(1, 6),
)
def test_a_limited_set_never_holds_more_ranges_and_a_refused_add_changes_nothing(
    first: list[tuple[int, int]], adds: list[tuple[int, int, bool]], limit: int
) -> None:
    """The ledger passes a limit so out-of-order numbers with gaps cannot grow a
    stream's ranges (and each insert's cost) without bound: what would open a range
    past it is refused whole, and whatever joins an existing range is still taken."""
    r = RangeSet(first[:limit])
    want = model(r)
    for start, extra, one in adds:
        end = start if one else start + extra
        before = list(r)
        opens = not any(s - 1 <= end and start <= e + 1 for s, e in before)
        try:
            if one:
                r.add(start, limit)
            else:
                r.add_range(start, end, limit)
        except TooManyRanges:
            assert opens and len(before) >= limit and list(r) == before
            continue
        want |= set(range(start, end + 1))
        assert model(r) == want and len(r) <= limit
        assert_canonical(r)
