"""A scripted collector for shipper tests without HTTP: a ``MockTransport`` hands it
each body, it records what the body carried and answers as the test says."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from spotify_events.queue import DurableQueue
from spotify_events.shipper import Shipper
from spotify_events.transport import SendResult
from spotify_events.wire import DropNotice, decode_batch

Answer = Callable[[list[tuple[str, int]]], SendResult]
MakeShipper = Callable[..., tuple[Shipper, DurableQueue]]


def ack(
    sent: list[tuple[str, int]], rejected: list[dict[str, Any]] | None = None, **extra: Any
) -> SendResult:
    """The collector's acknowledgement of ``sent``: the rejected ones listed, the rest accepted."""
    rejected = rejected or []
    duplicates = int(extra.pop("duplicates", 0))
    body = {
        "accepted": len(sent) - len(rejected) - duplicates,
        "duplicates": duplicates,
        "rejected": rejected,
        **extra,
    }
    return SendResult(200, body)


class Collector:
    """Answers each batch with ``answer((event type, seq) of its events)``, recording them."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.drops: list[list[DropNotice]] = []
        self.incidents: list[list[dict[str, Any]]] = []
        self.answer: Answer = ack

    def __call__(self, body: bytes, headers: Mapping[str, str]) -> SendResult:
        batch = decode_batch(body)
        sent = [(e.event_type, e.seq) for e in batch.envelopes]
        self.batches.append(sent)
        self.drops.append(list(batch.drops))
        self.incidents.append(list(batch.incidents))
        return self.answer(sent)
