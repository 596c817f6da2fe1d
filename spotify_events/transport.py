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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from .encoding import CONTENT_TYPE


class Outcome(enum.Enum):
    """What a response means for the batch that was sent."""

    ACCEPTED = "accepted"  # 2xx: delete from the queue (minus per-event rejections)
    TOO_LARGE = "too_large"  # 413: split and resend
    BAD_BATCH = "bad_batch"  # 400: bisect to find the poison events
    THROTTLED = "throttled"  # 429/503: wait Retry-After
    UNAUTHORIZED = "unauthorized"  # 401/403: keep the data, back off, shout
    RETRY = "retry"  # other status or a network failure: back off and resend


@dataclass(frozen=True)
class SendResult:
    """Facts about one attempt: status (None when no response), parsed JSON body,
    Retry-After in seconds, and an error description for network failures."""

    status: int | None
    body: Mapping[str, Any] | None = None
    retry_after: float | None = None
    error: str | None = None

    @property
    def outcome(self) -> Outcome:
        status = self.status
        if status is None:
            return Outcome.RETRY
        if 200 <= status < 300:
            return Outcome.ACCEPTED
        if status == 413:
            return Outcome.TOO_LARGE
        if status in (400, 422):
            return Outcome.BAD_BATCH
        if status in (429, 503):
            return Outcome.THROTTLED
        if status in (401, 403):
            return Outcome.UNAUTHORIZED
        return Outcome.RETRY

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no response"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} redirect: set the endpoint to the final URL (not followed)"
        detail = self.body.get("error") if isinstance(self.body, Mapping) else None
        return f"HTTP {self.status}" + (f": {detail}" if detail else "")


class Transport(Protocol):
    """Sends one batch body; never raises for network trouble (returns a result)."""

    def send(self, body: bytes, headers: Mapping[str, str]) -> SendResult: ...

    def close(self) -> None: ...


class HttpTransport:
    """POSTs batches with a keep-alive ``requests.Session``."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 30.0,
        verify: bool | str = True,
        user_agent: str = "spotify-events",
    ) -> None:
        self.endpoint = endpoint
        self.timeout = (connect_timeout, read_timeout)
        self._token = token
        self._verify = verify
        self._user_agent = user_agent
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self._verify
        session.headers.update({"Content-Type": CONTENT_TYPE, "User-Agent": self._user_agent})
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
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
        )

    def reset_after_fork(self) -> None:
        """A child must not share the parent's pooled sockets."""
        self._session = self._new_session()

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
