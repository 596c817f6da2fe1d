"""The stream and the lease bucket: names, configuration, creation, and the partition check.

One stream (default ``SPOTIFY_EVENTS``) with one subject per partition,
``<stream>.p.<n>``. Its description records the partition count
(``spotify-events partitions=N``): the count decides which partition a producer's
messages land in, so every process must agree on it. The first process to start
creates the stream; a process started with another count refuses to run
(:class:`StreamConfigError`), because it would split producers' sequences across
partitions.

Retention is by age (7 days by default, as Pub/Sub kept undelivered data) and the
dedupe window is 2 minutes: a retried batch within it is answered as a duplicate by
JetStream itself; later retries are deduplicated by the workers' ledgers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError, SpotifyEventsError

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_STREAM = "SPOTIFY_EVENTS"
_DESCRIPTION = re.compile(r"spotify-events partitions=(\d+)")
_STREAM_NAME_IN_USE = 10058  # JetStream API error code
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StreamConfigError(SpotifyEventsError):
    """The stream cannot be created, or exists with another partition count."""


@dataclass(frozen=True)
class StreamSettings:
    """What the stream looks like; validated at construction."""

    name: str = DEFAULT_STREAM
    partitions: int = 8
    replicas: int = 3
    max_age: float = 7 * 86400.0
    duplicate_window: float = 120.0
    max_bytes: int = -1  # unlimited: age is the retention

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError("stream name must be 1-64 of A-Z a-z 0-9 _ -")
        if not 1 <= self.partitions <= 1024:
            raise ConfigError("partitions must be 1..1024")
        if self.replicas not in (1, 3, 5):
            raise ConfigError("replicas must be 1, 3 or 5")
        if not 0 < self.duplicate_window <= self.max_age:
            raise ConfigError("duplicate_window must be > 0 and <= max_age")

    def subject(self, partition: int) -> str:
        return f"{self.name}.p.{partition}"

    @property
    def lease_bucket(self) -> str:
        return f"{self.name}_leases"

    @property
    def description(self) -> str:
        return f"spotify-events partitions={self.partitions}"


def partitions_of(description: str | None) -> int | None:
    match = _DESCRIPTION.fullmatch(description or "")
    return int(match.group(1)) if match else None


async def ensure_stream(js: Any, settings: StreamSettings) -> int:
    """Create the stream if absent; return its partition count; refuse a mismatch."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import APIError, NotFoundError

    try:
        info = await js.stream_info(settings.name)
    except NotFoundError:
        config = StreamConfig(
            name=settings.name,
            description=settings.description,
            subjects=[f"{settings.name}.p.*"],
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.max_age,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window,
        )
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # else another process created it first
                raise
        info = await js.stream_info(settings.name)
    found = partitions_of(info.config.description)
    if found is None:
        raise StreamConfigError(
            f"stream {settings.name} exists but was not created by spotify-events "
            f"(description {info.config.description!r})"
        )
    if found != settings.partitions:
        raise StreamConfigError(
            f"stream {settings.name} has {found} partitions, this process was started with "
            f"--partitions {settings.partitions}; a producer's events must stay in one "
            "partition, so use the stream's count (or a new stream name)"
        )
    return found


async def retry_until(attempt: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T:
    """``attempt()`` until it succeeds or ``timeout`` passes; a :class:`StreamConfigError`
    is final at once. A cluster that is still forming (no meta leader yet, no quorum)
    answers with transient errors for a few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(attempt(), max(deadline - time.monotonic(), 0.1))
        except StreamConfigError:
            raise
        except Exception as exc:
            if time.monotonic() >= deadline:
                detail = str(exc) or f"no answer within {timeout:g}s"
                raise StreamConfigError(f"{what}: {type(exc).__name__}: {detail}") from exc
            log.info("%s: %s; retrying", what, exc)
            await asyncio.sleep(0.5)


async def stream_partitions(js: Any, name: str) -> int:
    """The partition count of an existing stream (workers read it; they never create)."""
    info = await js.stream_info(name)
    found = partitions_of(info.config.description)
    if found is None:
        raise StreamConfigError(f"stream {name} was not created by spotify-events")
    return found
