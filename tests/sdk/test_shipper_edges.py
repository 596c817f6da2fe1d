"""The shipper's bookkeeping after an answer, driven one batch at a time: a real queue
file, an in-process transport (``MockTransport``) answering as a collector would, and
``_deliver`` called in the test's thread, so every count and every queue row can be
checked right after the answer that changed it, with no thread to wait for."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from shipper_helpers import Collector, ack

from spotify_events.config import ClientConfig
from spotify_events.decision import UNKNOWN_SCHEMA
from spotify_events.queue import DROP_BUFFER_FULL, DurableQueue, PendingEvent
from spotify_events.shipper import Shipper, _reason
from spotify_events.transport import MockTransport, SendResult
from spotify_events.wire import DropNotice

A = "test.events.Alpha"
B = "test.events.Beta"
FP = b"\x11" * 8
FP2 = b"\x22" * 8
TS = 1_763_158_400_000

MakeQueue = Callable[..., DurableQueue]


def ev(event_type: str = A, fingerprint: bytes = FP) -> PendingEvent:
    return PendingEvent(event_type, fingerprint, TS, b"x" * 20)


def make_due(path: Path) -> None:
    """Every hold's next try is now (as if its delay had passed)."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE holds SET next_try = 0")


def rejection(event_type: str, seq: int, code: str, reason: str) -> dict[str, Any]:
    return {"event_type": event_type, "seq": seq, "code": code, "reason": reason}


def test_an_acknowledged_batch_leaves_the_queue_and_is_counted(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A), ev(B), ev(A)])
    collector.answer = lambda sent: ack(sent, duplicates=1)
    shipper._deliver(queue.read_batch(), [], [])
    assert collector.batches == [[(A, 1), (B, 1), (A, 2)]]
    assert queue.depth().events == 0
    counters = shipper.counters
    assert (counters.acknowledged, counters.duplicates, counters.heartbeats) == (3, 1, 0)
    assert counters.last_success is not None


def test_a_heartbeat_is_counted_as_one_and_carries_the_drop_notices_once(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([], overflow={(A, DROP_BUFFER_FULL): 2})
    drops = queue.unreported_drops()
    shipper._deliver([], drops, [])
    assert collector.drops == [[DropNotice(A, 1, 2, 2, DROP_BUFFER_FULL)]]
    assert queue.unreported_drops() == []
    assert (shipper.counters.heartbeats, shipper.counters.acknowledged) == (1, 0)


def test_rejected_events_are_dead_lettered_by_reason_and_held_ones_stay_queued(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A), ev(B, FP2), ev(A), ev(A), ev(B, FP2)])  # A1 B1 A2 A3 B2
    collector.answer = lambda sent: ack(
        sent,
        [
            rejection(A, 1, "invalid", "bad field"),
            rejection(A, 3, "invalid", "bad field"),
            rejection(A, 2, "too_old", "too old"),
            rejection(B, 1, UNKNOWN_SCHEMA, "schema not deployed"),
            rejection(B, 2, UNKNOWN_SCHEMA, "schema not deployed"),
        ],
    )
    shipper._deliver(queue.read_batch(), [], [])
    assert queue.dead_letters() == [(A, 1, "bad field"), (A, 3, "bad field"), (A, 2, "too old")]
    assert shipper.counters.dead_lettered == {"bad field": 2, "too old": 1}
    assert shipper.counters.acknowledged == 3  # the held two come back later
    assert queue.unreported_drops() == []  # the collector listed them itself
    (hold,) = queue.holds()
    assert (hold.event_type, hold.fingerprint, hold.reason, hold.events) == (
        B,
        FP2,
        "schema not deployed",
        2,
    )
    assert [(e.event_type, e.seq) for e in queue.read_batch()] == []  # held: not due


