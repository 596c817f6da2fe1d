"""spotify-events: typed events, buffered durably, delivered exactly once or reported.

The public face is :class:`EventClient` (log, flush, close); schemas live in a
:class:`SchemaRegistry`. Everything this package raises derives from
:class:`SpotifyEventsError`.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spotify-events")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

from .client import ClientStats, EventClient
from .config import ClientConfig, Durability
from .default import close, configure, flush, get_client, log, timed, track
from .errors import (
    ClientClosedError,
    ConfigError,
    EventTooLargeError,
    EventValidationError,
    MissingExtraError,
    QueueError,
    QueuePathError,
    SchemaError,
    SpotifyEventsError,
    UnknownEventTypeError,
)
from .schemas import SchemaRegistry, check_compatibility

# A library logs; the application decides where that goes (no "No handlers" noise).
logging.getLogger("spotify_events").addHandler(logging.NullHandler())

__all__ = [
    "ClientClosedError",
    "ClientConfig",
    "ClientStats",
    "ConfigError",
    "Durability",
    "EventClient",
    "EventTooLargeError",
    "EventValidationError",
    "MissingExtraError",
    "QueueError",
    "QueuePathError",
    "SchemaError",
    "SchemaRegistry",
    "SpotifyEventsError",
    "UnknownEventTypeError",
    "__version__",
    "check_compatibility",
    "close",
    "configure",
    "flush",
    "get_client",
    "log",
    "timed",
    "track",
]
