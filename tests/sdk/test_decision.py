"""The shipper's rules for an answer, as a table: no HTTP, no queue."""

from __future__ import annotations

from typing import Any

import pytest

from spotify_events.decision import Action, Decision, decide, sort_rejections
from spotify_events.queue import QueuedEvent
from spotify_events.transport import Outcome, SendResult


@pytest.mark.parametrize(
    ("outcome", "events", "takes_empty", "expected"),
    [
        (Outcome.ACCEPTED, 5, None, Decision(Action.ACKNOWLEDGE)),
        (Outcome.ACCEPTED, 0, None, Decision(Action.ACKNOWLEDGE)),  # a heartbeat
        (Outcome.TOO_LARGE, 5, None, Decision(Action.SPLIT)),
        (Outcome.BAD_BATCH, 2, None, Decision(Action.SPLIT)),
        (Outcome.BAD_BATCH, 1, None, Decision(Action.PROBE)),
        (Outcome.TOO_LARGE, 1, None, Decision(Action.PROBE)),
        (Outcome.BAD_BATCH, 1, True, Decision(Action.DEAD_LETTER)),  # poison event
        (Outcome.BAD_BATCH, 1, False, Decision(Action.REFUSED, "refused")),  # not its fault
        (Outcome.BAD_BATCH, 0, None, Decision(Action.REFUSED, "refused")),  # heartbeat refused
        (Outcome.THROTTLED, 5, None, Decision(Action.BACK_OFF, "throttled")),
        (Outcome.RETRY, 5, None, Decision(Action.BACK_OFF, "unreachable")),
        (Outcome.UNAUTHORIZED, 5, None, Decision(Action.BACK_OFF, "unauthorized", slow=True)),
        (Outcome.WRONG_ENDPOINT, 5, None, Decision(Action.BACK_OFF, "wrong_endpoint", slow=True)),
        (
            Outcome.NOT_A_COLLECTOR,
            5,
            None,
            Decision(Action.BACK_OFF, "not_a_collector", slow=True),
        ),
    ],
)
def test_decide(
    outcome: Outcome, events: int, takes_empty: bool | None, expected: Decision
) -> None:
    assert decide(outcome, events, takes_empty) == expected


@pytest.mark.parametrize(
    ("status", "body", "events", "action"),
    [
        (200, {"accepted": 2, "duplicates": 0, "rejected": []}, 2, Action.ACKNOWLEDGE),
        (200, {"accepted": 1, "duplicates": 0, "rejected": []}, 2, Action.BACK_OFF),  # counts off
        (200, None, 2, Action.BACK_OFF),  # an empty 200 deletes nothing
        (302, None, 2, Action.BACK_OFF),
        (413, {"error": "too large"}, 2, Action.SPLIT),
        (503, None, 2, Action.BACK_OFF),
        (None, None, 2, Action.BACK_OFF),  # no response at all
    ],
)
def test_an_answer_decides_through_its_outcome(
    status: int | None, body: dict[str, Any] | None, events: int, action: Action
) -> None:
    result = SendResult(status, body)
    assert decide(result.outcome(events), events).action is action


def _event(seq: int, event_type: str = "t.A") -> QueuedEvent:
    return QueuedEvent(seq, event_type, seq, b"\0" * 8, 0, b"payload")


def test_sort_rejections_holds_unknown_schemas_and_dead_letters_the_rest() -> None:
    part = [_event(1), _event(2), _event(3), _event(4, "t.B")]
    body = {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [
            {"event_type": "t.A", "seq": 2, "code": "invalid", "reason": "bad field"},
            {"event_type": "t.A", "seq": 3, "code": "invalid", "reason": "bad field"},
            {"event_type": "t.B", "seq": 4, "code": "unknown_schema", "reason": "no t.B"},
            {"event_type": "t.A", "seq": "x"},  # malformed: ignored, never a crash
        ],
    }
    sorted_ = sort_rejections(part, body)
    assert [e.seq for e in sorted_.held] == [4]
    assert sorted_.hold_reason == "no t.B"
    assert {r: [e.seq for e in es] for r, es in sorted_.dead_letters.items()} == {
        "bad field": [2, 3]
    }


@pytest.mark.parametrize("body", [None, {}, {"rejected": "nope"}, {"rejected": []}])
def test_sort_rejections_of_a_clean_acknowledgement_is_empty(body: dict[str, Any] | None) -> None:
    sorted_ = sort_rejections([_event(1)], body)
    assert not sorted_.held and not sorted_.dead_letters