def test_a_batch_read_around_a_held_schema_acknowledges_only_what_it_carried(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(B, FP2), ev(A)])
    collector.answer = lambda sent: ack(
        sent, [rejection(B, 1, UNKNOWN_SCHEMA, "schema not deployed")]
    )
    shipper._deliver(queue.read_batch(), [], [])  # B1 held, A1 delivered
    queue.append([ev(A), ev(B, FP2), ev(A)])  # B2 between A2 and A3
    collector.answer = ack
    shipper._deliver(queue.read_batch(), [], [])
    assert collector.batches[-1] == [(A, 2), (A, 3)]
    (hold,) = queue.holds()
    assert (hold.event_type, hold.events) == (B, 2)  # B2 was never sent: still queued
    make_due(queue.path)
    shipper._deliver(queue.read_batch(), [], [])
    assert collector.batches[-1] == [(B, 1), (B, 2)]
    assert queue.depth().events == 0 and queue.holds() == []


def test_a_held_schema_is_logged_once_and_released_when_its_events_are_accepted(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]],
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, queue = make_shipper(hold_retry_max=60.0)
    queue.append([ev(B, FP2)])
    collector.answer = lambda sent: ack(
        sent, [rejection(t, s, UNKNOWN_SCHEMA, "schema not deployed") for t, s in sent]
    )
    caplog.set_level(logging.INFO, logger="spotify_events.shipper")
    shipper._deliver(queue.read_batch(), [], [])
    make_due(queue.path)
    shipper._deliver(queue.read_batch(), [], [])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == (
        f"spotify-events: the collector does not know schema {B} (fingerprint "
        f"{FP2.hex()}): deploy it to the collector. 1 {B} event(s) so far are held in the "
        "queue and retried (at most every 60s) until it does; flush() returns False meanwhile"
    )
    assert shipper.counters.last_error == (
        f"the collector does not know schema {B} (fingerprint {FP2.hex()}): deploy it to the collector"
    )
    assert queue.holds()[0].attempts == 2
    caplog.clear()
    make_due(queue.path)
    collector.answer = ack
    shipper._deliver(queue.read_batch(), [], [])
    assert queue.holds() == [] and queue.depth().events == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO][-1] == (
        f"spotify-events: the collector now accepts schema {B} (fingerprint {FP2.hex()}); "
        "held events are being delivered"
    )
    queue.append([ev(B, FP2)])  # held again later: logged again
    collector.answer = lambda sent: ack(
        sent, [rejection(t, s, UNKNOWN_SCHEMA, "schema not deployed") for t, s in sent]
    )
    caplog.clear()
    shipper._deliver(queue.read_batch(), [], [])
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_accepting_one_schema_releases_only_its_hold(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A), ev(B, FP2)])
    queue.hold(queue.read_batch(), "unknown", lambda attempts: 3600.0)
    make_due(queue.path)  # both held, both due
    collector.answer = lambda sent: ack(
        sent, [rejection(B, s, UNKNOWN_SCHEMA, "unknown") for t, s in sent if t == B]
    )
    shipper._deliver(queue.read_batch(), [], [])
    assert [(h.event_type, h.fingerprint) for h in queue.holds()] == [(B, FP2)]


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (30, 10.0)]
)
def test_a_hold_is_retried_with_doubling_delays_capped_by_hold_retry_max(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], attempts: int, delay: float
) -> None:
    shipper, _ = make_shipper()
    shipper.settings = replace(shipper.settings, backoff_max=2.0, hold_retry_max=10.0)
    assert shipper._hold_delay(attempts) == delay
    assert type(shipper._hold_delay(attempts)) is float


