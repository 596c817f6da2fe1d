"""The module-level default client, like ``logging``'s root logger.

Owns one process-wide :class:`EventClient` behind ``spotify_events.configure``,
``log``, ``track``, ``timed``, ``flush``, ``close`` and ``get_client``, for
services that would rather not pass a client around::

    import spotify_events

    @spotify_events.track("ServiceCall", service="playlists")
    def get_playlist(playlist_id: str, user_id: str | None = None) -> dict: ...

The rule this module is built around: **nothing here starts a thread or opens a
file before the first event.** Pre-fork servers (gunicorn, uwsgi) import the
application in the master and fork workers afterwards; a client created in the
master would open the SQLite queue there. So:

* The client is created on first use (``log()``, the first call of a ``@track``
  function, the end of the first ``timed()`` block, ``get_client()``), from the
  settings given to ``configure()`` or, with no ``configure()`` at all, from the
  ``SPOTIFY_EVENTS_*`` environment variables alone (``EventClient()``). That is
  in the worker, after the fork.
* ``configure(**settings)`` validates the settings and loads the schemas at once
  (a mistake fails at startup, not at the first event) but also creates the
  client lazily, so it is safe at import time too.
* ``@spotify_events.track(...)`` is applied at import time, yet we want
  an unknown event type or static field to be an error *when the decorator is
  applied*. Knowing the schema needs no client: the decorator loads the schema
  registry, which is only reading and parsing ``.avsc`` files (no threads, no
  SQLite), from ``configure(schemas=...)`` if that was called, else from
  ``SPOTIFY_EVENTS_SCHEMAS`` (default ``schemas``, relative to the working
  directory). The consequence to know: **the schemas must be findable when an
  instrumented module is imported** — set ``SPOTIFY_EVENTS_SCHEMAS``, or call
  ``configure()`` before importing instrumented modules — otherwise the import
  fails with a :class:`SchemaError` naming the path. A later ``configure()``
  with other schemas keeps functions decorated earlier bound to the schema they
  were checked against; their events are logged by full name to the new client.

``close()`` is sticky: after it, ``log()`` raises :class:`ClientClosedError` and
decorated functions keep working but emit nothing (counted) until
``configure()`` is called again. A late call during interpreter shutdown must
not resurrect a client and its threads. The client itself registers ``atexit``,
so calling ``close()`` at exit is optional.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .client import EventClient
from .config import ClientConfig
from .errors import ClientClosedError
from .instrument import FieldsFn, Timed
from .instrument import timed as _timed
from .instrument import track as _track
from .queue import check_queue_path
from .schemas import SchemaRegistry
from .settings import ClientSettings
from .transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

F = TypeVar("F", bound=Callable[..., Any])


class _DefaultClient:
    """The :class:`~spotify_events.instrument.ClientSource` behind the module functions."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.settings: ClientSettings = {}
        self.transport: Transport | None = None
        self.registry: SchemaRegistry | None = None
        self.client: EventClient | None = None
        self.closed = False

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at fork time.
        self._lock = threading.RLock()

    # -- ClientSource -----------------------------------------------------------------------
    def schema_registry(self) -> SchemaRegistry:
        registry = self.registry
        if registry is None:
            with self._lock:
                if self.registry is None:
                    config = ClientConfig.build(**self.settings)
                    self.registry = SchemaRegistry.coerce(config.schemas)
                registry = self.registry
        return registry

    def get_client(self) -> EventClient:
        client = self.client
        if client is not None:
            return client
        with self._lock:
            if self.client is None:
                if self.closed:
                    raise ClientClosedError(
                        "spotify_events.close() was called; call spotify_events.configure() "
                        "to log again"
                    )
                settings = self.settings.copy()
                settings["schemas"] = self.schema_registry()
                self.client = EventClient(transport=self.transport, **settings)
            return self.client

    # -- configuration ----------------------------------------------------------------------
    def configure(
        self,
        client: EventClient | None,
        transport: Transport | None,
        settings: ClientSettings,
    ) -> None:
        if client is not None:
            if settings or transport is not None:
                raise TypeError("configure(client=...) takes no other settings")
            registry = client.registry
        else:
            config = ClientConfig.build(**settings)  # ConfigError now, not at the first event
            registry = SchemaRegistry.coerce(config.schemas)  # SchemaError now
            check_queue_path(config.queue_path)  # QueuePathError now; the file is made later
        with self._lock:
            previous = self.client
            self.settings = ClientSettings(**settings)
            self.transport = transport
            self.registry = registry
            self.client = client
            self.closed = False
        if previous is not None and previous is not client:
            previous.close()

    def close(self, timeout: float | None) -> bool:
        with self._lock:
            client, self.client, self.closed = self.client, None, True
        return True if client is None else client.close(timeout)

    def reset(self) -> None:
        """Close the client and forget every setting (tests; not public API)."""
        with self._lock:
            client = self.client
            self._reset()
        if client is not None:
            client.close(1.0)


_default = _DefaultClient()
os.register_at_fork(after_in_child=_default.after_fork_in_child)


def configure(
    *,
    client: EventClient | None = None,
    transport: Transport | None = None,
    **settings: Unpack[ClientSettings],
) -> None:
    """Set up (or replace) the default client; closes the previous one.

    ``settings`` are :class:`EventClient`'s keyword arguments (``endpoint``,
    ``queue_path``, ``schemas``, ``durability`` ...), falling back to the
    ``SPOTIFY_EVENTS_*`` environment variables as usual. They are validated and
    the schemas loaded now; the client itself is created at the first event (see
    the module docstring for why). ``client=`` installs a ready-made client
    instead; ``transport=`` is passed to the client (tests use ``MockTransport``).
    """
    _default.configure(client, transport, settings)


def get_client() -> EventClient:
    """The default client, created now from ``configure()`` settings or the environment."""
    return _default.get_client()


def log(
    event: str | Any,
    record: Mapping[str, Any] | None = None,
    *,
    timestamp: float | datetime | None = None,
) -> None:
    """:meth:`EventClient.log` on the default client (created on first use)."""
    _default.get_client().log(event, record, timestamp=timestamp)


def track(
    event_type: str, /, *, fields: FieldsFn | None = None, **static_fields: Any
) -> Callable[[F], F]:
    """:func:`~spotify_events.instrument.track` on the default client.

    Safe at import time: checks the event type and fields against the schemas
    (file reads only) now, creates the client at the first call.
    """
    return _track(_default, event_type, fields=fields, **static_fields)


def timed(event_type: str, /, **static_fields: Any) -> Timed:
    """:func:`~spotify_events.instrument.timed` on the default client."""
    return _timed(_default, event_type, **static_fields)


def flush(timeout: float = 10.0) -> bool:
    """:meth:`EventClient.flush` on the default client; True at once if none was created."""
    client = _default.client
    return True if client is None else client.flush(timeout)


def close(timeout: float | None = None) -> bool:
    """Close the default client (if one was created); True when everything was delivered.

    Sticky until the next :func:`configure`: later events are refused.
    """
    return _default.close(timeout)
