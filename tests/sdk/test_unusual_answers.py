"""Answers that must not mislead the shipper: a redirect (never followed, deletes
nothing) and ``Retry-After: 0`` (never a tight loop)."""

from __future__ import annotations

from collections.abc import Callable

from sdk_helpers import END_SONG, Sink

from spotify_events import EventClient

EndSong = "spotify.events.playback.EndSong"
MakeClient = Callable[..., EventClient]


def test_a_redirect_is_not_followed_and_deletes_nothing(
    sink: Sink, make_client: MakeClient
) -> None:
    # requests would turn the POST into a GET on 301, and that GET's 200 would ack the batch
    sink.respond_next(301, {"Location": f"http://127.0.0.1:{sink.port}/elsewhere"})
    client = make_client(endpoint=sink.endpoint, backoff_max=0.05)
    for _ in range(5):
        client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    assert sink.seqs(EndSong) == [1, 2, 3, 4, 5]
    assert client.stats().retried >= 1
    assert "redirect" in (client.stats().last_error or "")


def test_retry_after_zero_is_not_a_tight_loop(sink: Sink, make_client: MakeClient) -> None:
    sink.respond_next(503, {"Retry-After": "0"}, times=3)
    client = make_client(endpoint=sink.endpoint, backoff_max=0.2)
    client.log("EndSong", END_SONG)
    assert client.flush(timeout=10)
    gaps = [b - a for a, b in zip(sink.request_times, sink.request_times[1:4], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.04
