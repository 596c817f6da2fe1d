"""The shipper's reading of an acknowledgement's rejections at its edges: which reason a
held part reports, and what a rejection that leaves out its code or reason means."""

from __future__ import annotations

from spotify_events.decision import sort_rejections
from spotify_events.queue import QueuedEvent


def _event(seq: int, event_type: str = "t.A") -> QueuedEvent:
    return QueuedEvent(seq, event_type, seq, b"\0" * 8, 0, b"payload")


def test_a_held_part_reports_the_first_unknown_schema_reason() -> None:
    part = [_event(1), _event(2, "t.B")]
    body = {
        "rejected": [
            {"event_type": "t.A", "seq": 1, "code": "unknown_schema", "reason": "no t.A"},
            {"event_type": "t.B", "seq": 2, "code": "unknown_schema", "reason": "no t.B"},
        ]
    }
    sorted_ = sort_rejections(part, body)
    assert [e.seq for e in sorted_.held] == [1, 2]
    assert sorted_.hold_reason == "no t.A"
    assert sorted_.dead_letters == {}


def test_a_rejection_without_code_or_reason_is_dead_lettered_as_rejected() -> None:
    """No code is not ``unknown_schema``: the event is not held forever; no reason is
    still a reason the dead letter can be counted under."""
    part = [_event(1), _event(2), _event(3)]
    body = {
        "rejected": [
            {"event_type": "t.A", "seq": 1},
            {"event_type": "t.A", "seq": 2, "code": None, "reason": ""},
        ]
    }
    sorted_ = sort_rejections(part, body)
    assert sorted_.held == [] and sorted_.hold_reason == ""
    assert {r: [e.seq for e in es] for r, es in sorted_.dead_letters.items()} == {
        "rejected": [1, 2]
    }


def test_a_rejection_names_an_event_by_type_and_seq_together() -> None:
    part = [_event(5, "t.A"), _event(5, "t.B")]
    body = {"rejected": [{"event_type": "t.B", "seq": "5", "code": "invalid", "reason": "x"}]}
    sorted_ = sort_rejections(part, body)
    assert {r: [e.event_type for e in es] for r, es in sorted_.dead_letters.items()} == {
        "x": ["t.B"]
    }


def test_a_malformed_rejection_does_not_hide_the_ones_after_it() -> None:
    part = [_event(1), _event(2)]
    body = {
        "rejected": [
            None,
            {"seq": 1},
            {"event_type": "t.A", "seq": 2, "code": "invalid", "reason": "bad"},
        ]
    }
    sorted_ = sort_rejections(part, body)
    assert [e.seq for e in sorted_.dead_letters["bad"]] == [2]
