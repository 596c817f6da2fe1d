"""CollectorConfig: every ``spotify-events collector`` setting and its default.

The one place the collector's defaults are written: limits that belong to delivery
or ingest take their defaults from :class:`DeliveryConfig` and :class:`IngestLimits`,
and the command line reads its option defaults from this class. It imports no
server dependency, so the CLI can show its help without them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import check_token
from ..errors import ConfigError
from .ingest import IngestLimits
from .seam import DeliveryConfig


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``spotify-events collector`` can be told; validated at construction."""

    data_dir: str
    schemas: str
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    grace_period: float = DeliveryConfig.grace_period
    lateness: float = DeliveryConfig.lateness
    max_body_bytes: int = IngestLimits.max_body_bytes
    max_events: int = IngestLimits.max_events
    max_decoded_bytes: int = IngestLimits.max_decoded_bytes
    threads: int = 8
    close_interval: float = 30.0
    codec: str = "deflate"
    metrics_token: str | None = None
    connection_limit: int = 1000
    channel_timeout: float = 60.0
    max_open_files: int = DeliveryConfig.max_open_files
    max_hours_per_batch: int = DeliveryConfig.max_hours_per_batch
    max_ranges_per_stream: int = DeliveryConfig.max_ranges_per_stream
    max_future_seconds: float = IngestLimits.max_future_seconds
    group_readable: bool = False
    adopt_data_dir: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        for name in (
            "threads",
            "connection_limit",
            "max_open_files",
            "max_hours_per_batch",
            "max_ranges_per_stream",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for name in ("close_interval", "channel_timeout", "max_future_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        check_token("token", self.token)
        check_token("metrics_token", self.metrics_token)


def collector_default(name: str) -> Any:
    """The default of one :class:`CollectorConfig` field (for the CLI's options)."""
    return _DEFAULTS[name]


_DEFAULTS = {f.name: f.default for f in fields(CollectorConfig)}
