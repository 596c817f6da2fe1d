"""What the collector hears about what did not reach it, and when the SDK may say
"delivered": the reference collector runs in-process (its WSGI app behind
``MockTransport``), so its answers are the real ones and every drop notice and incident
is counted the way its loss report counts it. Drop records go under the producer whose
numbers they count, every queue incident arrives, a rejection is matched to its event
however the answer names it, and flush() is not done while a drop is untold."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from collector_helpers import stream, wsgi_call
from sdk_helpers import END_SONG
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.server import Collector as CollectorApp
from spotify_events.collector.server import CollectorConfig
from spotify_events.config import ClientConfig
from spotify_events.queue import DROP_QUEUE_FULL, DurableQueue, PendingEvent
from spotify_events.shipper import Shipper
from spotify_events.transport import MockTransport, SendResult

END_SONG_TYPE = "spotify.events.playback.EndSong"

MakeQueue = Callable[..., DurableQueue]


@pytest.fixture
def real_collector(tmp_path: Path) -> Iterator[CollectorApp]:
    """The reference collector, in-process: its answers and its report are the real ones."""
    app = CollectorApp(CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS)))
    yield app
    app.shutdown()


def through(app: CollectorApp) -> MockTransport:
    """A transport that posts each batch to ``app``'s batch route."""

    def send(body: bytes, headers: Mapping[str, str]) -> SendResult:
        status, _, out = wsgi_call(app.app, "POST", "/v1/batches", body, dict(headers))
        return SendResult(status, json.loads(out))

    return MockTransport(send)


def test_every_incident_reaches_the_collector_however_many_are_waiting(
    make_queue: MakeQueue, real_collector: CollectorApp
) -> None:
    """The collector keeps at most 16 incidents of one batch: a batch carrying more
    had the rest forgotten here as reported while the collector never kept them."""
    queue = make_queue()
    for n in range(20):
        queue.record_incident("queue_file_deleted", f"incident {n}")
    settings = replace(ClientConfig().shipper_settings(), backoff_max=0.05)
    shipper = Shipper(queue, through(real_collector), settings)
    for _ in range(3):
        shipper._idle_step()
    assert queue.unreported_incidents() == []
    kept = real_collector.delivery.report()["incidents"]
    assert [i["detail"] for i in kept if i["producer_id"] == queue.producer_id] == [
        f"incident {n}" for n in range(20)
    ]


@pytest.mark.parametrize(
    ("policy", "old_counts", "new_counts"),
    [
        ("oldest", (0, 5), (5, 0)),  # the copy evicts the old producer's five events
        ("newest", (5, 0), (0, 5)),  # the copy refuses its own five while the old ones wait
    ],
)
def test_drops_in_a_copied_file_are_reported_under_the_producer_whose_events_they_were(
    tmp_path: Path,
    real_collector: CollectorApp,
    policy: str,
    old_counts: tuple[int, int],
    new_counts: tuple[int, int],
) -> None:
    """A file copied with five events queued, whose copy then logs five more into room
    for five. Each drop notice names numbers of one producer: sent under the other one
    (with whatever batch went next), it claimed numbers that producer delivered, and the
    producer whose events were dropped never heard of it."""
    original, copy = tmp_path / "original.db", tmp_path / "copy.db"
    offline = MockTransport(lambda body, headers: SendResult(None, error="offline"))
    client = EventClient(
        transport=offline, queue_path=str(original), schemas=str(SCHEMAS), durability="commit"
    )
    for _ in range(5):
        client.log("EndSong", END_SONG)
    old_producer, five_events = client.producer_id, client.stats().queue_bytes
    client.close(timeout=0.1)
    shutil.copyfile(original, copy)
    online = threading.Event()
    collector = through(real_collector)

    def send(body: bytes, headers: Mapping[str, str]) -> SendResult:
        return collector.send(body, headers) if online.is_set() else offline.send(body, headers)

    client = EventClient(
        transport=MockTransport(send),
        queue_path=str(copy),
        schemas=str(SCHEMAS),
        max_queue_bytes=five_events,
        drop_policy=policy,
        durability="commit",
    )
    for _ in range(5):
        client.log("EndSong", END_SONG)
    assert client.stats().dropped == {DROP_QUEUE_FULL: 5}
    online.set()
    assert client.flush(timeout=30)
    report = real_collector.delivery.report()
    for producer, counts in ((old_producer, old_counts), (client.producer_id, new_counts)):
        got = stream(report, producer, END_SONG_TYPE)
        assert (got["received"], got["dropped"], got["lost"]) == (*counts, 0), producer
    client.close(timeout=5)


def test_flush_is_not_done_while_events_it_waits_for_were_evicted_unreported(
    tmp_path: Path,
) -> None:
    """The queue full (``drop_policy`` oldest, the collector unreachable): events logged
    later evict those a flush waits for. They left the queue, but not by an
    acknowledgement, and their drop record is newer than the flush's marks: flush()
    said True with nothing delivered and the collector not told of the drop."""
    one_event = _one_event_bytes(tmp_path)
    clients: list[EventClient] = []

    def offline(body: bytes, headers: Mapping[str, str]) -> SendResult:
        if clients:  # the first send: the flush is waiting by now
            logging_more = clients.pop()
            for _ in range(5):
                logging_more.log("EndSong", END_SONG)
        return SendResult(None, error="offline")

    client = EventClient(
        transport=MockTransport(offline),
        queue_path=str(tmp_path / "queue.db"),
        schemas=str(SCHEMAS),
        durability="commit",
        linger=60.0,  # the flush's hurry, not the linger, sends
        max_queue_bytes=5 * one_event,
    )
    for _ in range(5):
        client.log("EndSong", END_SONG)
    clients.append(client)
    assert not client.flush(timeout=2.0)
    assert not clients and client.stats().dropped == {DROP_QUEUE_FULL: 5}
    client.close(timeout=0.1)


