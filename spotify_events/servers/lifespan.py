"""An ASGI lifespan that starts the client at startup and closes it at shutdown.

uvicorn stops a worker by finishing its requests and then re-raising SIGTERM, so
the process dies of the signal and ``atexit`` hooks (the client's safety net)
never run; whatever is still buffered or unshipped then waits for the next start.
The application's lifespan is the place uvicorn does run at shutdown::

    from fastapi import FastAPI
    from spotify_events.servers.lifespan import lifespan

    app = FastAPI(lifespan=lifespan)            # the default client

or inside a lifespan of your own, for any client::

    @contextlib.asynccontextmanager
    async def app_lifespan(app):
        async with lifespan(client=client):
            yield

For an ASGI application that has no lifespan of its own (Django's
``get_asgi_application()``), wrap it: ``application = with_lifespan(application)``.

Startup starts the client's threads in the worker (leftovers ship at once);
shutdown closes it within ``exit_timeout`` (it blocks the event loop that long at
most, when no request is left to serve; a worker that does not hold the shipping
lease returns at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..client import EventClient
from . import App, Receive, Scope, Send, close_for_exit, resolve


@contextlib.asynccontextmanager
async def lifespan(
    app: object = None, *, client: EventClient | str | None = None
) -> AsyncIterator[None]:
    """``client``: an :class:`EventClient`, ``"package.module:attribute"`` naming one, or
    ``None`` for the default client. ``app`` is ignored (frameworks pass it)."""
    resolve(client).start()
    try:
        yield
    finally:
        close_for_exit(client)


def with_lifespan(app: App, *, client: EventClient | str | None = None) -> App:
    """``app`` with the ASGI lifespan protocol answered here: start the client at startup,
    close it at shutdown. For applications without a lifespan of their own; every other
    scope goes to ``app`` unchanged."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    resolve(client).start()
                except Exception as exc:  # a misconfigured client: refuse to start, say why
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                close_for_exit(client)
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application
