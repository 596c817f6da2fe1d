"""The settings each SDK component takes, as frozen objects derived from ClientConfig.

Defaults live in one place, :class:`~spotify_events.config.ClientConfig`; the
queue, writer, shipper and transport hold none of their own, so a component built
directly behaves like the one a client builds. ``ClientConfig.queue_settings()``
and its siblings make these objects; tests vary one field with
``dataclasses.replace``. This module imports nothing else of the package, so
config, queue and writer can all depend on it without a cycle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypedDict

from .errors import ConfigError

#: Bytes a buffered event costs beyond its payload (the PendingEvent tuple, the
#: bytes and int objects, the list slot), measured with tracemalloc on CPython
#: 3.11: counting it makes max_buffer_bytes a bound on memory, not on payloads.
EVENT_MEMORY_OVERHEAD = 160
#: How long a queue connection waits for another process's SQLite lock.
QUEUE_BUSY_TIMEOUT = 10.0
#: A buffered group this big commits at once instead of waiting out ``commit_interval``.
#: Past a few hundred rows a transaction's fixed cost (BEGIN, counters, COMMIT, the WAL
#: frame) is spread thin (benchmarks/RESULTS.md, "The rate curve"), while a smaller group keeps
#: what ``durability="buffered"`` can lose to a SIGKILL at high rates short.
COMMIT_GROUP_EVENTS = 256


class DropPolicy(str, enum.Enum):
    """What a full queue gives up: the oldest events (default) or the incoming ones."""

    OLDEST = "oldest"
    NEWEST = "newest"


class Durability(str, enum.Enum):
    """When ``log()`` returns, and so what an event survives (see README)."""

    BUFFERED = "buffered"  # in memory; committed within commit_interval (sooner in big groups)
    COMMIT = "commit"  # its SQLite transaction committed: survives kill -9
    FSYNC = "fsync"  # committed and fsynced: survives power loss


class Shipping(str, enum.Enum):
    """Who sends the queue file's events: a thread in this process (default), or a
    ``spotify-events agent`` process on the host that holds the file's shipping lease."""

    IN_PROCESS = "in-process"
    AGENT = "agent"


@dataclass(frozen=True)
class QueueSettings:
    """What a :class:`~spotify_events.queue.DurableQueue` is bounded by."""

    max_queue_bytes: int
    drop_policy: DropPolicy
    fsync: bool
    busy_timeout: float = QUEUE_BUSY_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_queue_bytes <= 0:
            raise ConfigError(f"max_queue_bytes must be positive, got {self.max_queue_bytes}")
        if self.busy_timeout <= 0:
            raise ConfigError(f"busy_timeout must be positive, got {self.busy_timeout}")
        try:
            object.__setattr__(self, "drop_policy", DropPolicy(self.drop_policy))
        except ValueError:
            raise ConfigError(
                f"drop_policy must be 'oldest' or 'newest', got {self.drop_policy!r}"
            ) from None


@dataclass(frozen=True)
class WriterSettings:
    """How the :class:`~spotify_events.writer.QueueWriter` buffers and commits."""

    commit_interval: float
    max_buffer_bytes: int
    block_timeout: float
    group_events: int = COMMIT_GROUP_EVENTS


@dataclass(frozen=True)
class ShipperSettings:
    """Batch limits, timers and the identity the :class:`~spotify_events.shipper.Shipper`
    stamps on every batch."""

    max_events: int
    max_bytes: int
    linger: float
    heartbeat_interval: float
    lease_ttl: float
    backoff_max: float
    hold_retry_max: float
    service: str
    host: str
    sdk_version: str


@dataclass(frozen=True)
class TransportSettings:
    """Where and how :class:`~spotify_events.transport.HttpTransport` posts."""

    endpoint: str
    token: str | None
    connect_timeout: float
    read_timeout: float
    verify: bool | str
    user_agent: str


class ClientSettings(TypedDict, total=False):
    """The keyword arguments of ``EventClient(...)`` and ``configure(...)``: one per
    :class:`~spotify_events.config.ClientConfig` field, so editors and mypy see each
    setting and its type. Any of them may be left out (the environment, then the
    default, fills it in); ``None`` also means "not given"."""

    endpoint: str | None
    queue_path: str | Any | None  # a str or os.PathLike
    schemas: Any
    durability: Durability | str | None
    shipping: Shipping | str | None
    token: str | None
    service: str | None
    max_queue_bytes: int | None
    drop_policy: DropPolicy | str | None
    max_event_bytes: int | None
    commit_interval: float | None
    max_buffer_bytes: int | None
    block_timeout: float | None
    commit_timeout: float | None
    batch_max_events: int | None
    batch_max_bytes: int | None
    linger: float | None
    heartbeat_interval: float | None
    lease_ttl: float | None
    backoff_max: float | None
    hold_retry_max: float | None
    connect_timeout: float | None
    read_timeout: float | None
    verify: bool | str | None
    close_timeout: float | None
    exit_timeout: float | None
