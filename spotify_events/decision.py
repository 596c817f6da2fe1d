"""What the shipper does with the collector's answer: pure functions, no HTTP, no queue.

The shipper sends, then asks :func:`decide` what the answer means for the part
it sent, and :func:`sort_rejections` which events of an acknowledged part stay
held and which go to dead letters. Keeping the rules here lets them be read in
one place and tested as a table (tests/sdk/test_decision.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .transport import Outcome
from .wire import ECHOED_TYPE_CHARS

if TYPE_CHECKING:
    from .queue import QueuedEvent

#: The rejection code for a schema the collector does not know (yet): such events are
#: held and retried, never dead-lettered (the event is fine; the collector is behind).
UNKNOWN_SCHEMA = "unknown_schema"


class Action(enum.Enum):
    ACKNOWLEDGE = "acknowledge"  # the collector's own acknowledgement: apply it
    SPLIT = "split"  # 413 or 400 on several events: halve and resend each half
    PROBE = "probe"  # one event refused: send an empty batch, then decide again
    DEAD_LETTER = "dead_letter"  # the collector takes empty batches but not this event
    REFUSED = "refused"  # even an empty batch is refused: keep everything, pause
    BACK_OFF = "back_off"  # no usable answer: keep the part, wait, resend


@dataclass(frozen=True)
class Decision:
    """An action, the shipper state it reports (logged once per change), and for a
    back-off whether to come back slowly (someone has to fix a setting first)."""

    action: Action
    state: str = "ok"
    slow: bool = False


def decide(outcome: Outcome, events: int, takes_empty_batches: bool | None = None) -> Decision:
    """What to do after ``outcome`` for a part of ``events`` events.

    ``takes_empty_batches`` is the answer to a :attr:`Action.PROBE`: whether the
    collector accepted an empty batch. A single refused event is poison only when it
    did; otherwise the refusal is about something else and nothing is dropped."""
    if outcome is Outcome.ACCEPTED:
        return Decision(Action.ACKNOWLEDGE)
    if outcome in (Outcome.TOO_LARGE, Outcome.BAD_BATCH):
        if events > 1:
            return Decision(Action.SPLIT)
        if events == 1 and takes_empty_batches is None:
            return Decision(Action.PROBE)
        if events == 1 and takes_empty_batches:
            return Decision(Action.DEAD_LETTER)
        return Decision(Action.REFUSED, "refused")
    if outcome is Outcome.THROTTLED:
        return Decision(Action.BACK_OFF, "throttled")
    if outcome is Outcome.UNAUTHORIZED:
        return Decision(Action.BACK_OFF, "unauthorized", slow=True)
    if outcome in (Outcome.WRONG_ENDPOINT, Outcome.NOT_A_COLLECTOR):
        return Decision(Action.BACK_OFF, outcome.value, slow=True)
    return Decision(Action.BACK_OFF, "unreachable")


@dataclass(frozen=True)
class Rejections:
    """The events of an acknowledged part the collector did not take: ``held`` (its
    schema is unknown there; retried later) with the collector's reason, and
    ``dead_letters`` by reason. Every other event of the part is acknowledged."""

    held: list[QueuedEvent] = field(default_factory=list)
    hold_reason: str = ""
    dead_letters: dict[str, list[QueuedEvent]] = field(default_factory=dict)


def sort_rejections(part: Sequence[QueuedEvent], body: Mapping[str, Any] | None) -> Rejections:
    """Sort the events ``body`` (the collector's acknowledgement) rejects."""
    rejected = _rejected(body)
    if not rejected:
        return Rejections()
    held: list[QueuedEvent] = []
    hold_reason = ""
    dead_letters: dict[str, list[QueuedEvent]] = {}
    for event in part:
        rejection = rejected.get((event.event_type[:ECHOED_TYPE_CHARS], event.seq))
        if rejection is None:
            continue
        code, reason = rejection
        if code == UNKNOWN_SCHEMA:
            hold_reason = hold_reason or reason
            held.append(event)
        else:
            dead_letters.setdefault(reason, []).append(event)
    return Rejections(held, hold_reason, dead_letters)


def _rejected(body: Mapping[str, Any] | None) -> dict[tuple[str, int], tuple[str, str]]:
    """(event type, seq) -> (code, reason) of every event the body rejects."""
    rejected = (body or {}).get("rejected") or []
    out: dict[tuple[str, int], tuple[str, str]] = {}
    if isinstance(rejected, list):
        for item in rejected:
            try:
                key = (str(item["event_type"]), int(item["seq"]))
                out[key] = (str(item.get("code") or ""), str(item.get("reason") or "rejected"))
            except (KeyError, TypeError, ValueError):
                continue
    return out