def test_a_poison_event_after_a_400_is_dead_lettered_alone_with_a_notice(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]],
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(5)])

    def answer(sent: list[tuple[str, int]]) -> SendResult:
        if (A, 4) in sent:
            return SendResult(400, {"error": "bad payload"})
        return ack(sent)

    collector.answer = answer
    caplog.set_level(logging.WARNING, logger="spotify_events.shipper")
    shipper._deliver(queue.read_batch(), [], [])
    assert [[s for _, s in b] for b in collector.batches] == [
        [1, 2, 3, 4, 5],
        [1, 2],
        [3, 4, 5],
        [3],
        [4, 5],
        [4],
        [],  # does the collector take an empty batch? Then A4 alone is poison
        [5],
    ]
    assert queue.dead_letters() == [(A, 4, "HTTP 400: bad payload")]
    assert [n for _, n in queue.unreported_drops()] == [
        DropNotice(A, 4, 4, 1, "rejected: HTTP 400: bad payload")
    ]
    assert shipper.counters.dead_lettered == {"HTTP 400: bad payload": 1}
    assert shipper.counters.acknowledged == 4 and queue.depth().events == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "spotify-events: collector rejected 1 test.events.Alpha event(s) (seq 4..4): "
        "HTTP 400: bad payload; moved to dead letters"
    ]


def test_a_413_halves_the_batch_first_half_first(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(5)])
    collector.answer = lambda sent: SendResult(413) if len(sent) > 2 else ack(sent)
    shipper._deliver(queue.read_batch(), [], [])
    assert [[s for _, s in b] for b in collector.batches] == [
        [1, 2, 3, 4, 5],
        [1, 2],
        [3, 4, 5],
        [3],
        [4, 5],
    ]
    assert queue.depth().events == 0 and shipper.counters.acknowledged == 5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"error": "bad payload", "reason": "other"}, "HTTP 400: bad payload"),
        ({"reason": "schema mismatch"}, "HTTP 400: schema mismatch"),
        ({"error": "", "reason": ""}, "HTTP 400: the default"),
        (None, "HTTP 400: the default"),
    ],
)
def test_a_refusal_reason_comes_from_the_body_or_the_default(
    body: dict[str, str] | None, reason: str
) -> None:
    assert _reason(SendResult(400, body), "the default") == reason


def test_counts_add_up_over_several_answers(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]],
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, queue = make_shipper()
    caplog.set_level(logging.INFO, logger="spotify_events.shipper")
    for duplicates in (1, 0, 2):
        queue.append([ev(A), ev(A)])
        collector.answer = lambda sent, d=duplicates: ack(sent, duplicates=d)
        shipper._deliver(queue.read_batch(), [], [])
    for _ in range(2):
        queue.append([ev(B)])
        collector.answer = lambda sent: ack(sent, [rejection(B, sent[0][1], "invalid", "bad")])
        shipper._deliver(queue.read_batch(), [], [])
    collector.answer = ack
    shipper._deliver([], [], [])
    shipper._deliver([], [], [])
    counters = shipper.counters
    assert (counters.acknowledged, counters.duplicates, counters.heartbeats) == (8, 3, 2)
    assert counters.dead_lettered == {"bad": 2}
    assert not [r for r in caplog.records if "now accepts" in r.getMessage()]  # nothing was held


def test_incidents_ride_along_once_and_are_forgotten_when_acknowledged(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.record_incident("queue_quarantined", "moved aside")
    queue.append([ev(A) for _ in range(3)])
    collector.answer = lambda sent: SendResult(413) if len(sent) > 1 else ack(sent)
    shipper._deliver(queue.read_batch(), [], queue.unreported_incidents())
    assert [[i["kind"] for i in sent] for sent in collector.incidents] == [
        ["queue_quarantined"],  # refused whole
        ["queue_quarantined"],  # the first part carries them and is acknowledged
        [],
        [],
        [],
    ]
    assert queue.unreported_incidents() == []


def test_a_refusal_without_a_reason_dead_letters_under_the_default_reason(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A)])
    collector.answer = lambda sent: SendResult(400) if sent else ack(sent)
    shipper._deliver(queue.read_batch(), [], [])
    assert queue.dead_letters() == [(A, 1, "HTTP 400: collector refused the event")]


