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
instead of failing the future), so a full stream looked like a timeout. Here a round
costs one future and one timer, resolved by the last acknowledgement or failed by the
first error, and the loop's share of publishing a 500-event batch costs about an
eighth less CPU (benchmarks/RESULTS.md, "The publish without publish_async").

At most ``max_in_flight`` messages await their acknowledgements per connection; a
round waits for room before each publish, never past its own deadline (a round of
more messages than that waits for room its own publishes hold), and publishes no
more once it has failed. Whatever ends a round (answered, failed, timed out,
cancelled) forgets its unanswered messages and frees their room; an answer that
comes later is dropped. When the connection loses its server, every round still
waiting fails at once: an answer to a publish sent before the loss may never come,
and the client's retry (deduplicated by ``Nats-Msg-Id``) is better than a wait for
the timeout in an HTTP thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from ..errors import SpotifyEventsError
from .connection import when_disconnected
from .slices import Message

_STATUS = "Status"


class PublishFailed(SpotifyEventsError):
    """JetStream answered a publish with an error, or nobody answered for the stream."""


class _Round:
    """The publishes of one :meth:`Publisher.publish` call, and its outcome."""

    __slots__ = ("done", "duplicates", "failure", "left")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.duplicates = [False] * count
        self.left = count
        self.failure = ""  # why JetStream did not take one of them
        self.done = done

    def fail(self, failure: str) -> None:
        self.failure = failure
        self.done.set_result(None)


class Publisher:
    """Publishes on one connection; its acknowledgements arrive on one subscription."""

    def __init__(self, nc: Any, *, max_in_flight: int) -> None:
        self._nc = nc
        self._prefix = f"{nc.new_inbox()}."
        self._sent = 0
        self._waiting: dict[str, tuple[_Round, int]] = {}  # reply token -> (round, index)
        self._room = asyncio.Semaphore(max_in_flight)

    async def start(self) -> None:
        await self._nc.subscribe(f"{self._prefix}*", cb=self._answered)
        when_disconnected(self._nc, self._connection_lost)

    def _connection_lost(self) -> None:
        for round_, _ in list(self._waiting.values()):
            if not round_.done.done():
                round_.fail("the connection to NATS was lost before JetStream acknowledged")

    async def publish(self, messages: Sequence[Message], timeout: float) -> list[bool]:
        """Publish ``messages`` and wait at most ``timeout`` seconds for every
        acknowledgement; True where JetStream answered "duplicate". Raises
        :class:`PublishFailed`, ``TimeoutError``, or what publishing raises."""
        if not messages:
            return []
        nc = self._nc
        loop = asyncio.get_running_loop()
        round_ = _Round(len(messages), loop.create_future())
        tokens: list[str] = []
        deadline = loop.time() + timeout
        expiry = loop.call_at(deadline, _expire, round_.done)  # not wait_for: a task step less
        try:
            for i, m in enumerate(messages):
                if not self._room.locked():
                    await self._room.acquire()
                else:  # room this round holds itself frees only when the round ends
                    try:
                        await asyncio.wait_for(self._room.acquire(), deadline - loop.time())
                    except asyncio.TimeoutError:  # not yet the builtin on Python 3.10
                        break  # the expiry, due now, fails the round
                if round_.done.done():  # failed or timed out, maybe while it waited for room
                    self._room.release()  # the rest would be published for nothing
                    break
                self._sent += 1
                token = str(self._sent)
                self._waiting[token] = (round_, i)
                tokens.append(token)
                await nc.publish(
                    m.subject, m.data, reply=self._prefix + token, headers={"Nats-Msg-Id": m.msg_id}
                )
            await round_.done
            if round_.failure:
                raise PublishFailed(round_.failure)
        finally:
            expiry.cancel()
            if round_.done.done() and not round_.done.cancelled():
                round_.done.exception()  # retrieved, even when publishing raised first
            for token in tokens:  # the unanswered, when the round ended otherwise
                if self._waiting.pop(token, None) is not None:
                    self._room.release()
        return round_.duplicates

    async def _answered(self, msg: Any) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:  # its round is over
            return
        self._room.release()
        round_, index = entry
        if round_.done.done():
            return
        headers = msg.headers
        if headers and headers.get(_STATUS) == "503":
            round_.fail("nobody serves the subject (no stream, or no leader)")
            return
        try:
            answer = json.loads(msg.data)
            error = answer.get("error")
            duplicate = bool(answer.get("duplicate"))
            stored = "stream" in answer and "seq" in answer
        except (ValueError, AttributeError) as exc:
            round_.fail(f"not a JetStream acknowledgement: {exc}")
            return
        if error is not None:
            round_.fail(f"JetStream refused the publish: {_said(error)}")
            return
        if not stored:  # another responder on the subject, not a stream that stored it
            round_.fail(f"not a JetStream acknowledgement: {msg.data[:200]!r}")
            return
        round_.duplicates[index] = duplicate
        round_.left -= 1
        if not round_.left:
            round_.done.set_result(None)


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError("no acknowledgement from JetStream in time"))


def _said(error: Any) -> str:
    """An API error's description and codes (``{"code": 503, "err_code": 10077,
    "description": "maximum messages exceeded"}``)."""
    if not isinstance(error, dict):
        return str(error)
    return f"{error.get('description', '')} (code {error.get('code')}, {error.get('err_code')})"
