"""Event types, fingerprints and one-line events shared by the queue edge tests."""

from __future__ import annotations

from collections.abc import Callable

from spotify_events.queue import DurableQueue, PendingEvent

A = "test.events.Alpha"
B = "test.events.Beta"
FP = b"\x11" * 8
FP2 = b"\x22" * 8
TS = 1_763_158_400_000
PAYLOAD = 52  # with ROW_OVERHEAD, one event costs 100 bytes of queue budget

MakeQueue = Callable[..., DurableQueue]


def ev(event_type: str = A, fingerprint: bytes = FP, ts: int = TS) -> PendingEvent:
    """A ``PAYLOAD``-byte event of ``event_type``."""
    return PendingEvent(event_type, fingerprint, ts, b"x" * PAYLOAD)