def test_a_collector_refusing_even_an_empty_batch_keeps_every_event(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]],
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, queue = make_shipper()
    queue.append([ev(A)])
    collector.answer = lambda sent: SendResult(400, {"error": "nope"})
    caplog.set_level(logging.WARNING, logger="spotify_events.shipper")
    delivering = threading.Thread(
        target=shipper._deliver, args=(queue.read_batch(), [], []), daemon=True
    )
    delivering.start()
    delivering.join(timeout=10)  # it pauses for backoff_max (0.05 s), then gives the batch up
    assert not delivering.is_alive()
    assert collector.batches == [[(A, 1)], []]
    assert queue.depth().events == 1 and queue.dead_letters() == []
    assert shipper.counters.last_error == "collector refuses batches outright: HTTP 400: nope"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            "spotify-events collector refuses even empty batches (HTTP 400: nope); "
            "events are kept in the queue",
        )
    ]


def test_a_prepared_body_is_sent_for_the_whole_batch_and_parts_are_encoded_afresh(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]], collector: Collector
) -> None:
    """The prefetcher hands ``_deliver`` the batch already encoded; after a split, each
    part needs its own body."""
    shipper, queue = make_shipper()
    queue.append([ev(A) for _ in range(3)])
    events = queue.read_batch()
    notice = DropNotice(A, 100, 100, 1, "marker")  # only the prepared body carries it
    body = shipper._encode(events, [notice], [])
    collector.answer = lambda sent: SendResult(413) if len(sent) > 1 else ack(sent)
    shipper._deliver(events, [], [], body=body)
    assert [[s for _, s in b] for b in collector.batches] == [[1, 2, 3], [1], [2, 3], [2], [3]]
    assert collector.drops == [[notice], [], [], [], []]


def test_each_newly_held_schema_is_logged_with_its_event_count(
    make_shipper: Callable[..., tuple[Shipper, DurableQueue]],
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipper, queue = make_shipper()
    collector.answer = lambda sent: ack(
        sent, [rejection(t, s, UNKNOWN_SCHEMA, "schema not deployed") for t, s in sent]
    )
    caplog.set_level(logging.ERROR, logger="spotify_events.shipper")
    queue.append([ev(B, FP2), ev(B, FP2)])
    shipper._deliver(queue.read_batch(), [], [])
    make_due(queue.path)
    queue.append([ev(A)])
    shipper._deliver(queue.read_batch(), [], [])  # B again (logged already), and A
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert f". 2 {B} event(s) so far are held" in said[0]
    assert f"schema {A} (fingerprint {FP.hex()})" in said[1] and f". 1 {A} event(s)" in said[1]


def test_a_lease_handover_mid_batch_dead_letters_a_refused_event_once(
    make_queue: MakeQueue, collector: Collector
) -> None:
    """Two shippers on one file (a service and ``spotify-events agent``): the service's
    send outlives its lease (a slow collector), the agent takes the lease over and
    dead-letters the refused event; then the service's answer arrives and it
    dead-lettered the same event again, with a second drop notice for the collector."""
    settings = replace(ClientConfig().shipper_settings(), backoff_max=0.05)
    collector.answer = lambda sent: SendResult(400) if sent else ack(sent)
    service_queue = make_queue()
    # the agent's clock is past the service's lease: it lapsed while the send was out
    agent_queue = make_queue(clock=lambda: time.time() + 2 * settings.lease_ttl)
    agent = Shipper(agent_queue, MockTransport(collector), settings)
    handed_over = threading.Event()

    def slow_collector(body: bytes, headers: Mapping[str, str]) -> SendResult:
        if not handed_over.is_set():
            handed_over.set()
            assert agent.may_ship()
            agent._deliver(agent_queue.read_batch(), [], [])
        return collector(body, headers)

    service = Shipper(service_queue, MockTransport(slow_collector), settings)
    service_queue.append([ev(A)])
    assert service.may_ship()
    service._deliver(service_queue.read_batch(), [], [])
    assert handed_over.is_set()
    reason = "HTTP 400: collector refused the event"
    assert service_queue.dead_letters() == [(A, 1, reason)]
    assert [n for _, n in service_queue.unreported_drops()] == [
        DropNotice(A, 1, 1, 1, f"rejected: {reason}")
    ]
    assert (agent.counters.dead_lettered, service.counters.dead_lettered) == ({reason: 1}, {})
