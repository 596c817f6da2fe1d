"""gunicorn server hooks: start the client in each worker, close it when the worker exits.

In ``gunicorn.conf.py``::

    from spotify_events.servers.gunicorn import post_worker_init, worker_exit  # default client

or, for a client of your own (imported in the worker, after the fork)::

    from spotify_events.servers.gunicorn import hooks
    post_worker_init, worker_exit = hooks("myservice.events:client")

Why: with ``--preload`` the application (and a client created at import time) lives
in the master, which must not run threads; ``post_worker_init`` starts the worker's
threads once the worker has loaded the application (after ``configure()`` at import
time, with or without ``--preload``), so events an earlier worker or process left in
the queue ship even before the first request logs anything. ``worker_exit`` closes the client within its
``exit_timeout`` on every way out of a sync or async worker (``--max-requests``
recycling, SIGTERM, SIGQUIT); a worker that does not hold the shipping lease
commits and leaves at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..client import EventClient
from . import close_for_exit, resolve


def hooks(
    client: EventClient | str | None = None,
) -> tuple[Callable[[Any], None], Callable[[Any, Any], None]]:
    """``(post_worker_init, worker_exit)`` acting on ``client``: an :class:`EventClient`,
    ``"package.module:attribute"`` naming one, or ``None`` for the default client."""

    def post_worker_init(worker: Any) -> None:
        resolve(client).start()

    def worker_exit(server: Any, worker: Any) -> None:
        close_for_exit(client)

    return post_worker_init, worker_exit


post_worker_init, worker_exit = hooks()
