"""The collector's WSGI application: routing, auth, body limits, status codes.

Thin on purpose: :class:`~.ingest.Ingest` decides what a body means, a
:class:`~.delivery.Delivery` makes it durable, and this module only maps their
outcomes to HTTP (200 / 400 / 401 / 403 / 404 / 405 / 413 / 503, every error body
``{"error": "..."}``). Anything unexpected while handling client input is logged
and answered 503 with ``Retry-After`` (the SDK retries), never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..wire import CONTENT_TYPE
from .ingest import Ingest, IngestError
from .metrics import CollectorMetrics
from .page import render_page
from .seam import Delivery, DeliveryStatus

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    503: "Service Unavailable",
}


#: Headers of the completeness page: it is built from producer-supplied strings, so
#: beyond escaping them it runs no script and loads nothing, whatever they contain.
#: What a 401 from the page asks of a browser: the token as the basic-auth password.
PAGE_CHALLENGE = 'Basic realm="spotify-events", charset="UTF-8"'

PAGE_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
]


class CollectorApp:
    """``POST /v1/batches``, ``GET /healthz``, ``GET /metrics``, ``GET /v1/report``, and
    ``GET /`` (the completeness page, :mod:`.page`)."""

    def __init__(
        self,
        *,
        ingest: Ingest,
        delivery: Delivery,
        metrics: CollectorMetrics,
        report: Callable[[], dict[str, Any]] | None = None,
        token: str | None = None,
        metrics_token: str | None = None,
    ) -> None:
        self.ingest = ingest
        self.delivery = delivery
        self.metrics = metrics
        self.report = report
        self._token = token.encode() if token else None
        # /metrics takes either token, so a scraper need not hold the producers' one
        self._metrics_tokens = [t.encode() for t in (token, metrics_token) if t]

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/v1/batches":
                if method != "POST":
                    status, body, ctype, extra = self._error(405, "use POST", "method")
                else:
                    started = time.perf_counter()
                    status, body, ctype, extra = self._post_batch(environ)
                    self.metrics.latency.observe(time.perf_counter() - started)
            elif path in ("/", "/healthz", "/metrics", "/v1/report"):
                if method not in ("GET", "HEAD"):
                    status, body, ctype, extra = self._error(405, "use GET", "method")
                elif path == "/healthz":
                    status, body, ctype, extra = 200, b'{"status":"ok"}', "application/json", []
                elif path == "/metrics":
                    denied = self._check_auth(environ, self._metrics_tokens)
                    status, body, ctype, extra = denied or (
                        200,
                        self.metrics.render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                        [],
                    )
                elif path == "/v1/report":
                    status, body, ctype, extra = self._report(environ)
                else:
                    status, body, ctype, extra = self._page(environ)
            else:
                status, body, ctype, extra = self._error(404, f"no route {path[:100]}", "route")
        except Exception:  # belt and braces: a bug must not become a 500 for the client
            log.exception("unexpected error handling %s %s", method, path[:100])
            status, body, ctype, extra = self._error(503, "internal error; retry", "internal")
            extra = [("Retry-After", "1")]
        self.metrics.requests.labels(path if path in _ROUTES else "other", str(status)).inc()
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra]
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [b"" if method == "HEAD" else body]

    # -- routes ---------------------------------------------------------------
    def _post_batch(self, environ: Environ) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        m = self.metrics
        denied = self._check_auth(environ)
        if denied is not None:
            return denied
        limit = self.ingest.limits.max_body_bytes
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return self._error(400, "bad Content-Length", "length")
        if length > limit:
            return self._error(413, f"body exceeds {limit} bytes", "too_large")
        stream = environ["wsgi.input"]
        body = stream.read(length) if length >= 0 else stream.read(limit + 1)
        if len(body) > limit:
            return self._error(413, f"body exceeds {limit} bytes", "too_large")
        m.bytes.inc(len(body))
        try:
            batch = self.ingest.parse(body)
        except IngestError as exc:
            if exc.kind == "decode":
                m.decode_errors.inc()
            return self._error(exc.status, str(exc), exc.kind)
        result = self.delivery.deliver(batch)
        if result.status is not DeliveryStatus.OK:
            status, body_out, ctype, _ = self._error(
                503, result.message or "unavailable", "unavailable"
            )
            return status, body_out, ctype, [("Retry-After", "1")]
        # metrics
        label = m.type_label
        for etype, n in result.accepted_by_type.items():
            m.events.labels(label(etype), "accepted").inc(n)
        for etype, n in result.duplicates_by_type.items():
            m.events.labels(label(etype), "duplicate").inc(n)
        received = result.received_before
        rejections = [
            *(r for r in batch.rejections if (r.event_type, r.seq) not in received),
            *result.rejections,
        ]
        for rej in rejections:
            m.events.labels(label(rej.event_type), "rejected").inc()
        if result.skewed:
            m.skewed.inc(result.skewed)
        m.batches.inc()
        if batch.events:
            newest = max(e.timestamp for e in batch.events) / 1000.0
            m.batch_lag.observe(max(0.0, batch.facts.received_at - newest))
        elif not rejections:
            m.heartbeats.inc()
        out = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": [r.to_json() for r in rejections],
        }
        return 200, json.dumps(out).encode(), "application/json", []

    def _report(self, environ: Environ) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        denied = self._check_auth(environ)
        if denied is not None:
            return denied
        if self.report is None:
            return self._error(404, "no report source", "route")
        return 200, json.dumps(self.report()).encode(), "application/json", []

    def _page(self, environ: Environ) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        denied = self._check_auth(environ, challenge=PAGE_CHALLENGE)
        if denied is not None:
            return denied
        if self.report is None:
            return self._error(404, "no report source", "route")
        page = render_page(self.report()).encode()
        return 200, page, "text/html; charset=utf-8", list(PAGE_HEADERS)

    # -- helpers --------------------------------------------------------------
    def _check_auth(
        self,
        environ: Environ,
        tokens: list[bytes] | None = None,
        *,
        challenge: str = 'Bearer realm="spotify-events"',
    ) -> tuple[int, bytes, str, list[tuple[str, str]]] | None:
        """The token as ``Authorization: Bearer TOKEN``, or, for browsers, as the password
        of HTTP basic auth (any user name); ``tokens`` overrides the accepted tokens (the
        scrape token of ``/metrics``). A 401 carries ``challenge``: the page asks for basic
        auth, so a browser prompts for it."""
        accepted = ([self._token] if self._token else []) if tokens is None else tokens
        if not accepted:
            return None
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not header:
            status, body, ctype, _ = self._error(401, "missing Authorization: Bearer token", "auth")
            return status, body, ctype, [("WWW-Authenticate", challenge)]
        if not token_matches(header, accepted):
            if challenge.startswith("Basic"):  # a wrong password: let the browser ask again
                status, body, ctype, _ = self._error(401, "invalid token", "auth")
                return status, body, ctype, [("WWW-Authenticate", challenge)]
            return self._error(403, "invalid token", "auth")
        return None

    def _error(
        self, status: int, message: str, kind: str
    ) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        self.metrics.bad_requests.labels(kind).inc()
        return status, json.dumps({"error": message}).encode(), "application/json", []


def token_matches(header: str, accepted: list[bytes]) -> bool:
    """Whether an ``Authorization`` header presents one of ``accepted``: as a bearer
    token, or as the password of HTTP basic auth. Every token is compared (no early
    exit), each in constant time."""
    scheme, _, credentials = header.partition(" ")
    given = _presented_token(scheme, credentials.strip())
    matches = [hmac.compare_digest(given, t) for t in accepted]
    return bool(given) and any(matches)


def _presented_token(scheme: str, credentials: str) -> bytes:
    """The token a request presents: a bearer token, or a basic-auth password (how a
    browser sends it to the completeness page)."""
    if scheme.lower() == "bearer":
        return credentials.encode("utf-8", "replace")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return b""
        return decoded.partition(b":")[2]
    return b""


_ROUTES = frozenset({"/", "/v1/batches", "/healthz", "/metrics", "/v1/report"})

#: Re-exported for clients building requests by hand.
BATCH_CONTENT_TYPE = CONTENT_TYPE
