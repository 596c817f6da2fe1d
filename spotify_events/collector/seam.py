"""The seam between ingest and delivery: what a batch's delivery answers, and its settings.

Ingest hands each validated batch to a :class:`Delivery` (two methods: ``deliver``
and ``close``). In the single-process collector that is a direct call into
:class:`~.delivery.LocalDelivery`; when the tier scales out (docs/architecture.md)
the same seam becomes a JetStream publish on the ingest side and a consumer calling
``LocalDelivery.deliver_all`` on the other, with no change to either half.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigError
from .buckets import BUCKET_CODECS
from .datadir import FileModes

if TYPE_CHECKING:
    from .ingest import IngestedBatch, Rejection


class DeliveryStatus(enum.Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # not durable; the client must retry (HTTP 503)


@dataclass
class DeliveryResult:
    """Outcome of one ``deliver`` call; never an exception for the caller to catch."""

    status: DeliveryStatus
    accepted: int = 0
    duplicates: int = 0
    skewed: int = 0
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    duplicates_by_type: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)  # refused by delivery
    #: (event type, seq) of ingest's rejections whose number the ledger had already
    #: received: answered as duplicates, so a producer never dead-letters a copy of an
    #: event the collector holds (e.g. one a stricter setting now refuses).
    received_before: set[tuple[str, int]] = field(default_factory=set)
    message: str = ""


class Delivery(Protocol):
    """The seam between ingest and delivery (a direct call today, a stream hop later).

    ``deliver`` returns only once the accepted events are durable (or says
    ``UNAVAILABLE``); it never raises for a batch. ``close`` flushes and releases.
    """

    def deliver(self, batch: IngestedBatch) -> DeliveryResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeliveryConfig:
    """Delivery settings, validated at construction."""

    grace_period: float = 300.0  # seconds a missing number may stay an open gap
    lateness: float = 600.0  # seconds after an hour ends before its bucket closes
    codec: str = "deflate"  # bucket file codec: readable by every Avro implementation
    max_part_bytes: int = 256 << 20  # roll over to a new part file past this size
    max_open_files: int = 256  # part files kept open; the least recently used is closed
    max_hours_per_batch: int = 32  # distinct (type, hour) buckets one batch may write to
    conflict_window: int = 1024  # last N numbers per stream whose payload checksum is kept
    #: Ranges of sequence numbers (received plus marked) a (producer, type) stream may
    #: need: out-of-order numbers with gaps make one each, held in memory, rewritten to
    #: the ledger with every batch of the stream and shifted on each insert.
    max_ranges_per_stream: int = 10_000
    modes: FileModes = field(default_factory=FileModes)
    adopt_data_dir: bool = False  # start a new ledger in a data dir that has files

    def __post_init__(self) -> None:
        if self.grace_period < 0:
            raise ConfigError("grace_period must be >= 0")
        if self.lateness < 0:
            raise ConfigError("lateness must be >= 0")
        if self.codec not in BUCKET_CODECS:
            raise ConfigError(f"codec must be one of {BUCKET_CODECS}")
        if self.max_part_bytes < 1024:
            raise ConfigError("max_part_bytes must be >= 1024")
        for name in (
            "max_open_files",
            "max_hours_per_batch",
            "conflict_window",
            "max_ranges_per_stream",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
