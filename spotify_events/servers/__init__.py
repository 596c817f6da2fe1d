"""Glue for the servers services run on: start the client's threads in each worker after
the fork, close it where the server stops, and one event per HTTP request.

* :mod:`spotify_events.servers.gunicorn`: ``post_worker_init`` / ``worker_exit`` hooks;
* :mod:`spotify_events.servers.lifespan`: an ASGI lifespan (FastAPI, Starlette, or any
  ASGI app through ``with_lifespan``) for uvicorn, which never runs ``atexit`` hooks;
* :mod:`spotify_events.servers.request_events`: WSGI and ASGI middleware.

None of them imports a web framework; recipes per server are in docs/servers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..client import EventClient
from ..default import _default, get_client

# ASGI's callable shapes, spelled out (no framework to import them from).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def resolve(client: EventClient | str | None) -> EventClient:
    """The client a helper acts on: the default client (``None``), the given one, or
    ``"package.module:attribute"`` imported now (in the worker, after the fork)."""
    if client is None:
        return get_client()
    if isinstance(client, EventClient):
        return client
    module_name, _, attribute = client.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:attribute', got {client!r}")
    found = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(found, EventClient):
        raise TypeError(f"{client} is {found!r}, not an EventClient")
    return found


def close_for_exit(client: EventClient | str | None) -> bool:
    """Close as the ``atexit`` hook would: within ``exit_timeout``. The default client is
    closed through :func:`spotify_events.close` (sticky), and only if one was created."""
    if client is None:
        created = _default.client
        return True if created is None else _default.close(created.config.exit_timeout)
    resolved = resolve(client)
    return resolved.close(resolved.config.exit_timeout)
