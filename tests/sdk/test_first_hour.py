"""What a new user meets first: settings checked with a clear error naming the
setting or the path, a word about what close() leaves behind, and library logging
manners (a NullHandler, no tracebacks for expected conditions)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import END_SONG
from support import SCHEMAS, free_port

import spotify_events
from spotify_events import ConfigError, EventClient, QueuePathError
from spotify_events.default import _default
from spotify_events.transport import MockTransport, SendResult


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("linger", "50ms", "linger must be a number of seconds, got '50ms'"),
        ("batch_max_events", "5000", "batch_max_events must be a whole number"),
        ("commit_interval", True, "commit_interval must be a number of seconds"),
        ("verify", "/no/such/ca.pem", "verify: no CA bundle at '/no/such/ca.pem'"),
        ("verify", 3, "verify must be true, false or a CA bundle path"),
        ("endpoint", 8080, "endpoint must be a string"),
        ("token", b"secret", "token must be a string"),
    ],
)
def test_every_keyword_is_checked_and_named(
    tmp_path: Path, setting: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        EventClient(queue_path=str(tmp_path / "q.db"), schemas=str(SCHEMAS), **{setting: value})
    assert message in str(err.value)


def test_queue_path_problems_name_their_cause(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "q.db"
    with pytest.raises(
        QueuePathError, match=f"directory {tmp_path / 'no-such-dir'} does not exist"
    ):
        EventClient(queue_path=str(missing), schemas=str(SCHEMAS))
    with pytest.raises(QueuePathError, match="is a directory, not a queue file"):
        EventClient(queue_path=str(tmp_path), schemas=str(SCHEMAS))
    assert not missing.parent.exists()  # nothing was created on the way


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root may write anywhere, so a permission error cannot be provoked",
)
def test_queue_path_permission_denied_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(QueuePathError, match="permission denied"):
        EventClient(queue_path=str(locked / "q.db"), schemas=str(SCHEMAS))


def test_configure_checks_the_queue_path_at_once(tmp_path: Path) -> None:
    try:
        with pytest.raises(QueuePathError, match="does not exist"):
            spotify_events.configure(
                schemas=str(SCHEMAS), queue_path=str(tmp_path / "missing" / "q.db")
            )
    finally:
        _default.reset()


def test_close_says_what_stays_behind(
    tmp_path: Path, make_client: Callable[..., EventClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spotify_events")
    path = tmp_path / "q.db"
    client = make_client(
        endpoint=f"http://127.0.0.1:{free_port()}/v1/batches", queue_path=str(path)
    )
    for _ in range(5):
        client.log("EndSong", END_SONG)
    assert client.close(timeout=0.3) is False
    remaining = [r.getMessage() for r in caplog.records if "remain in" in r.getMessage()]
    assert remaining == [
        f"spotify-events: 5 event(s) remain in {path}; they ship on the next start"
    ]


def test_library_logging_manners(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    handlers = logging.getLogger("spotify_events").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)

    ack = MockTransport(
        lambda body, headers: SendResult(
            200, {"accepted": int(headers["X-SE-Event-Count"]), "duplicates": 0, "rejected": []}
        )
    )
    client = EventClient(transport=ack, queue_path=str(tmp_path / "q.db"), schemas=str(SCHEMAS))

    @client.track("ServiceCall", operation="op")
    def call() -> int:
        return 42

    client.close(timeout=1.0)
    caplog.set_level(logging.WARNING, logger="spotify_events")
    assert call() == 42  # the host's call is unaffected
    (record,) = [r for r in caplog.records if "could not emit" in r.getMessage()]
    assert "ClientClosedError" in record.getMessage()
    assert record.exc_info is None  # an expected condition: no traceback
