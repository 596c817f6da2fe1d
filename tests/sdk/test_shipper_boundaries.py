"""The shipper's bookkeeping at batch boundaries, against a real HTTP sink.

An ack must delete exactly the batch the collector took (not the first event of
the next one), and an event dead-lettered after a 400 must reach the collector
as a drop notice in a later batch, exactly once. ``linger`` is long so nothing
ships until ``flush()``: the batches are then cut by ``batch_max_events`` alone.
"""

from __future__ import annotations

from collections.abc import Callable

from sdk_helpers import END_SONG, Sink, wait_for

from spotify_events import EventClient
from spotify_events.queue import DurableQueue
from spotify_events.wire import DropNotice

EndSong = "spotify.events.playback.EndSong"
MakeClient = Callable[..., EventClient]


def test_each_ack_deletes_only_the_batch_the_collector_took(
    sink: Sink, make_client: MakeClient
) -> None:
    client = make_client(endpoint=sink.endpoint, batch_max_events=5, linger=10.0)
    for i in range(7):
        client.log("EndSong", {**END_SONG, "ms_played": i})
    assert client.flush(timeout=30)
    assert [len(a.batch.envelopes) for a in sink.arrivals] == [5, 2]
    assert sink.arrived(EndSong) == [1, 2, 3, 4, 5, 6, 7]
    assert sink.duplicates == 0
    stats = client.stats()
    assert stats.acknowledged == 7 and stats.queue_events == 0


def test_a_dead_letter_after_a_400_is_announced_once_in_a_later_batch(
    sink: Sink, make_client: MakeClient
) -> None:
    sink.poison = lambda payload: b"poison" in payload
    client = make_client(endpoint=sink.endpoint, linger=10.0)
    for user in ("u", "poison", "u"):
        client.log("EndSong", {**END_SONG, "user_id": user})
    assert client.flush(timeout=30)
    assert sink.arrived(EndSong) == [1, 3]
    assert client.stats().dead_lettered == {"HTTP 400: poison payload": 1}
    expected = DropNotice(EndSong, 2, 2, 1, "rejected: HTTP 400: poison payload")

    def carriers() -> list[int]:
        return [i for i, a in enumerate(sink.arrivals) if expected in a.batch.drops]

    assert wait_for(carriers, timeout=10)
    (carrier,) = carriers()
    last_refusal = max(i for i, a in enumerate(sink.arrivals) if a.status == 400)
    assert carrier > last_refusal and sink.arrivals[carrier].status == 200
    assert sink.arrivals[carrier].batch.drops == [expected]
    assert sink.arrivals[carrier].batch.next_seq == {EndSong: 4}
    # acknowledged with the batch: forgotten by the queue, so never sent twice
    queue = DurableQueue(client.config.queue_path)
    try:
        assert wait_for(lambda: queue.unreported_drops() == [], timeout=10)
        assert [(t, s) for t, s, _ in queue.dead_letters()] == [(EndSong, 2)]
    finally:
        queue.close()
    assert client.flush(timeout=10)
    assert carriers() == [carrier]
