"""Fixed costs follow work, not time: commits, sends and lease writes against a real
queue file and a real HTTP sink.

Each test pins one timer far out (an hour) so that what happens can only be the
work-driven path: a full group commits, a full batch ships, a ``commit`` caller
commits itself. Windows of "nothing happens" are measured in events the threads
do see (the writer's file checks, the lease renewals), never in guessed sleeps.
"""

from __future__ import annotations

from collections.abc import Callable

from sdk_helpers import END_SONG, Sink, wait_for

from spotify_events import EventClient
from spotify_events.queue import DurableQueue
from spotify_events.settings import COMMIT_GROUP_EVENTS

EndSong = "spotify.events.playback.EndSong"
MakeClient = Callable[..., EventClient]
HOUR = 3600.0


def test_a_full_batch_ships_without_waiting_for_linger(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint, batch_max_events=10, linger=HOUR)
    for i in range(10):
        client.log("EndSong", {**END_SONG, "ms_played": i})
    assert wait_for(lambda: sink.count() == 10, timeout=20)  # an hour's linger was not waited
    assert [len(a.batch.envelopes) for a in sink.arrivals] == [10]


def test_a_batch_that_is_not_full_waits_for_linger_then_ships_as_one(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint, linger=2.0, commit_interval=0.01)
    for i in range(1, 6):  # five commits, each waking the shipper, which keeps gathering
        client.log("EndSong", {**END_SONG, "ms_played": i})
        assert wait_for(lambda n=i: client.stats().committed == n)
    assert wait_for(lambda: sink.count() == 5, timeout=20)  # without flush(): linger ran out
    assert [len(a.batch.envelopes) for a in sink.arrivals] == [5]


def test_a_full_group_commits_without_waiting_for_commit_interval(
    make_client: MakeClient,
) -> None:
    client = make_client(commit_interval=HOUR, linger=HOUR)
    for i in range(COMMIT_GROUP_EVENTS):
        client.log("EndSong", {**END_SONG, "ms_played": i})
    assert wait_for(lambda: client.stats().committed == COMMIT_GROUP_EVENTS, timeout=20)
    client.log("EndSong", END_SONG)  # a group of one waits for its interval
    assert client.stats().committed == COMMIT_GROUP_EVENTS


def test_commit_durability_does_not_wait_for_commit_interval(
    make_client: MakeClient,
) -> None:
    client = make_client(durability="commit", commit_interval=HOUR, linger=HOUR)
    client.log("EndSong", END_SONG)  # returns: its caller committed it
    other = DurableQueue(client.config.queue_path)
    try:
        assert other.depth().events == 1
    finally:
        other.close()


def test_an_idle_client_neither_commits_nor_sends(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint, heartbeat_interval=HOUR)
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=20)
    writer = client._writer
    commits, requests = writer.counters.commits, len(sink.arrivals)
    checks = 0
    file_check = writer.file_check
    assert file_check is not None

    def counted_check() -> None:
        nonlocal checks
        checks += 1
        file_check()

    writer.file_check = counted_check
    # The window: two of the writer's own timers (its queue file checks) go by.
    assert wait_for(lambda: checks >= 2, timeout=30)
    assert writer.counters.commits == commits
    assert len(sink.arrivals) == requests


def test_the_lease_is_renewed_by_time_not_per_send(sink: Sink, make_client: MakeClient) -> None:
    client = make_client(endpoint=sink.endpoint, batch_max_events=1, linger=0)
    for i in range(20):
        client.log("EndSong", {**END_SONG, "ms_played": i})
    assert client.flush(timeout=30)
    assert len(sink.arrivals) >= 20  # twenty sends, and one lease write (its taking)
    assert client._shipper.counters.lease_writes == 1


def test_an_idle_holder_renews_its_lease_as_time_passes(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(
        endpoint=sink.endpoint, lease_ttl=1.0, connect_timeout=0.1, read_timeout=0.2
    )
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=20)
    shipper = client._shipper
    writes = shipper.counters.lease_writes
    assert wait_for(lambda: shipper.counters.lease_writes >= writes + 2, timeout=20)


def test_a_flush_leaves_no_hurry_behind_for_the_next_batch(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint, linger=HOUR)
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=20)
    client.log("EndSong", {**END_SONG, "ms_played": 2})
    shipper = client._shipper
    # the shipper has seen the new event and gathers company for it: it does not ship it
    assert wait_for(lambda: shipper._linger_until is not None, timeout=20)
    assert sink.count() == 1
