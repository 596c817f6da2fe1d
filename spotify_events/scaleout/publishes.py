"""JetStream publishes whose acknowledgements come back to one subscription.

A JetStream publish is a core NATS publish with a reply subject; the stream's leader
answers on it with a PubAck (``{"stream": …, "seq": …, "duplicate": true}`` when the
``Nats-Msg-Id`` was seen inside the dedupe window), an API error, or, when nobody
serves the subject (no stream leader), a ``503`` status. Any other answer (a core
NATS responder on the subject where no stream is) fails the publish: only a PubAck
naming a stream and a sequence says the message was stored. :class:`Publisher` sends each
message of a round that way, replies under one inbox (``<inbox>.<n>``, ``n`` a
counter), and one subscription on ``<inbox>.*`` collects the answers into the round.

nats-py's ``publish_async`` speaks the same protocol with more around each message:
a NUID and random bytes for its reply token, an asyncio future with a done callback,
a semaphore, a ``PubAck`` dataclass, and a ``gather`` to wait for them all; it also
leaves the future unresolved when the answer is an API error (its handler raises
instead of failing the future), so a full stream looked like a timeout.

A :class:`Round` is made and waited for in the caller's thread (an HTTP thread) and
carried out on the loop's: a task publishes its messages and ends, and the round's
outcome is a :class:`concurrent.futures.Future` that the last acknowledgement (or the
first error, the timer, the loss of the connection) completes from the reply handler,
waking the caller at once. Waiting on the loop instead, for the caller to be woken when
a task that waited for the acknowledgements ends, cost the loop's share of publishing a
500-event batch about a sixth more CPU (benchmarks/RESULTS.md, "The caller woken by the
last acknowledgement").

At most ``max_in_flight`` messages await their acknowledgements per connection; a
round waits for room before each publish (a round of more messages than that waits for
room its own publishes hold) and is over at its own deadline. Whatever ends a round
(answered, failed, timed out, given up by the caller, the connection lost) ends it on
the loop: it stops its task if that is still publishing, forgets its unanswered messages
and frees their room; an answer that comes later is dropped. When the connection loses
its server, every round still waiting fails at once: an answer to a publish sent before
the loss may never come, and the client's retry (deduplicated by ``Nats-Msg-Id``) is
better than a wait for the timeout in an HTTP thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import SpotifyEventsError
from .connection import when_disconnected
from .slices import Message

_STATUS = "Status"


class PublishFailed(SpotifyEventsError):
    """JetStream answered a publish with an error, or nobody answered for the stream."""


class Round:
    """The publishes of one batch (or of its fallbacks): made and waited for in any
    thread, carried out and ended on the publisher's loop."""

    __slots__ = ("duplicates", "expiry", "left", "outcome", "publisher", "sender", "tokens")

    def __init__(self, count: int) -> None:
        #: True where JetStream answered "duplicate", once every publish is acknowledged
        self.outcome: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
        self.duplicates = [False] * count
        self.left = count
        self.tokens: list[str] = []  # the reply tokens of its publishes so far
        self.sender: asyncio.Task[None] | None = None  # the task publishing its messages
        self.expiry: asyncio.TimerHandle | None = None
        self.publisher: Publisher | None = None  # once it publishes

    def end(self, error: BaseException | None = None) -> None:
        """On the loop: the outcome (the duplicates, or ``error``) if the round has none
        yet; then no more publishing, no timer, and no room held for its unanswered
        publishes. Whatever ends a round later finds it ended."""
        if self.outcome.done():
            return
        if self.expiry is not None:
            self.expiry.cancel()
        if self.sender is not None and self.sender is not asyncio.current_task():
            self.sender.cancel()  # a no-op once it has published everything
        if self.publisher is not None:
            self.publisher.forget(self.tokens)
        # last: the waiting thread wakes now, and wants the GIL this thread holds
        if error is None:
            self.outcome.set_result(self.duplicates)
        else:
            self.outcome.set_exception(error)


class Publisher:
    """Publishes on one connection; its acknowledgements arrive on one subscription."""

    def __init__(self, nc: Any, *, max_in_flight: int) -> None:
        self._nc = nc
        self._prefix = f"{nc.new_inbox()}."
        self._sent = 0
        self._waiting: dict[str, tuple[Round, int]] = {}  # reply token -> (round, index)
        self._room = asyncio.Semaphore(max_in_flight)

    async def start(self) -> None:
        await self._nc.subscribe(f"{self._prefix}*", cb=self._answered)
        when_disconnected(self._nc, self._connection_lost)

    def _connection_lost(self) -> None:
        for round_ in {round_ for round_, _ in self._waiting.values()}:
            round_.end(
                PublishFailed("the connection to NATS was lost before JetStream acknowledged")
            )

    async def send(self, round_: Round, messages: Sequence[Message], timeout: float) -> None:
        """Publish ``messages`` as ``round_``'s, which ends at the latest ``timeout``
        seconds from now; returns when the last is handed to the connection, and raises
        what publishing raises. Acknowledgements end the round in :meth:`_answered`."""
        round_.publisher = self
        round_.expiry = asyncio.get_running_loop().call_later(timeout, _expire, round_)
        for i, m in enumerate(messages):
            # room the round holds itself frees only when it ends: then its end stops this
            await self._room.acquire()
            self._sent += 1
            token = str(self._sent)
            self._waiting[token] = (round_, i)
            round_.tokens.append(token)
            await self._nc.publish(
                m.subject, m.data, reply=self._prefix + token, headers={"Nats-Msg-Id": m.msg_id}
            )

    def forget(self, tokens: Iterable[str]) -> None:
        """Stop waiting for the answers to ``tokens``, freeing their room."""
        for token in tokens:
            if self._waiting.pop(token, None) is not None:
                self._room.release()

    async def _answered(self, msg: Any) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:  # its round is over
            return
        self._room.release()
        round_, index = entry
        headers = msg.headers
        if headers and headers.get(_STATUS) == "503":
            round_.end(PublishFailed("nobody serves the subject (no stream, or no leader)"))
            return
        try:
            answer = json.loads(msg.data)
            error = answer.get("error")
            duplicate = bool(answer.get("duplicate"))
            stored = "stream" in answer and "seq" in answer
        except (ValueError, AttributeError) as exc:
            round_.end(PublishFailed(f"not a JetStream acknowledgement: {exc}"))
            return
        if error is not None:
            round_.end(PublishFailed(f"JetStream refused the publish: {_said(error)}"))
            return
        if not stored:  # another responder on the subject, not a stream that stored it
            round_.end(PublishFailed(f"not a JetStream acknowledgement: {msg.data[:200]!r}"))
            return
        round_.duplicates[index] = duplicate
        round_.left -= 1
        if not round_.left:
            round_.end()


def _expire(round_: Round) -> None:
    round_.end(TimeoutError("no acknowledgement from JetStream in time"))


def _said(error: Any) -> str:
    """An API error's description and codes (``{"code": 503, "err_code": 10077,
    "description": "maximum messages exceeded"}``)."""
    if not isinstance(error, dict):
        return str(error)
    return f"{error.get('description', '')} (code {error.get('code')}, {error.get('err_code')})"
