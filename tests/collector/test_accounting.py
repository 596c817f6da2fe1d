"""Loss accounting at its edges: the grace period ends at an exact instant.

A missing number below the watermark is an open gap while the watermark that
covered it is younger than the grace period, and lost from the instant it is
exactly one grace period old. The clock is a plain float here and a fake clock
through :class:`LocalDelivery`, so both sides of that instant are checked.
"""

from __future__ import annotations

import math
from pathlib import Path

from collector_helpers import END_SONG, BatchMaker, stream

from spotify_events.collector.accounting import account
from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.ledger import StreamState
from spotify_events.collector.ranges import RangeSet
from spotify_events.collector.seam import DeliveryConfig
from spotify_events.schemas import SchemaRegistry

GRACE = 60.0
#: When the watermark rose past the missing numbers (exact in binary floating point).
ANNOUNCED = 1_767_261_600.0
AT_DEADLINE = ANNOUNCED + GRACE
JUST_BEFORE = math.nextafter(AT_DEADLINE, 0.0)  # one clock tick earlier


def _stream_missing_3_and_6_7() -> StreamState:
    st = StreamState("producer-a", END_SONG, received=RangeSet([(1, 2), (4, 5)]))
    st.announce(8, ANNOUNCED, GRACE)
    return st


def test_a_gap_is_open_one_tick_before_the_grace_period_ends() -> None:
    a = account(_stream_missing_3_and_6_7(), JUST_BEFORE, GRACE)
    assert (a.received, a.open_gaps, a.lost) == (4, 3, 0)
    assert a.gap_ranges == [[3, 3], [6, 7]]


def test_a_gap_is_lost_exactly_one_grace_period_after_the_watermark() -> None:
    a = account(_stream_missing_3_and_6_7(), AT_DEADLINE, GRACE)
    assert (a.received, a.open_gaps, a.lost) == (4, 0, 3)
    assert a.accounted == 7


def test_each_watermark_step_starts_its_own_grace_period() -> None:
    st = _stream_missing_3_and_6_7()
    st.announce(10, ANNOUNCED + 30, GRACE)  # 8..9 announced half a grace period later
    a = account(st, AT_DEADLINE, GRACE)
    assert (a.open_gaps, a.lost) == (2, 3)
    a = account(st, math.nextafter(AT_DEADLINE + 30, 0.0), GRACE)
    assert (a.open_gaps, a.lost) == (2, 3)
    a = account(st, AT_DEADLINE + 30, GRACE)
    assert (a.open_gaps, a.lost) == (0, 5)


def test_zero_grace_loses_a_gap_at_the_instant_it_is_announced() -> None:
    st = StreamState("producer-a", END_SONG, received=RangeSet([(1, 1)]))
    st.announce(3, ANNOUNCED, 0.0)
    a = account(st, ANNOUNCED, 0.0)
    assert (a.lost, a.open_gaps) == (1, 0)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_collector_report_turns_a_gap_lost_at_the_exact_deadline(
    tmp_path: Path, collector_registry: SchemaRegistry, maker: BatchMaker
) -> None:
    clock = _Clock(ANNOUNCED)
    delivery = LocalDelivery(
        tmp_path / "data",
        collector_registry,
        config=DeliveryConfig(grace_period=GRACE),
        clock=clock,
    )
    try:
        body = maker.body(maker.envelopes(END_SONG, [1, 2, 4]), next_seq={END_SONG: 5})
        assert delivery.deliver(Ingest(collector_registry, clock=clock).parse(body)).accepted == 3
        clock.now = JUST_BEFORE
        s = stream(delivery.report(), "producer-a", END_SONG)
        assert (s["open_gaps"], s["lost"], s["complete"]) == (1, 0, False)
        assert delivery.missing_events() == 1  # open gaps + lost, for /metrics
        clock.now = AT_DEADLINE
        s = stream(delivery.report(), "producer-a", END_SONG)
        assert (s["open_gaps"], s["lost"], s["gap_ranges"]) == (0, 1, [[3, 3]])
    finally:
        delivery.close()


