"""DurableQueue at its boundaries: an ack deletes exactly its id range, a dead letter
that must be reported leaves exactly one drop notice, and the shipping lease expires
at an exact instant of an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from queue_helpers import A, B, MakeQueue, ev
from support import stored_bytes, stored_events

from spotify_events.wire import DropNotice


def ids(path: Path) -> list[int]:
    return [e.id for e in stored_events(path)]


def counters(path: Path) -> tuple[int, int]:
    """(events, bytes) as the queue's counters say, and as the rows say: must agree."""
    return len(stored_events(path)), stored_bytes(path)


@pytest.mark.parametrize(
    ("first", "last", "left"),
    [
        (4, 6, [1, 2, 3, 7, 8, 9, 10]),  # inside: the neighbours on both sides stay
        (1, 1, [2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (10, 10, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (1, 9, [10]),
        (2, 10, [1]),
        (7, 6, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),  # an empty range deletes nothing
        (11, 20, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),  # beyond the newest row
    ],
)
def test_ack_deletes_exactly_its_range(
    make_queue: MakeQueue, queue_path: Path, first: int, last: int, left: list[int]
) -> None:
    queue = make_queue()
    queue.append([ev() for _ in range(10)])
    assert ids(queue_path) == list(range(1, 11))
    assert queue.ack(first, last) == 10 - len(left)
    assert ids(queue_path) == left
    depth = queue.depth()
    assert (depth.events, depth.bytes) == counters(queue_path)


def test_ack_of_a_batch_leaves_the_next_batch_whole(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev(A if n % 2 else B) for n in range(12)])
    first = queue.read_batch(max_events=5)
    second = queue.read_batch(after_id=first[-1].id, max_events=5)
    assert queue.ack(first[0].id, first[-1].id) == 5
    assert queue.read_batch(max_events=5) == second
    assert queue.ack(second[0].id, second[-1].id) == 5
    assert [e.id for e in queue.read_batch()] == [11, 12]


def test_dead_letter_with_notice_leaves_one_drop_notice_per_run(make_queue: MakeQueue) -> None:
    queue = make_queue()
    queue.append([ev(A), ev(A), ev(B), ev(A), ev(A)])  # A1 A2 B1 A3 A4
    a1, a2, b1, a3, a4 = queue.read_batch()
    assert queue.unreported_drops() == []
    assert queue.dead_letter([a1, a2, a4, b1], "HTTP 400: bad", notify_collector=True) == 4
    notices = [notice for _, notice in queue.unreported_drops()]
    assert notices == [
        DropNotice(A, 1, 2, 2, "rejected: HTTP 400: bad"),
        DropNotice(A, 4, 4, 1, "rejected: HTTP 400: bad"),
        DropNotice(B, 1, 1, 1, "rejected: HTTP 400: bad"),
    ]
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == [(A, 3)]
    assert queue.dead_letter([a3], "listed in the 200 body", notify_collector=False) == 1
    assert len(queue.unreported_drops()) == 3  # the collector said it itself: no notice
    queue.mark_drops_reported(queue.unreported_drops())
    assert queue.unreported_drops() == []
    assert [(t, s) for t, s, _ in queue.dead_letters()] == [(A, 1), (A, 2), (A, 4), (B, 1), (A, 3)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lease_expires_exactly_at_its_ttl(make_queue: MakeQueue) -> None:
    clock = Clock(1_000.0)
    first, second = make_queue(clock=clock), make_queue(clock=clock)
    assert first.acquire_lease("shipper-1", ttl=30)
    assert not second.acquire_lease("shipper-2", ttl=30)
    clock.now = 1_020.0
    assert first.acquire_lease("shipper-1", ttl=30)  # renewed: now expires at 1050
    clock.now = 1_049.5
    assert not second.acquire_lease("shipper-2", ttl=30)
    assert second.lease_holder() == "shipper-1"
    clock.now = 1_050.0  # the instant it expires, it is free
    assert second.lease_holder() is None
    assert second.acquire_lease("shipper-2", ttl=30)
    assert first.lease_holder() == "shipper-2"
    assert not first.acquire_lease("shipper-1", ttl=30)
