"""Shipper and client against a real HTTP server on loopback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sdk_helpers import END_SONG, Sink, wait_for
from support import SCHEMAS
from writer_helpers import Blocker

from spotify_events import EventClient, EventValidationError, UnknownEventTypeError
from spotify_events.agent import FileAgent
from spotify_events.config import ClientConfig
from spotify_events.errors import ClientClosedError
from spotify_events.queue import DurableQueue
from spotify_events.queue_tools import queue_group
from spotify_events.settings import QueueSettings

EndSong = "spotify.events.playback.EndSong"
PageView = "spotify.events.web.PageView"
PAGE = {"session_id": "s1", "page_uri": "spotify:album:1", "load_ms": 120}

MakeClient = Callable[..., EventClient]
T = TypeVar("T")


def test_delivers_100k_events_once_with_contiguous_sequences(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint)
    for i in range(100_000):
        if i % 4 == 0:
            client.log("PageView", PAGE)
        else:
            client.log("EndSong", {**END_SONG, "ms_played": i})
    assert client.flush(timeout=60)
    # one shipper sends one batch at a time in queue order: arrival order is seq order
    assert sink.arrived(PageView) == list(range(1, 25_001))
    assert sink.arrived(EndSong) == list(range(1, 75_001))
    assert sink.duplicates == 0
    stats = client.stats()
    assert stats.logged == stats.committed == stats.acknowledged == 100_000
    assert stats.queue_events == 0 and stats.dropped == {}


def test_outage_then_recovery_delivers_everything_once(
    unstarted_sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=unstarted_sink.endpoint, backoff_max=0.2)
    for i in range(20_000):
        client.log("EndSong", {**END_SONG, "ms_played": i})  # never raises while the sink is down
    assert not client.flush(timeout=0.5)
    assert wait_for(lambda: client.stats().retried > 0)
    assert client.stats().queue_events == 20_000
    unstarted_sink.start()
    assert client.flush(timeout=60)
    assert unstarted_sink.seqs(EndSong) == list(range(1, 20_001))
    assert unstarted_sink.duplicates == 0


def test_retry_after_is_honoured(sink: Sink, make_client: MakeClient) -> None:
    sink.respond_next(503, {"Retry-After": "1"})
    client = make_client(endpoint=sink.endpoint, backoff_max=0.05)
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    first, second = sink.request_times[0], sink.request_times[1]
    assert second - first >= 0.95  # the 1 s asked for, not the 50 ms backoff cap
    assert sink.count() == 1


def test_413_splits_the_batch(sink: Sink, make_client: MakeClient) -> None:
    sink.max_events_per_batch = 100
    client = make_client(endpoint=sink.endpoint)
    for i in range(1000):
        client.log("EndSong", {**END_SONG, "ms_played": i})
    assert client.flush(timeout=30)
    assert sink.arrived(EndSong) == list(range(1, 1001))  # halves go first half first
    assert sink.duplicates == 0
    statuses = {a.status for a in sink.arrivals}
    assert statuses == {413, 200}
    assert all(len(a.batch.envelopes) <= 100 for a in sink.arrivals if a.status == 200)


def test_400_bisects_and_dead_letters_only_the_poison_event(
    sink: Sink, make_client: MakeClient
) -> None:
    sink.poison = lambda payload: b"poison" in payload
    client = make_client(endpoint=sink.endpoint)
    for i in range(500):
        client.log(
            "EndSong", {**END_SONG, "user_id": "poison" if i == 321 else "u", "ms_played": i}
        )
    assert client.flush(timeout=30)
    assert sink.arrived(EndSong) == [s for s in range(1, 501) if s != 322]
    assert sink.duplicates == 0
    stats = client.stats()
    assert sum(stats.dead_lettered.values()) == 1
    # the collector hears about it as a drop notice, so the gap is explained
    assert wait_for(lambda: any(d.first_seq == 322 for a in sink.arrivals for d in a.batch.drops))
    notice = next(d for a in sink.arrivals for d in a.batch.drops if d.first_seq == 322)
    assert notice.reason.startswith("rejected: HTTP 400") and notice.count == 1
    queue = DurableQueue(client.config.queue_path)
    assert [(t, s) for t, s, _ in queue.dead_letters()] == [(EndSong, 322)]
    queue.close()


def test_per_event_rejection_in_200_is_dead_lettered(sink: Sink, make_client: MakeClient) -> None:
    sink.reject = lambda payload: "bad user" if b"nobody" in payload else None
    client = make_client(endpoint=sink.endpoint)
    client.log("EndSong", {**END_SONG, "user_id": "nobody"})
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    assert sink.seqs(EndSong) == [2]
    assert client.stats().dead_lettered == {"bad user": 1}


def test_heartbeat_carries_watermarks_when_idle(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint, heartbeat_interval=0.2)
    for _ in range(10):
        client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    assert wait_for(lambda: any(not a.batch.envelopes for a in sink.arrivals), timeout=10)
    heartbeat = next(a.batch for a in sink.arrivals if not a.batch.envelopes)
    assert heartbeat.next_seq == {EndSong: 11}
    assert heartbeat.producer_id == client.producer_id


def test_unauthorized_keeps_data_and_logs_an_error(
    sink: Sink, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    sink.respond_next(401, times=3)
    client = make_client(endpoint=sink.endpoint, backoff_max=0.05)
    with caplog.at_level(logging.ERROR, logger="spotify_events"):
        client.log("EndSong", END_SONG)
        assert client.flush(timeout=10)
    assert sink.count() == 1
    errors = [r for r in caplog.records if "SPOTIFY_EVENTS_TOKEN" in r.getMessage()]
    assert len(errors) == 1  # once per state change, not once per attempt


def test_flush_false_on_timeout_then_true(unstarted_sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=unstarted_sink.endpoint, backoff_max=0.1)
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=0.2) is False
    unstarted_sink.start()
    assert client.flush(timeout=10) is True
    assert client.flush(timeout=0.01) is True  # nothing new: immediately true


def test_a_flush_where_the_lease_is_not_held_hurries_the_process_that_holds_it(
    sink: Sink, make_client: MakeClient
) -> None:
    """Processes sharing a queue file (gunicorn workers): only the lease holder ships,
    and another one's flush cannot wake its thread; it asks through the file instead.
    The holder would otherwise wait out its minute of linger, waking every 20 s; its
    heartbeat every second is how often, idle, it looks for events others committed."""
    holder = make_client(
        endpoint=sink.endpoint, linger=60.0, lease_ttl=60.0, heartbeat_interval=1.0
    )
    holder.log("PageView", PAGE)
    assert holder.flush(timeout=10)  # it holds the lease from now on
    other = make_client(endpoint=sink.endpoint, linger=60.0, lease_ttl=60.0)
    for _ in range(10):
        other.log("EndSong", END_SONG)
    assert other.flush(timeout=10)
    assert sink.seqs(EndSong) == list(range(1, 11))


@pytest.fixture
def acking_behind_a_lock(
    sink: Sink,
    blocker: Callable[[], Blocker],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[[], None]], None]:
    """``acking_behind_a_lock(ship)``: ``ship()`` has one batch sent to the sink, which
    answers it while another process holds the queue's write lock, so the shipper thread
    waits to acknowledge it for as long as the queue's busy timeout (an hour here)."""
    settings = ClientConfig.queue_settings

    def an_hour(config: ClientConfig) -> QueueSettings:
        return replace(settings(config), busy_timeout=3600)

    answer = threading.Event()
    arrived = threading.Event()
    handle = sink.handle

    def handle_when_told(body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        arrived.set()
        answer.wait(30)
        return handle(body)

    monkeypatch.setattr(ClientConfig, "queue_settings", an_hour)
    monkeypatch.setattr(sink, "handle", handle_when_told)
    lock = blocker()

    def ship_and_hold_the_lock(ship: Callable[[], None]) -> None:
        ship()
        assert arrived.wait(30)
        lock.hold()  # while the batch is on the wire: its acknowledgement must wait
        answer.set()
        assert wait_for(lambda: sink.accepted == 1)

    return ship_and_hold_the_lock


def _within_half_a_minute(call: Callable[[], T]) -> list[T]:
    """What ``call`` returned, if it returned within 30 s (far less than the hour)."""
    result: list[T] = []
    caller = threading.Thread(target=lambda: result.append(call()), daemon=True)
    caller.start()
    caller.join(30)
    return result


def test_flush_keeps_to_its_timeout_while_the_shipper_waits_for_another_processs_lock(
    sink: Sink, make_client: MakeClient, acking_behind_a_lock: Callable[..., None], queue_path: Path
) -> None:
    """flush() reads the queue through the shipper's connection, which the shipper thread
    holds while it waits to acknowledge: the flush waited with it, up to the busy timeout."""
    client = make_client(endpoint=sink.endpoint, queue_path=str(queue_path), linger=0)
    acking_behind_a_lock(lambda: client.log("EndSong", END_SONG))
    assert _within_half_a_minute(lambda: client.flush(timeout=1.0)) == [False]


def test_close_keeps_to_its_timeout_while_the_shipper_waits_for_another_processs_lock(
    sink: Sink, make_client: MakeClient, acking_behind_a_lock: Callable[..., None], queue_path: Path
) -> None:
    """close() asks for the lease through that same connection, then closes it: both
    waited for the shipper thread. The event stays queued for the next start."""
    client = make_client(endpoint=sink.endpoint, queue_path=str(queue_path), linger=0)
    acking_behind_a_lock(lambda: client.log("EndSong", END_SONG))
    assert _within_half_a_minute(lambda: client.close(timeout=1.0)) == [False]


def test_an_agent_stops_by_its_deadline_while_its_shipper_waits_for_another_processs_lock(
    sink: Sink, make_client: MakeClient, acking_behind_a_lock: Callable[..., None], queue_path: Path
) -> None:
    """The agent's drain reads through its shipper's connection too (SIGTERM's deadline)."""
    service = make_client(queue_path=str(queue_path), shipping="agent", durability="commit")
    agent = FileAgent(queue_path, ClientConfig(endpoint=sink.endpoint, linger=0))

    def ship() -> None:
        service.log("EndSong", END_SONG)
        agent.poll()

    acking_behind_a_lock(ship)
    assert _within_half_a_minute(lambda: agent.stop(time.monotonic() + 1.0)) == [1]


def test_queue_ship_keeps_to_its_timeout_while_its_shipper_waits_for_another_processs_lock(
    sink: Sink, make_client: MakeClient, acking_behind_a_lock: Callable[..., None], queue_path: Path
) -> None:
    """``queue ship --timeout`` waits through its shipper's connection as well."""
    service = make_client(queue_path=str(queue_path), shipping="agent", durability="commit")
    service.log("EndSong", END_SONG)
    exits: list[object] = []

    def ship_for_a_second() -> None:
        args = ["ship", str(queue_path), "--endpoint", sink.endpoint, "--timeout", "1"]
        try:
            queue_group.main(args, standalone_mode=False)
        except SystemExit as exc:
            exits.append(exc.code)

    acking_behind_a_lock(threading.Thread(target=ship_for_a_second, daemon=True).start)
    assert wait_for(lambda: exits)  # 30 s: far less than the hour
    assert exits == [1]  # the event is still queued


def test_close_twice_and_log_after_close(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint)
    client.log("EndSong", END_SONG)
    assert client.close() is True
    assert client.close() is True
    assert sink.count() == 1
    with pytest.raises(ClientClosedError):
        client.log("EndSong", END_SONG)


def test_bad_input_raises_and_enqueues_nothing(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint)
    with pytest.raises(UnknownEventTypeError, match="NoSuchEvent"):
        client.log("NoSuchEvent", {})
    with pytest.raises(EventValidationError) as info:
        client.log("EndSong", {**END_SONG, "ms_played": "long"})
    assert info.value.field == "ms_played" and info.value.event_type == EndSong
    with pytest.raises(EventValidationError, match="max_event_bytes"):
        client.log("EndSong", {**END_SONG, "user_id": "x" * (600 << 10)})
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    assert sink.seqs(EndSong) == [1]  # no sequence number burnt by refused input


@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_durable_levels_commit_before_returning(
    sink: Sink, make_client: MakeClient, durability: str
) -> None:
    client = make_client(endpoint=sink.endpoint, durability=durability, linger=10.0)
    client.log("EndSong", END_SONG)
    other = DurableQueue(client.config.queue_path)
    assert other.depth().events + sink.count() == 1  # committed: visible to another connection
    other.close()


def _run_child(
    code: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_process_exit_delivers_through_atexit(sink: Sink, tmp_path: Path) -> None:
    result = _run_child(
        f"""
        from spotify_events import EventClient
        client = EventClient(endpoint={sink.endpoint!r}, queue_path={str(tmp_path / "q.db")!r},
                             schemas={str(SCHEMAS)!r})
        for i in range(5000):
            client.log("EndSong", {END_SONG!r})
        # no flush, no close: the atexit hook must commit and ship
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sink.seqs(EndSong) == list(range(1, 5001))
    assert sink.duplicates == 0


def test_leftovers_ship_on_next_start(
    unstarted_sink: Sink, tmp_path: Path, make_client: MakeClient
) -> None:
    queue_path = str(tmp_path / "q.db")
    result = _run_child(
        f"""
        from spotify_events import EventClient
        client = EventClient(endpoint={unstarted_sink.endpoint!r}, queue_path={queue_path!r},
                             schemas={str(SCHEMAS)!r}, exit_timeout=0.2)
        for i in range(3000):
            client.log("EndSong", {END_SONG!r})
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    unstarted_sink.start()
    client = make_client(endpoint=unstarted_sink.endpoint, queue_path=queue_path)
    assert client.flush(timeout=30)  # without logging anything new
    assert unstarted_sink.seqs(EndSong) == list(range(1, 3001))
    assert unstarted_sink.duplicates == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_client_created_before_fork_delivers_from_parent_and_child(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(
        endpoint=sink.endpoint, lease_ttl=1.0, connect_timeout=0.2, read_timeout=0.25
    )
    client.log("PageView", PAGE)  # parent threads running at fork time
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for _ in range(500):
                client.log("EndSong", END_SONG)
            client.close(timeout=20)  # the parent holds the lease: commit, leave, it ships
            code = 0
        finally:
            os._exit(code)
    for _ in range(500):
        client.log("EndSong", END_SONG)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(timeout=30)
    assert sink.seqs(EndSong) == list(range(1, 1001))  # one producer, one contiguous sequence
    assert sink.seqs(PageView) == [1]
    assert sink.duplicates == 0
