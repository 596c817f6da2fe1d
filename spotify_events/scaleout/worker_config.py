"""WorkerConfig: every ``spotify-events deliver`` setting and its default.

Kept apart from the worker (which imports nats-py and prometheus-client at load)
so the command line can read its option defaults from here on a core install.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..collector.config import CollectorConfig
from ..errors import ConfigError
from .stream import StreamSettings


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``spotify-events deliver`` can be told; validated at construction."""

    urls: list[str]
    data_dir: str
    schemas: str
    stream: str = "SPOTIFY_EVENTS"
    grace_period: float = CollectorConfig.grace_period
    lateness: float = CollectorConfig.lateness
    host: str = "127.0.0.1"
    port: int | None = None
    lease_ttl: float = 10.0
    ack_wait: float = 30.0
    fetch_batch: int = 64
    close_interval: float = CollectorConfig.close_interval
    startup_timeout: float = 60.0
    token: str | None = None  # needed by / and /metrics (not /healthz) when set

    def __post_init__(self) -> None:
        StreamSettings(name=self.stream)  # validates the name
        if self.lease_ttl < 0.3:
            raise ConfigError("lease_ttl must be >= 0.3 s")
        if self.ack_wait < self.lease_ttl:
            raise ConfigError("ack_wait must be >= lease_ttl")
        if not 1 <= self.fetch_batch <= 1000:
            raise ConfigError("fetch_batch must be 1..1000")
        if self.close_interval <= 0:
            raise ConfigError("close_interval must be > 0")
