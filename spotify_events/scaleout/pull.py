"""A durable pull consumer read through one long-lived inbox, with a request kept open.

nats-py's ``PullSubscription.fetch()`` costs a worker that keeps up more than the
messages it brings: each call sends a pull request, waits for every message with a
task of its own (``next_msg``: a task and a ``wait_for`` each) and for the ``404``
that ends the request, and a live worker gets one or two messages per call.
:class:`PullFeed` uses JetStream's pull API the way nats.go's ``Consume`` does: one
subscription on an inbox for the runner's lifetime, whose callback puts messages in a
list, and pull requests (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with
``{"batch": n, "expires": ns}``) kept outstanding, topped up when half of what they
asked for has arrived. A message then costs the server's push and one callback.

What the outstanding requests may still deliver (``pending``) is counted: each
message takes one off; a request that ends early says what it had left in its
``Nats-Pending-Messages`` header (``408 Request Timeout`` when it expires, a ``409``
for a limit). ``409 Leadership Change`` (the consumer's leader moved and dropped its
requests) ends every request, and new ones are sent. Any other status ends the feed
(:class:`PullFailed`): ``503`` (nobody serves the consumer: no leader yet, or it was
deleted), ``409 Consumer Deleted``, a request refused; the runner pauses, creates the
consumer if it is missing, and opens a new feed. A request nobody answered by its
expiry plus :data:`GRACE` (the connection dropped, so the server forgot it) is
counted as ended, so a feed never waits longer than that on a request that no longer
exists.

Buffered messages are never more than ``batch`` together with what is outstanding,
and the runner acknowledges them after its commit. A request also names the data it
may bring (``max_bytes``: one commit's worth and the largest message the server
takes, which always fits): asked for by count alone, a backlog of 1 MiB slices came at
``batch`` MiB a request and partition, faster than a loop busy committing read it, and
the server dropped the connection as a slow consumer (its ``max_pending``, 64 MiB).
A request ends early when its next message would not fit (``409 Message Size Exceeds
MaxBytes``, with the pending header), and the next one is sent as usual.

One call hands out at most ``batch`` messages and ``max_bytes`` of message data
(always at least one message): the bound on one group commit. :meth:`PullFeed.close`
drains the subscription (unsubscribe, then a round trip, so every message the server
sent before it has arrived) and naks what was delivered but not taken, for immediate
redelivery to the partition's next owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ..errors import SpotifyEventsError

log = logging.getLogger(__name__)

#: How long a pull request stays open on the server (then ``408``, and a new one).
EXPIRES = 1.0
#: How long past its expiry an unanswered request is still waited for.
GRACE = 0.5
#: Bound on closing: the drain's round trip.
CLOSE_TIMEOUT = 2.0
#: What a request's ``max_bytes`` adds for the subject and headers the server counts
#: with a message's data.
REQUEST_SLACK = 4096
_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING = "Nats-Pending-Messages"


class PullFailed(SpotifyEventsError):
    """The server refused or could not serve the pull requests (no consumer leader, the
    consumer deleted): close the feed and, after a pause, make sure of the consumer."""


async def ensure_consumer(js: Any, stream: str, durable: str, subject: str, config: Any) -> None:
    """Create the durable pull consumer on ``subject`` unless it exists (as
    ``pull_subscribe`` does: an existing consumer is used as it is)."""
    from nats.js.errors import NotFoundError

    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        config.name = config.durable_name = durable
        config.filter_subject = subject
        await js.add_consumer(stream, config=config)


class PullFeed:
    """Messages of one durable pull consumer, ``batch`` and ``max_bytes`` at most at a time."""

    def __init__(self, nc: Any, stream: str, consumer: str, *, batch: int, max_bytes: int) -> None:
        self._nc = nc
        self._batch = batch
        self._max_bytes = max_bytes
        self._request_bytes = max_bytes + int(nc.max_payload) + REQUEST_SLACK
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._buffer: list[Any] = []
        self._pending = 0  # what the outstanding requests may still deliver
        self._requests_end = 0.0  # monotonic: every outstanding request has expired
        self._waiter: asyncio.Future[None] | None = None
        self._failed: str | None = None
        self._closed = False

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)

    async def _arrived(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            if self._closed:  # a drain that timed out left the subscription: hand it back
                await _nak(msg)
                return
            self._buffer.append(msg)
            self._pending = max(self._pending - 1, 0)
        elif status == "100":  # an idle heartbeat: not asked for, nothing to count
            return
        elif _PENDING in headers:  # one request ended early: 408 on expiry, 409 on a limit
            try:
                self._pending = max(self._pending - int(headers[_PENDING]), 0)
            except ValueError:
                self._pending = 0
        elif status == "409" and "Leadership Change" in headers.get(_DESCRIPTION, ""):
            self._pending = 0  # the consumer's new leader starts without our requests
        else:  # 503 (no consumer to answer), 409 Consumer Deleted, or a request refused
            description = headers.get(_DESCRIPTION, "").strip().partition("\n")[0]
            self._failed = f"{status} {description}".strip()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self, timeout: float) -> list[Any]:
        """What has arrived, up to ``batch`` messages and ``max_bytes`` of data (at least
        one message); waits up to ``timeout`` seconds for the first one (then ``[]``).
        Raises :class:`PullFailed`, or what publishing a pull request raises (no
        connection)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            if self._failed is not None:
                raise PullFailed(self._failed)
            now = time.monotonic()
            if self._pending and now >= self._requests_end:
                self._pending = 0  # unanswered past expiry: the server has forgotten them
            n = self._fitting()
            taken = self._buffer[:n]
            del self._buffer[:n]
            held = self._pending + len(self._buffer)
            if held <= self._batch // 2:  # ask early: the next messages arrive during the commit
                await self._request(self._batch - held, now)
            if taken:
                return taken
            if now >= deadline:
                return []
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(min(deadline, self._requests_end) - now, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def _fitting(self) -> int:
        """How many buffered messages one batch takes: ``batch`` at most, and no more
        than ``max_bytes`` of data unless the first alone is bigger."""
        n, size = 0, 0
        for msg in self._buffer[: self._batch]:
            size += len(msg.data)
            if n and size > self._max_bytes:
                break
            n += 1
        return n

    async def _request(self, n: int, now: float) -> None:
        body = json.dumps(
            {"batch": n, "max_bytes": self._request_bytes, "expires": int(EXPIRES * 1e9)}
        ).encode()
        await self._nc.publish(self._subject, body, reply=self._inbox)
        self._pending += n
        self._requests_end = now + EXPIRES + GRACE

    async def close(self) -> None:
        """Stop the requests, wait (bounded) for what the server already sent, and nak
        every message delivered but not taken: the next owner gets them at once."""
        self._closed = True
        if self._sub is not None:
            try:
                await asyncio.wait_for(self._sub.drain(), CLOSE_TIMEOUT)
            except Exception as exc:  # no connection: what is in flight comes back after ack_wait
                log.debug("draining the pull subscription %s: %s", self._inbox, exc)
        left, self._buffer = self._buffer, []
        for msg in left:
            await _nak(msg)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _nak(msg: Any) -> None:
    """A nak is a fire-and-forget publish; if it fails, JetStream redelivers after ack_wait."""
    try:
        await msg.nak()
    except Exception as exc:
        log.debug("nak failed (the message will be redelivered): %s", exc)