def test_a_single_number_range_is_counted() -> None:
    """The first event missing (watermark 2) is one open gap, not an empty range."""
    st = StreamState("producer-a", END_SONG)
    st.announce(2, ANNOUNCED, GRACE)
    a = account(st, ANNOUNCED, GRACE)
    assert (a.open_gaps, a.gap_ranges, a.accounted) == (1, [[1, 1]], 1)
    st.received.add(1)
    a = account(st, ANNOUNCED, GRACE, low=1, high=1)
    assert (a.received, a.open_gaps, a.accounted) == (1, 0, 1)


def test_a_number_both_dropped_and_rejected_counts_once_as_rejected() -> None:
    st = StreamState("producer-a", END_SONG, received=RangeSet([(1, 2)]))
    st.mark("drop", "queue full").add_range(3, 5)
    st.mark("reject", "rejected: schema mismatch").add(4)
    st.announce(6, ANNOUNCED, GRACE)
    a = account(st, ANNOUNCED, GRACE)
    assert (a.received, a.dropped, a.rejected, a.open_gaps, a.lost) == (2, 2, 1, 0, 0)
    assert a.dropped_reasons == {"queue full": 2}
    assert a.rejected_reasons == {"rejected: schema mismatch": 1}
    assert sum(a.dropped_reasons.values()) == a.dropped
    assert sum(a.rejected_reasons.values()) == a.rejected


def test_the_report_lists_at_most_20_gap_ranges() -> None:
    """Gap ranges are listed for a reader, not for completeness: a stream with thousands
    of holes must not make the report (or a ``_CLOSED.json``) grow with them."""
    st = StreamState("producer-a", END_SONG, received=RangeSet((n, n) for n in range(1, 60, 2)))
    st.announce(61, ANNOUNCED, GRACE)  # every even number up to 60 is missing: 30 gaps
    a = account(st, ANNOUNCED, GRACE)
    assert a.open_gaps == 30
    assert a.gap_ranges == [[n, n] for n in range(2, 41, 2)]
    assert account(st, ANNOUNCED, GRACE, max_gap_ranges=3).gap_ranges == [[2, 2], [4, 4], [6, 6]]


def test_a_gap_that_ends_on_a_watermark_step_is_judged_by_the_later_step() -> None:
    st = StreamState("producer-a", END_SONG, received=RangeSet([(1, 2), (4, 5), (9, 9)]))
    st.announce(8, ANNOUNCED, GRACE)  # 3, 6, 7 missing
    st.announce(10, ANNOUNCED + 30, GRACE)  # 8 missing, announced later
    a = account(st, AT_DEADLINE, GRACE)
    assert (a.lost, a.open_gaps, a.gap_ranges) == (3, 1, [[3, 3], [6, 8]])
    a = account(st, AT_DEADLINE + 30, GRACE)
    assert (a.lost, a.open_gaps) == (4, 0)


def test_numbers_above_the_watermark_are_never_lost() -> None:
    """Asked about numbers no watermark has announced yet, accounting calls them open
    gaps, however old the stream: only an announced number can be lost."""
    st = StreamState("producer-a", END_SONG, received=RangeSet([(1, 2)]))
    st.announce(5, ANNOUNCED, GRACE)  # 3, 4 missing and announced
    far_future = ANNOUNCED + 100 * GRACE
    a = account(st, far_future, GRACE)
    assert (a.lost, a.open_gaps) == (2, 0)
    a = account(st, far_future, GRACE, high=5)
    assert (a.lost, a.open_gaps) == (2, 1)
    a = account(st, ANNOUNCED, GRACE, high=7)  # 3, 4 open within grace; 5..7 unannounced
    assert (a.lost, a.open_gaps, a.accounted) == (0, 5, 7)
