"""Transports: how one encoded batch reaches the collector, and what came back.

The seam is deliberately tiny (``send`` and ``close``) and carries no retry
logic: deciding what a response *means* for the queue is the shipper's job,
so a transport only reports facts as a :class:`SendResult`. ``HttpTransport``
is the real one (requests with keep-alive); ``MockTransport`` runs a handler
in-process so tests go through the seam rather than patching modules.
"""

from __future__ import annotations

import email.utils
import enum
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import requests

from .settings import TransportSettings
from .wire import CONTENT_TYPE


class Outcome(enum.Enum):
    """What a response means for the batch that was sent."""

    ACCEPTED = "accepted"  # the collector's acknowledgement: delete from the queue
    NOT_A_COLLECTOR = "not_a_collector"  # a 2xx without the collector's JSON: keep, shout
    TOO_LARGE = "too_large"  # 413: split and resend
    BAD_BATCH = "bad_batch"  # 400: bisect to find the poison events
    THROTTLED = "throttled"  # 429/503: wait Retry-After
    UNAUTHORIZED = "unauthorized"  # 401/403: keep the data, back off, shout
    WRONG_ENDPOINT = "wrong_endpoint"  # 404/405: the URL is not the batch route; keep, shout
    RETRY = "retry"  # other status or a network failure: back off and resend

    @property
    def is_configuration_error(self) -> bool:
        """Retrying soon cannot help: someone has to fix the endpoint or the token."""
        return self in (Outcome.NOT_A_COLLECTOR, Outcome.UNAUTHORIZED, Outcome.WRONG_ENDPOINT)


#: Bytes of a response body quoted in log messages (enough to recognise an HTML page).
BODY_PREVIEW_BYTES = 80


@dataclass(frozen=True)
class SendResult:
    """Facts about one attempt: status (None when no response), parsed JSON body,
    Retry-After in seconds, an error description for network failures, the start
    of the raw body and the URL that answered (both for messages)."""

    status: int | None
    body: Mapping[str, Any] | None = None
    retry_after: float | None = None
    error: str | None = None
    preview: bytes = b""
    url: str = ""

    def outcome(self, events: int) -> Outcome:
        """What this answer means for a batch of ``events`` events.

        A 2xx counts as accepted only when the body is the collector's own
        acknowledgement for exactly that many events: a proxy's welcome page or
        an empty 200 must never delete anything from the queue."""
        status = self.status
        if status is None:
            return Outcome.RETRY
        if 200 <= status < 300:
            return Outcome.ACCEPTED if self.acknowledges(events) else Outcome.NOT_A_COLLECTOR
        if status == 413:
            return Outcome.TOO_LARGE
        if status in (400, 422):
            return Outcome.BAD_BATCH
        if status in (429, 503):
            return Outcome.THROTTLED
        if status in (401, 403):
            return Outcome.UNAUTHORIZED
        if status in (404, 405):
            return Outcome.WRONG_ENDPOINT
        return Outcome.RETRY

    def acknowledges(self, events: int) -> bool:
        """Whether the body is ``{"accepted", "duplicates", "rejected": [...]}`` with
        counts that add up to the ``events`` sent (the wire format's acknowledgement)."""
        body = self.body
        if body is None:
            return False
        accepted, duplicates, rejected = (
            body.get("accepted"),
            body.get("duplicates"),
            body.get("rejected"),
        )
        if not (_is_count(accepted) and _is_count(duplicates) and isinstance(rejected, list)):
            return False
        if not all(isinstance(item, Mapping) for item in rejected):
            return False
        return accepted + duplicates + len(rejected) == events

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no response"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} redirect: set the endpoint to the final URL (not followed)"
        endpoint = self.url or "the endpoint"
        if 200 <= self.status < 300:
            if not _looks_like_acknowledgement(self.body):
                return (
                    f"{endpoint} answered {self.status} but is not a spotify-events collector: "
                    f"{self.preview!r}"
                )
            return f"{endpoint} answered {self.status} with counts that do not match the batch: {self.preview!r}"
        if self.status in (404, 405):
            path = urllib.parse.urlsplit(self.url).path if self.url else "?"
            return (
                f"HTTP {self.status} for path {path!r}: not a spotify-events batch route; "
                "check the endpoint setting (the collector's is /v1/batches)"
            )
        detail = self.body.get("error") if isinstance(self.body, Mapping) else None
        return f"HTTP {self.status}" + (f": {detail}" if detail else "")


class Transport(Protocol):
    """Sends one batch body; never raises for network trouble (returns a result)."""

    def send(self, body: bytes, headers: Mapping[str, str]) -> SendResult: ...

    def close(self) -> None: ...


class HttpTransport:
    """POSTs batches with a keep-alive ``requests.Session``."""

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self.endpoint = settings.endpoint
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self._token = settings.token
        self._verify = settings.verify
        self._user_agent = settings.user_agent
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        """A session with what requests would otherwise look up in the environment on
        every request looked up once, here: proxies (``HTTPS_PROXY``, ``NO_PROXY``...),
        a CA bundle (``REQUESTS_CA_BUNDLE``) and ``~/.netrc`` credentials. Those lookups
        read variables and stat files per batch, about 0.4 ms of CPU on a host that
        sleeps between batches, a third of a send; the endpoint never changes, so
        their answer does not either. A token wins over ``~/.netrc``."""
        session = requests.Session()
        session.headers.update({"Content-Type": CONTENT_TYPE, "User-Agent": self._user_agent})
        found = session.merge_environment_settings(self.endpoint, {}, None, self._verify, None)
        session.proxies, session.verify = found["proxies"], found["verify"]
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
        else:
            session.auth = requests.utils.get_netrc_auth(self.endpoint)
        session.trust_env = False
        return session

    def send(self, body: bytes, headers: Mapping[str, str]) -> SendResult:
        try:
            response = self._session.post(
                self.endpoint,
                data=body,
                headers=dict(headers),
                timeout=self.timeout,
                # A redirect would turn the POST into a GET whose 2xx deletes the batch
                # unseen; a 3xx is retried and logged instead (see SendResult.outcome).
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return SendResult(None, error=f"{type(exc).__name__}: {exc}")
        parsed: Mapping[str, Any] | None
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            parsed = None
        return SendResult(
            response.status_code,
            parsed if isinstance(parsed, Mapping) else None,
            parse_retry_after(response.headers.get("Retry-After")),
            preview=response.content[:BODY_PREVIEW_BYTES],
            url=self.endpoint,
        )

    def before_fork(self) -> None:
        """Nothing to quiesce: a socket is only used inside a send."""

    def after_fork_in_parent(self) -> None:
        """The parent keeps its pooled connections."""

    def after_fork_in_child(self) -> None:
        """A child must not share the parent's pooled sockets."""
        self._session = self._new_session()

    def stop(self, timeout: float) -> bool:
        """:class:`~spotify_events.lifecycle.Lifecycle`'s stop: close the session."""
        self.close()
        return True

    def close(self) -> None:
        self._session.close()


class MockTransport:
    """Calls ``handler(body, headers)`` in-process; for tests and dry runs."""

    def __init__(self, handler: Callable[[bytes, Mapping[str, str]], SendResult]) -> None:
        self.handler = handler

    def send(self, body: bytes, headers: Mapping[str, str]) -> SendResult:
        return self.handler(body, headers)

    def close(self) -> None:
        pass


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _looks_like_acknowledgement(body: Mapping[str, Any] | None) -> bool:
    return body is not None and {"accepted", "duplicates", "rejected"} <= body.keys()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