def test_events_evicted_while_their_batch_is_in_flight_count_as_dropped_only(
    tmp_path: Path, real_collector: CollectorApp
) -> None:
    """The collector holds a batch of three while two more events fill the queue
    (``drop_policy`` oldest) and evict two of the three. Their drop record is
    committed and counted in ``dropped``; the acknowledgement then deleted only the
    third, yet all three were counted acknowledged as well: five events, seven counts."""
    one_event = _one_event_bytes(tmp_path)
    collector = through(real_collector)
    in_flight, evicted = threading.Event(), threading.Event()

    def holding(body: bytes, headers: Mapping[str, str]) -> SendResult:
        if not in_flight.is_set():
            in_flight.set()
            evicted.wait(30)
        return collector.send(body, headers)

    client = EventClient(
        transport=MockTransport(holding),
        queue_path=str(tmp_path / "queue.db"),
        schemas=str(SCHEMAS),
        durability="commit",
        linger=60.0,  # the flush's hurry sends the three as one batch
        max_queue_bytes=3 * one_event,
    )
    try:
        for _ in range(3):
            client.log("EndSong", END_SONG)
        flushed: list[bool] = []
        flushing = threading.Thread(target=lambda: flushed.append(client.flush(timeout=30)))
        flushing.start()
        assert in_flight.wait(30)
        for _ in range(2):
            client.log("EndSong", END_SONG)  # evicts EndSong 1 and 2, on the wire
        evicted.set()
        flushing.join(30)
        assert flushed == [True]
        stats = client.stats()
        assert (stats.committed, stats.dropped) == (5, {DROP_QUEUE_FULL: 2})
        assert stats.acknowledged == 3
    finally:
        evicted.set()
        client.close(timeout=1.0)


def test_an_event_whose_type_name_the_collector_shortens_is_still_held(
    make_queue: MakeQueue, real_collector: CollectorApp
) -> None:
    """The collector names a rejected event by at most 200 characters of its type. An
    event of a longer-named type it lacks the schema of matched no rejection here, so
    the acknowledgement deleted it as delivered: neither held nor counted anywhere."""
    long_type = "a" * 120 + "." + "B" * 100
    queue = make_queue()
    queue.append([PendingEvent(long_type, b"\x11" * 8, 1_763_158_400_000, b"\x00")])
    settings = replace(ClientConfig().shipper_settings(), backoff_max=0.05)
    Shipper(queue, through(real_collector), settings)._deliver(queue.read_batch(), [], [])
    assert [(hold.event_type, hold.events) for hold in queue.holds()] == [(long_type, 1)]


def test_drops_of_a_type_the_collector_lacks_are_reported_once_it_knows_the_type(
    tmp_path: Path, wait_for: Callable[..., bool]
) -> None:
    """A new event type deployed to services before the collector: its events are held,
    and a full queue evicts them (``drop_policy`` oldest). The collector ignores drop
    notices of a type it does not know, and the notice was forgotten here as reported:
    once the collector had the schema, the evicted numbers were missing, not dropped."""
    without = tmp_path / "schemas-without-endsong"
    without.mkdir()
    for schema in SCHEMAS.glob("*.avsc"):
        if schema.name != "EndSong.avsc":
            shutil.copy(schema, without)
    behind = CollectorApp(CollectorConfig(data_dir=str(tmp_path / "d1"), schemas=str(without)))
    deployed = CollectorApp(CollectorConfig(data_dir=str(tmp_path / "d2"), schemas=str(SCHEMAS)))
    schema_deployed, evicted = threading.Event(), threading.Event()
    answered_since_eviction: list[bytes] = []

    def send(body: bytes, headers: Mapping[str, str]) -> SendResult:
        if schema_deployed.is_set():
            return through(deployed).send(body, headers)
        answer = through(behind).send(body, headers)
        if evicted.is_set():
            answered_since_eviction.append(body)
        return answer

    one_event = _one_event_bytes(tmp_path)
    client = EventClient(
        transport=MockTransport(send),
        queue_path=str(tmp_path / "queue.db"),
        schemas=str(SCHEMAS),
        durability="commit",
        max_queue_bytes=3 * one_event,
        backoff_max=0.05,
        hold_retry_max=0.1,
        linger=0.0,
    )
    try:
        for _ in range(3):
            client.log("EndSong", END_SONG)
        assert not client.flush(timeout=0.5)  # held: the collector lacks the schema
        for _ in range(2):
            client.log("EndSong", END_SONG)  # evicts EndSong 1 and 2, held
        assert client.stats().dropped == {DROP_QUEUE_FULL: 2}
        evicted.set()
        # two more tries of the held events (the first may have been read before the eviction)
        assert wait_for(lambda: len(answered_since_eviction) >= 2, timeout=10)
        schema_deployed.set()
        assert client.flush(timeout=10)
        got = stream(deployed.delivery.report(), client.producer_id, END_SONG_TYPE)
        assert (got["received"], got["dropped"], got["lost"], got["open_gaps"]) == (3, 2, 0, 0)
    finally:
        client.close(timeout=1.0)
        behind.shutdown()
        deployed.shutdown()


def _one_event_bytes(tmp_path: Path) -> int:
    """What one logged EndSong costs in a queue file."""
    offline = MockTransport(lambda body, headers: SendResult(None, error="offline"))
    sizing = EventClient(
        transport=offline,
        queue_path=str(tmp_path / "sizing.db"),
        schemas=str(SCHEMAS),
        durability="commit",
    )
    sizing.log("EndSong", END_SONG)
    size = sizing.stats().queue_bytes
    sizing.close(timeout=0.1)
    return size
