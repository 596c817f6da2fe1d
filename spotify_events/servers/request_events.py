"""One typed event per HTTP request: WSGI and ASGI middleware, no framework needed.

The per-request counterpart of ``@track``: the event is a :func:`timed()
<spotify_events.instrument.timed>` block around the request, so a schema shaped like
the example ``ServiceCall`` gets, when it has these fields:

* ``operation``: ``"<METHOD> <route>"``; the route is the framework's route template
  when the ASGI framework records one in the scope (Starlette, FastAPI:
  ``/items/{item_id}``), else the raw path. Raw paths can carry ids: pass
  ``route=`` (``environ``/``scope`` -> str) to keep the number of distinct values small;
* ``status_code``: the response status (500 when the application raised before
  answering);
* ``duration_ms``, ``outcome`` (``ERROR`` when the application raised),
  ``exception_type`` and ``service``, as ``timed()`` fills them; for WSGI the time
  runs until the server closes the response body, so streamed bodies count;
* static fields given to the middleware, and ``fields(environ_or_scope, status) ->
  dict`` computed per request (wins over everything else).

Like all instrumentation it never breaks the request: an event that cannot be built
or logged is logged once and counted in ``client.instrumentation_errors``.

WSGI (Flask, Django, any WSGI app)::

    app.wsgi_app = WsgiRequestEvents(app.wsgi_app, "ServiceCall", client=client)

ASGI (FastAPI, Starlette, Django's ASGI app)::

    app.add_middleware(AsgiRequestEvents, event_type="ServiceCall", client=client)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from ..client import EventClient
from ..default import _default
from ..instrument import ClientSource, Timed, _as_source, _count_failure, timed
from . import App, Receive, Scope, Send

logger = logging.getLogger("spotify_events")

#: ``route(environ_or_scope) -> str`` and ``fields(environ_or_scope, status) -> dict``.
RouteFn = Callable[[Mapping[str, Any]], str]
RequestFieldsFn = Callable[[Mapping[str, Any], "int | None"], Mapping[str, Any]]

OPERATION = "operation"
STATUS_CODE = "status_code"


class _RequestEvents:
    """What the WSGI and ASGI middleware share: the event's plan and how it is finished."""

    def __init__(
        self,
        event_type: str,
        client: EventClient | None,
        route: RouteFn | None,
        fields: RequestFieldsFn | None,
        static_fields: dict[str, Any],
    ) -> None:
        self._source: ClientSource = _as_source(client if client is not None else _default)
        self._event_type = event_type
        self._static = static_fields
        timed(self._source, event_type, **static_fields)  # unknown type or field: raise now
        schema = self._source.schema_registry().get(event_type)
        names = {f["name"] for f in schema.parsed["fields"]}
        self._sets_operation = OPERATION in names and OPERATION not in static_fields
        self._sets_status = STATUS_CODE in names
        self._route = route
        self._fields = fields
        self._warned = False

    def _begin(self) -> Timed:
        return timed(self._source, self._event_type, **self._static).__enter__()

    def _finish(
        self,
        block: Timed,
        request: Mapping[str, Any],
        method: str,
        default_route: str,
        status: int | None,
        exc: BaseException | None,
    ) -> None:
        try:
            if self._sets_operation:
                route = self._route(request) if self._route is not None else default_route
                block[OPERATION] = f"{method} {route}"
            if self._sets_status and status is not None:
                block[STATUS_CODE] = status
            if self._fields is not None:
                block.set(**self._fields(request, status))
        except Exception as err:  # a user callable failed: emit what we have, say so once
            self._failed(err)
        block.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def _failed(self, err: Exception) -> None:
        with contextlib.suppress(Exception):  # no client to count on: the warning says it
            _count_failure(self._source.get_client())
        if not self._warned:
            self._warned = True
            logger.warning(
                "spotify-events: request event %s: route= or fields= failed (%s: %s); the "
                "request was not affected. Further such failures are only counted "
                "(client.instrumentation_errors).",
                self._event_type,
                type(err).__name__,
                err,
                exc_info=err,
            )


class WsgiRequestEvents(_RequestEvents):
    """WSGI middleware: one ``event_type`` event per request (see the module docstring)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        event_type: str = "ServiceCall",
        *,
        client: EventClient | None = None,
        route: RouteFn | None = None,
        fields: RequestFieldsFn | None = None,
        **static_fields: Any,
    ) -> None:
        super().__init__(event_type, client, route, fields, static_fields)
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        block = self._begin()
        status: int | None = None

        def recording_start_response(status_line: str, *args: Any) -> Any:
            nonlocal status
            status = _status_code(status_line)
            return start_response(status_line, *args)

        def finish(exc: BaseException | None) -> None:
            method = environ.get("REQUEST_METHOD", "")
            path = environ.get("PATH_INFO") or "/"
            self._finish(block, environ, method, path, _answered(status, exc), exc)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException as exc:
            finish(exc)
            raise
        return _Body(body, finish)


class _Body:
    """The application's response body, passed through; the event is finished when the
    server closes it (WSGI requires that), or when iterating it raises."""

    __slots__ = ("_body", "_done", "_finish")

    def __init__(self, body: Iterable[bytes], finish: Callable[[BaseException | None], None]):
        self._body = body
        self._finish = finish
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except BaseException as exc:
            self._end(exc)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._finish(exc)


class AsgiRequestEvents(_RequestEvents):
    """ASGI middleware: one ``event_type`` event per HTTP request; other scopes
    (lifespan, websocket) pass through untouched."""

    def __init__(
        self,
        app: App,
        event_type: str = "ServiceCall",
        *,
        client: EventClient | None = None,
        route: RouteFn | None = None,
        fields: RequestFieldsFn | None = None,
        **static_fields: Any,
    ) -> None:
        super().__init__(event_type, client, route, fields, static_fields)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        block = self._begin()
        status: int | None = None

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except BaseException as exc:  # cancelled (client gone, shutdown) too: still an event
            answered = _answered(status, exc)
            self._finish(block, scope, scope["method"], _asgi_route(scope), answered, exc)
            raise
        self._finish(block, scope, scope["method"], _asgi_route(scope), status, None)


def _asgi_route(scope: Scope) -> str:
    """The route template the framework matched (Starlette and FastAPI put the route
    object in the scope), else the raw path."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else str(scope.get("path") or "/")


def _answered(status: int | None, exc: BaseException | None) -> int | None:
    """The status the client got: the application's, or the server's 500 for an
    exception raised before it answered (a cancellation answers nothing)."""
    if status is None and isinstance(exc, Exception):
        return 500
    return status


def _status_code(status_line: str) -> int | None:
    try:
        return int(status_line.split(" ", 1)[0])
    except ValueError:
        return None
