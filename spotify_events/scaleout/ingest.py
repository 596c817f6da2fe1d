"""The collector's delivery seam as a JetStream publish: ``collector --nats``.

:class:`JetStreamDelivery` is a :class:`~spotify_events.collector.delivery.Delivery`:
the HTTP app and the ingest half (limits, decode, validation) are the very ones the
single-process collector runs; only what happens to a validated batch differs. It
becomes slice messages (:mod:`.slices`) on the producer's partition subject, all
published in one hand-off to the loop thread (:class:`~.publishes.Publisher`: no task,
timer or future per message; at most ``max_in_flight`` awaiting their
acknowledgements per process), with one bounded wait for all of their
acknowledgements: the answer is OK only when JetStream acknowledged every one of
them, and anything else (no connection, a timeout during a leader election, a full
stream) is UNAVAILABLE, which the app answers 503 with ``Retry-After``. The SDK
keeps the events and retries; ``Nats-Msg-Id`` makes the retry of what did land a
JetStream duplicate, and the workers' ledgers dedupe whatever the window misses. A
slice that carried the batch's control facts and was answered "duplicate" is
followed by its :attr:`~.slices.Message.fallback`, the facts in a message of their own.

While publishing fails, one request at a time tries again; the others are answered 503
at once. Each try can wait for a connect and the acknowledgement timeouts, so with every
request trying, an outage would hold all of waitress's threads and ``/metrics`` and
``/healthz`` would queue behind them just when an operator looks.

Accepted and duplicate counts in the 200 are per message: events in a message
JetStream reported as a duplicate count as duplicates, the rest as accepted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ..collector.ingest import IngestedBatch
from ..collector.seam import DeliveryResult, DeliveryStatus
from ..errors import ConfigError
from .connection import LoopThread, check_server_version, close, connect
from .publishes import Publisher
from .slices import Message, batch_messages, partition_of
from .stream import StreamSettings, ensure_stream, retry_until

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1 << 20  # the server's default, until the connection tells


class JetStreamDelivery:
    """Publishes validated batches to the stream; thread-safe, fork-safe, never raises."""

    def __init__(
        self,
        urls: list[str],
        settings: StreamSettings,
        *,
        publish_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_in_flight: int = 256,
        name: str = "spotify-events-collector",
    ) -> None:
        if publish_timeout <= 0 or connect_timeout <= 0:
            raise ConfigError("timeouts must be > 0")
        if max_in_flight < 1:
            raise ConfigError("max_in_flight must be >= 1")
        self.urls = urls
        self.settings = settings
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self.name = name
        self._thread = LoopThread(name)
        # bound to the loop that made them; a forked child makes its own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._publisher: Publisher | None = None
        self._connecting: asyncio.Lock | None = None
        self._max_payload = DEFAULT_MAX_PAYLOAD
        self._last_failure = ""  # "" while publishing works
        self._retrying = threading.Lock()  # held by the one request retrying a failing stream

    # -- the seam -------------------------------------------------------------
    def deliver(self, batch: IngestedBatch) -> DeliveryResult:
        subject = self.settings.subject(
            partition_of(batch.facts.producer_id, self.settings.partitions)
        )
        messages = batch_messages(batch, subject=subject, max_bytes=self._max_payload)
        result = DeliveryResult(DeliveryStatus.OK)
        if not messages:
            return result
        # the acknowledgements are bounded; the outer bound covers connecting, waiting
        # for room among the publishes in flight, and the fallbacks
        timeout = self.connect_timeout + self.publish_timeout * (self._rounds(messages) + 2)
        failing = self._last_failure
        if failing and not self._retrying.acquire(blocking=False):
            return _unavailable(failing)  # another request is finding out whether it is back
        try:
            duplicates = self._thread.run(self._publish_all(messages), timeout)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if text != self._last_failure:  # once per kind of failure, not per request
                self._last_failure = text
                log.warning("publishing to JetStream failed (answering 503): %s", text)
            return _unavailable(text)
        finally:
            if failing:
                self._retrying.release()
        if self._last_failure:
            log.info("publishing to JetStream works again")
        self._last_failure = ""
        for message, duplicate in zip(messages, duplicates, strict=True):
            if not message.events:
                continue
            target = result.duplicates_by_type if duplicate else result.accepted_by_type
            target[message.event_type] = target.get(message.event_type, 0) + message.events
        result.accepted = sum(result.accepted_by_type.values())
        result.duplicates = sum(result.duplicates_by_type.values())
        return result

    def close(self) -> None:
        nc = self._nc

        async def drain() -> None:
            if nc is not None:
                await close(nc)

        self._thread.stop(drain, timeout=self.publish_timeout)
        self._nc = self._publisher = self._loop = None

    # -- on the loop ------------------------------------------------------------
    async def _client(self) -> Publisher:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._publisher is not None and not self._nc.is_closed:
            return self._publisher  # connected: no lock to take
        if self._loop is not loop:
            self._loop, self._nc, self._publisher = loop, None, None
            self._connecting = asyncio.Lock()
        assert self._connecting is not None
        async with self._connecting:
            if self._publisher is None or self._nc.is_closed:
                nc = await asyncio.wait_for(
                    connect(self.urls, name=self.name, connect_timeout=self.connect_timeout),
                    self.connect_timeout * max(2, len(self.urls)),
                )
                publisher = Publisher(nc, max_in_flight=self.max_in_flight)
                try:
                    await asyncio.wait_for(publisher.start(), self.connect_timeout)
                except BaseException:
                    await asyncio.wait_for(close(nc), self.connect_timeout)
                    raise
                self._nc, self._publisher = nc, publisher
                self._max_payload = int(nc.max_payload or DEFAULT_MAX_PAYLOAD)
        return self._publisher

    async def _publish_all(self, messages: list[Message]) -> list[bool]:
        """Publish, then the fallbacks of slices answered "duplicate"; True where JetStream
        answered "duplicate"."""
        duplicates = await self._publish(messages)
        fallbacks = [
            m.fallback
            for m, duplicate in zip(messages, duplicates, strict=True)
            if duplicate and m.fallback is not None
        ]
        if fallbacks:
            await self._publish(fallbacks)
        return duplicates

    def _rounds(self, messages: list[Message]) -> int:
        """How many acknowledgement waits ``messages`` take, ``max_in_flight`` at a time:
        what each bound on publishing them is a multiple of."""
        return -(-len(messages) // self.max_in_flight)

    async def _publish(self, messages: list[Message]) -> list[bool]:
        publisher = await self._client()
        return await publisher.publish(messages, self.publish_timeout * self._rounds(messages))


def _unavailable(failure: str) -> DeliveryResult:
    return DeliveryResult(
        DeliveryStatus.UNAVAILABLE, message=f"JetStream unavailable: {failure}"[:300]
    )


async def prepare_stream(urls: list[str], settings: StreamSettings, timeout: float) -> int:
    """Connect once, create the stream if absent, check its partitions; then disconnect.

    Run before serving (and before forking workers), so a wrong ``--partitions`` or an
    unreachable cluster stops the process with a clear message instead of 503s.
    """
    nc = await retry_until(
        lambda: connect(urls, name="spotify-events-setup", connect_timeout=min(timeout, 5.0)),
        timeout=timeout,
        what="connecting to NATS",
    )
    try:
        check_server_version(nc)
        js = nc.jetstream(timeout=min(timeout, 5.0))
        return await retry_until(
            lambda: ensure_stream(js, settings),
            timeout=timeout,
            what=f"creating or checking stream {settings.name}",
        )
    finally:
        await close(nc)
