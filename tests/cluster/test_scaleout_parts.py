"""The parts of the scaled-out tier, each on its own: slices, partitions, the stream
check, 503 when JetStream is gone, lease compare-and-swap and fence, and closing an
hour only when every partition has. Servers are real (one node on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cluster_helpers import END_SONG, numbered
from support import SCHEMAS, free_port, wait_for

pytest.importorskip("nats", reason="needs the nats extra: pip install 'spotify-events[nats]'")

import spotify_events.scaleout.pull as pull_module
from spotify_events.collector.datadir import DataDirError
from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import BatchFacts, IngestedBatch, Rejection
from spotify_events.collector.partitions import finalize_hours, partition_layout
from spotify_events.collector.process import ServiceProcess
from spotify_events.collector.report import load_report
from spotify_events.collector.seam import DeliveryStatus
from spotify_events.encoding import EventEncoder
from spotify_events.scaleout.connection import LoopThread, close, connect
from spotify_events.scaleout.ingest import JetStreamDelivery, prepare_stream
from spotify_events.scaleout.leases import LeaseLost, LeaseTable, lease_bucket
from spotify_events.scaleout.natsserver import NatsCluster, NatsServerError, find_server
from spotify_events.scaleout.pull import EXPIRES, GRACE, PullFailed, PullFeed, ensure_consumer
from spotify_events.scaleout.slices import (
    SliceDecodeError,
    batch_messages,
    decode_message,
    partition_of,
)
from spotify_events.scaleout.stream import StreamSettings
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import CONTENT_TYPE, DropNotice, Envelope, WireBatch, encode_batch

pytestmark = [pytest.mark.cluster]

#: 2025-11-14T22:13:20.123Z
FIXED_TS = 1_763_158_400_123


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)


def envelopes(registry: SchemaRegistry, seqs: list[int], size: int = 0) -> list[Envelope]:
    schema = registry.get(END_SONG)
    enc = EventEncoder(schema)
    return [
        Envelope(
            s, END_SONG, schema.fingerprint, FIXED_TS, enc.encode(numbered(f"e{s}" + "x" * size))
        )
        for s in seqs
    ]


def ingested(events: list[Envelope], **facts: Any) -> IngestedBatch:
    base: dict[str, Any] = {"producer_id": "prod-1", "next_seq": {}, "drops": []}
    return IngestedBatch(facts=BatchFacts(**{**base, **facts}), events=events)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    try:
        find_server()
    except NatsServerError as exc:
        pytest.skip(f"no usable nats-server: {exc}")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats1"), size=1).start()
    yield cluster
    cluster.stop()
    cluster.kill()


# -- slices -------------------------------------------------------------------------
def test_slices_stay_under_max_payload_and_round_trip(registry: SchemaRegistry) -> None:
    events = envelopes(registry, list(range(1, 401)), size=2000)
    batch = ingested(events, next_seq={END_SONG: 401})
    messages = batch_messages(batch, subject="S.p.0", max_bytes=128 << 10)
    event_messages = [m for m in messages if m.events]
    assert len(event_messages) > 5
    assert all(len(m.data) <= 128 << 10 for m in messages)
    back = [e for m in event_messages for e in decode_message(m.data, received_at=0).events]
    assert back == events
    with pytest.raises(SliceDecodeError):
        decode_message(event_messages[0].data[:-1], received_at=0)  # a payload cut short
    with pytest.raises(SliceDecodeError):
        decode_message(b"not a slice", received_at=0)
    # contiguous slices are named by their range; a retry makes the same ids
    assert event_messages[0].msg_id == f"prod-1:{END_SONG}:1-{event_messages[0].events}"
    again = batch_messages(
        ingested(events, next_seq={END_SONG: 401}), subject="S.p.0", max_bytes=128 << 10
    )
    assert [m.msg_id for m in again] == [m.msg_id for m in messages]


def test_a_batch_of_several_types_becomes_one_slice_per_type_and_fingerprint(
    registry: SchemaRegistry,
) -> None:
    songs = envelopes(registry, [1, 2, 3, 4])
    other_writer = b"\x01" * 8  # the same type from another writer schema: a slice of its own
    views = [
        Envelope(s, "spotify.events.web.PageView", b"\x02" * 8, FIXED_TS, b"v") for s in (7, 8)
    ]
    mixed = [songs[0], views[0], songs[1], songs[2]._replace(fingerprint=other_writer), views[1]]
    mixed.append(songs[3])
    messages = [
        m for m in batch_messages(ingested(mixed), subject="s", max_bytes=1 << 20) if m.events
    ]
    slices = [decode_message(m.data, received_at=0).events for m in messages]
    assert slices == [
        [songs[0], songs[1], songs[3]],
        views,
        [songs[2]._replace(fingerprint=other_writer)],
    ]
    assert [m.events for m in messages] == [3, 2, 1]


def test_slice_ids_name_exactly_one_set_of_events(registry: SchemaRegistry) -> None:
    full = batch_messages(ingested(envelopes(registry, [1, 2, 3])), subject="s", max_bytes=1 << 20)
    holey = batch_messages(ingested(envelopes(registry, [1, 3])), subject="s", max_bytes=1 << 20)
    assert full[0].msg_id == f"prod-1:{END_SONG}:1-3"
    assert holey[0].msg_id != full[0].msg_id  # same first-last, other events


def test_small_control_facts_ride_in_the_first_slice_with_a_message_of_their_own_aside(
    registry: SchemaRegistry,
) -> None:
    drop = DropNotice(END_SONG, 5, 6, 2, "queue full")
    batch = ingested(envelopes(registry, [1, 2]), next_seq={END_SONG: 7}, drops=[drop])
    batch.rejections = [
        Rejection(event_type=END_SONG, seq=3, code="invalid_payload", reason="bad payload")
    ]
    messages = batch_messages(batch, subject="s", max_bytes=1 << 20)
    assert len(messages) == 1  # a usual batch is one publish: its slice carries the facts
    (slice_,) = messages
    assert slice_.fallback is not None  # published only if JetStream says "duplicate"
    assert slice_.fallback.events == 0 and slice_.fallback.msg_id.startswith("prod-1:control:")
    with_events = decode_message(slice_.data, received_at=1.0)
    alone = decode_message(slice_.fallback.data, received_at=1.0)
    assert [e.seq for e in with_events.events] == [1, 2] and alone.events == []
    for decoded in (with_events, alone):
        assert decoded.facts.next_seq == {END_SONG: 7}
        assert decoded.facts.drops == [drop]
        assert [(r.seq, r.code, r.reason) for r in decoded.rejections] == [
            (3, "invalid_payload", "bad payload")
        ]
    # facts too large to ride along (a rejection per event) travel in messages of their own
    large = ingested(envelopes(registry, [1]), next_seq={END_SONG: 300})
    large.rejections = [
        Rejection(event_type=END_SONG, seq=s, code="invalid_payload", reason="x" * 100)
        for s in range(2, 300)
    ]
    messages = batch_messages(large, subject="s", max_bytes=1 << 20)
    assert [m.events for m in messages] == [1, 0] and messages[0].fallback is None
    assert decode_message(messages[0].data, received_at=0).facts.next_seq == {}
    # control facts alone: a control message; a bare heartbeat: nothing
    only = batch_messages(ingested([], next_seq={END_SONG: 7}), subject="s", max_bytes=1 << 20)
    assert [m.events for m in only] == [0]
    assert batch_messages(ingested([]), subject="s", max_bytes=1 << 20) == []


def test_partition_of_a_producer_is_the_same_in_every_process() -> None:
    ids = [f"producer-{i}" for i in range(50)]
    mine = [partition_of(p, 8) for p in ids]
    code = (
        "from spotify_events.scaleout.slices import partition_of;"
        f"print([partition_of(p, 8) for p in {ids!r}])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == mine
    assert mine == [zlib.crc32(p.encode()) % 8 for p in ids]
    assert len(set(mine)) > 4


# -- the collector on JetStream -------------------------------------------------------
def collector(node: NatsCluster, *extra: str, port: int = 0) -> ServiceProcess:
    return ServiceProcess(
        [
            "collector",
            "--port",
            str(port),
            "--schemas",
            str(SCHEMAS),
            "--nats",
            node.urls,
            "--replicas",
            "1",
            "--publish-timeout",
            "1",
            *extra,
        ],
        ready_prefix="listening on",
        name="collector",
    )


def deliver_worker(node: NatsCluster, data: Path, stream: str, *extra: str) -> ServiceProcess:
    """A ``deliver`` worker on ``stream`` writing under ``data`` (any free port)."""
    return ServiceProcess(
        [
            "deliver",
            "--nats",
            node.urls,
            "--data-dir",
            str(data),
            "--schemas",
            str(SCHEMAS),
            "--stream",
            stream,
            "--port",
            "0",
            *extra,
        ],
        name="worker",
    )


def test_collector_refuses_a_stream_with_other_partitions(node: NatsCluster) -> None:
    first = collector(node, "--stream", "MISMATCH", "--partitions", "4").start()
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "spotify_events",
                "collector",
                "--port",
                "0",
                "--schemas",
                str(SCHEMAS),
                "--nats",
                node.urls,
                "--replicas",
                "1",
                "--stream",
                "MISMATCH",
                "--partitions",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.stop()
    assert second.returncode != 0
    assert "has 4 partitions" in second.stderr and "--partitions 8" in second.stderr


def test_collector_answers_503_with_retry_after_while_jetstream_is_down(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    try:
        find_server()
    except NatsServerError as exc:
        pytest.skip(str(exc))
    own = NatsCluster(tmp_path / "nats", size=1).start()
    child = collector(own, "--stream", "DOWN", "--partitions", "2").start()
    url = child.ready_line.split()[-1] + "/v1/batches"

    def post(seqs: list[int]) -> requests.Response:
        body = encode_batch(
            WireBatch("p-down", envelopes(registry, seqs), {END_SONG: seqs[-1] + 1})
        )
        return requests.post(url, data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=30)

    try:
        ok = post([1, 2, 3])
        assert ok.status_code == 200 and ok.json()["accepted"] == 3
        again = post([1, 2, 3])  # a retry inside the dedupe window: JetStream says duplicate
        assert again.status_code == 200 and again.json()["duplicates"] == 3
        own.kill()
        down = post([4, 5])
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "1"
        assert "JetStream unavailable" in down.json()["error"]
        own.start()
        assert wait_for(lambda: post([4, 5]).status_code == 200, timeout=60)
    finally:
        child.stop()
        own.stop()
        own.kill()
    assert not any("Traceback" in line for line in child.stderr_lines), child.stderr_tail()


def test_while_publishing_fails_one_request_retries_and_the_others_get_503_at_once(
    registry: SchemaRegistry,
) -> None:
    """With every request waiting out its own connect and acknowledgement timeouts, an
    outage held all of waitress's threads, and /metrics queued behind them."""
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never says INFO: connects hang
    urls = [f"nats://127.0.0.1:{silent.getsockname()[1]}"]
    publisher = JetStreamDelivery(
        urls, StreamSettings(name="SILENT", partitions=1), connect_timeout=1, publish_timeout=1
    )
    batch = ingested(envelopes(registry, [1]))
    try:
        first = publisher.deliver(batch)  # waits out the connect: publishing now fails
        assert first.status is DeliveryStatus.UNAVAILABLE
        retrying: list[DeliveryStatus] = []
        retry = threading.Thread(target=lambda: retrying.append(publisher.deliver(batch).status))
        retry.start()
        assert wait_for(publisher._retrying.locked, timeout=10)
        other = publisher.deliver(batch)
        assert retry.is_alive()  # answered while the retry still waits on its connect
        assert other.status is DeliveryStatus.UNAVAILABLE
        assert other.message == first.message
        retry.join(30)
        assert retrying == [DeliveryStatus.UNAVAILABLE]
        assert not publisher._retrying.locked()
    finally:
        publisher.close()
        silent.close()


def test_a_retried_slice_answered_duplicate_still_lands_its_newer_control_facts(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    settings = StreamSettings(name="FALLBACK", partitions=1, replicas=1)
    urls = node.urls.split(",")
    asyncio.run(prepare_stream(urls, settings, 30))
    publisher = JetStreamDelivery(urls, settings)
    events = envelopes(registry, [1, 2, 3])
    drop = DropNotice(END_SONG, 4, 4, 1, "queue full")
    try:
        first = publisher.deliver(ingested(events, next_seq={END_SONG: 4}))
        assert first.status is DeliveryStatus.OK and first.accepted == 3
        # the same events again (a retry), with a newer watermark and a drop notice
        retry = publisher.deliver(ingested(events, next_seq={END_SONG: 5}, drops=[drop]))
        assert retry.status is DeliveryStatus.OK
        assert (retry.accepted, retry.duplicates) == (0, 3)
    finally:
        publisher.close()

    async def stored() -> list[IngestedBatch]:
        nc = await connect(urls, name="fallback-test")
        try:
            js = nc.jetstream(timeout=5)
            last = (await js.stream_info("FALLBACK")).state.last_seq
            return [
                decode_message((await js.get_msg("FALLBACK", seq)).data, received_at=0)
                for seq in range(1, last + 1)
            ]
        finally:
            await close(nc)

    messages = asyncio.run(stored())
    # the first attempt: one message, events and facts; the retry: its facts alone
    assert [len(m.events) for m in messages] == [3, 0]
    assert messages[0].facts.next_seq == {END_SONG: 4} and messages[0].facts.drops == []
    assert messages[1].facts.next_seq == {END_SONG: 5} and messages[1].facts.drops == [drop]


def test_a_publish_the_stream_refuses_is_answered_503_with_the_stream_s_reason(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    """JetStream answers a publish it cannot store (here: a full stream that discards
    new messages) with an API error. nats-py's ``publish_async`` raised that in its
    reply handler instead of failing the publish's future, so the collector waited out
    its acknowledgement timeout and answered 503 for a "TimeoutError"."""
    from nats.js.api import DiscardPolicy

    settings = StreamSettings(name="FULL", partitions=1, replicas=1)
    urls = node.urls.split(",")
    asyncio.run(prepare_stream(urls, settings, 30))

    async def fill_up() -> None:
        nc = await connect(urls, name="full-test")
        try:
            js = nc.jetstream(timeout=5)
            config = (await js.stream_info("FULL")).config
            config.max_msgs, config.discard = 1, DiscardPolicy.NEW
            await js.update_stream(config)
        finally:
            await close(nc)

    asyncio.run(fill_up())
    publisher = JetStreamDelivery(urls, settings, publish_timeout=5)
    try:
        assert publisher.deliver(ingested(envelopes(registry, [1]))).status is DeliveryStatus.OK
        refused = publisher.deliver(ingested(envelopes(registry, [2])))
        assert refused.status is DeliveryStatus.UNAVAILABLE
        assert "maximum messages exceeded" in refused.message, refused.message
        # the refused publish left no room taken: the next batch is published as usual
        assert publisher.deliver(ingested(envelopes(registry, [1]))).duplicates == 1
    finally:
        publisher.close()


@contextmanager
def core_subscriber(
    urls: list[str], subject: str, *, answer: bytes | None
) -> Iterator[list[bytes]]:
    """A plain NATS subscriber on ``subject``, with no stream behind it, that answers
    every message with ``answer`` (None: says nothing) while the block runs; yields the
    list of what it received."""
    thread = LoopThread("core-subscriber")
    received: list[bytes] = []

    async def subscribe() -> Any:
        nc = await connect(urls, name="core-subscriber")

        async def on_message(msg: Any) -> None:
            received.append(msg.data)
            if answer is not None:
                await msg.respond(answer)

        await nc.subscribe(subject, cb=on_message)
        await nc.flush()
        return nc

    nc = thread.run(subscribe(), timeout=10)
    try:
        yield received
    finally:
        thread.stop(lambda: close(nc))


def test_an_answer_that_is_no_jetstream_acknowledgement_is_answered_503(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    """Whoever subscribes to a partition subject can answer its publishes: with no
    stream there (deleted, or a wrong ``--stream``), a core NATS responder's ``{}`` is
    not JetStream storing the batch. An acknowledgement names the stream and the
    sequence it stored the message at; anything else must not turn into a 200."""
    urls = node.urls.split(",")
    settings = StreamSettings(name="NOSTREAM", partitions=1, replicas=1)
    publisher = JetStreamDelivery(urls, settings, publish_timeout=5)
    try:
        with core_subscriber(urls, settings.subject(0), answer=b"{}"):
            answered = publisher.deliver(ingested(envelopes(registry, [1])))
        assert answered.status is DeliveryStatus.UNAVAILABLE, answered
        assert "not a JetStream acknowledgement" in answered.message, answered.message
    finally:
        publisher.close()


def test_a_round_longer_than_the_room_for_publishes_ends_at_its_own_bound(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    """A round waits for room before each publish, and the room its own unanswered
    publishes hold frees only when the round ends. With nobody acknowledging (a core
    subscriber on the subject, no stream), a round of more messages than
    ``max_in_flight`` waited for that room past its acknowledgement bound, until the
    caller gave up and cancelled it, and the 503 said no more than "TimeoutError"."""
    urls = node.urls.split(",")
    settings = StreamSettings(name="UNANSWERED", partitions=1, replicas=1)
    publisher = JetStreamDelivery(
        urls, settings, publish_timeout=1, connect_timeout=1, max_in_flight=1
    )
    batch = ingested(envelopes(registry, [1, 2], size=600_000))  # a slice per event
    try:
        assert len(batch_messages(batch, subject="S.p.0", max_bytes=1 << 20)) == 2
        with core_subscriber(urls, settings.subject(0), answer=None):
            unanswered = publisher.deliver(batch)
        assert unanswered.status is DeliveryStatus.UNAVAILABLE
        assert "no acknowledgement from JetStream in time" in unanswered.message, unanswered
    finally:
        publisher.close()


def test_a_round_that_failed_while_waiting_for_room_publishes_no_more(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    """A round of more messages than ``max_in_flight`` waits for room before each
    publish. Once it has failed (here its first answer is no acknowledgement), the rest
    would be published for nothing (up to 1 MiB each, and the client retries the batch
    anyway). The answer that failed it also freed the room its next publish waited
    for, and that publish went out all the same."""
    urls = node.urls.split(",")
    settings = StreamSettings(name="NOSTREAM2", partitions=1, replicas=1)
    publisher = JetStreamDelivery(urls, settings, publish_timeout=5, max_in_flight=1)
    batch = ingested(envelopes(registry, [1, 2, 3], size=600_000))  # a slice per event
    marker = ingested(envelopes(registry, [9]))
    try:
        with core_subscriber(urls, settings.subject(0), answer=b"{}") as received:
            failed = publisher.deliver(batch)
            assert failed.status is DeliveryStatus.UNAVAILABLE, failed
            # published after it on the same connection: received after anything it sent
            assert publisher.deliver(marker).status is DeliveryStatus.UNAVAILABLE
            assert wait_for(lambda: len(received) >= 2, timeout=10)
        first = batch_messages(batch, subject=settings.subject(0), max_bytes=1 << 20)[0]
        assert received[0] == first.data
        assert len(received) == 2, [len(r) for r in received]
    finally:
        publisher.close()


def test_publishes_still_unanswered_when_the_server_goes_fail_at_once(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """An answer to a publish sent before the connection lost its server may never
    come. The rounds waiting for one fail when the loss is noticed, and the collector
    answers 503 then, instead of holding an HTTP thread for ``--publish-timeout``; the
    client's retry is deduplicated by ``Nats-Msg-Id``."""
    settings = StreamSettings(name="LOST", partitions=1, replicas=1)
    with NatsCluster(tmp_path / "nats", size=1) as cluster:
        urls = cluster.urls.split(",")
        publisher = JetStreamDelivery(urls, settings, publish_timeout=30, connect_timeout=1)
        try:
            with (
                core_subscriber(urls, settings.subject(0), answer=None) as received,
                ThreadPoolExecutor(1) as pool,
            ):
                pending = pool.submit(publisher.deliver, ingested(envelopes(registry, [1])))
                assert wait_for(lambda: bool(received), timeout=10)
                cluster.kill()
                answered = pending.result(timeout=15)  # not publish_timeout's 30 s
            assert answered.status is DeliveryStatus.UNAVAILABLE, answered
            assert "connection to NATS was lost" in answered.message, answered.message
        finally:
            publisher.close()


# -- leases ----------------------------------------------------------------------------
async def pull_consumer(nc: Any, name: str) -> Any:
    """A stream ``name`` on the subject ``<name>.p`` and its durable pull consumer ``d``
    (explicit acks, a minute's ``ack_wait``, redelivered without limit), as a worker's
    partition has them; returns the JetStream context."""
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    js = nc.jetstream(timeout=5)
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.p"]))
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=-1)
    await ensure_consumer(js, name, "d", f"{name}.p", config)
    return js


def test_a_pull_feed_asks_again_and_hands_back_what_it_did_not_give_out(
    node: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's :class:`PullFeed`: its requests expire unanswered (408) and are asked
    again, so a message published after an idle spell arrives; messages it received
    but never gave out are nak'ed on close, so the next feed gets them at once instead
    of after ``ack_wait``; a deleted consumer ends the feed."""

    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="pull-feed-test")
        try:
            js = await pull_consumer(nc, "PULLTEST")
            feed = PullFeed(nc, "PULLTEST", "d", batch=4, max_bytes=1 << 20)
            await feed.start()
            assert await feed.next_batch(EXPIRES + GRACE + 0.5) == []  # past a request's life
            # From here on a request outlives the publishes below however slow the machine:
            # the held messages must reach the feed through the request next_batch leaves open.
            # The one open now was asked with the short life; once that has passed, the
            # feed asks again with the long one.
            monkeypatch.setattr(pull_module, "EXPIRES", 60.0)
            assert await feed.next_batch(EXPIRES + GRACE + 0.1) == []
            await js.publish("PULLTEST.p", b"after-idle")
            [msg] = await feed.next_batch(5)
            assert msg.data == b"after-idle"
            await msg.ack()
            for i in range(3):
                await js.publish("PULLTEST.p", f"held{i}".encode())

            async def delivered(n: int) -> bool:
                for _ in range(100):
                    if (await js.consumer_info("PULLTEST", "d")).num_ack_pending == n:
                        return True
                    await asyncio.sleep(0.05)
                return False

            assert await delivered(3)  # received by the feed, never given out
            await feed.close()
            again = PullFeed(nc, "PULLTEST", "d", batch=4, max_bytes=1 << 20)
            await again.start()
            got: list[Any] = []
            while len(got) < 3:
                batch = await again.next_batch(5)
                assert batch, got  # well within ack_wait: they were handed back
                got += batch
            assert sorted(m.data for m in got) == [b"held0", b"held1", b"held2"]
            for m in got:
                await m.ack()
            await js.delete_consumer("PULLTEST", "d")
            with pytest.raises(PullFailed):
                await again.next_batch(5)
            await again.close()
        finally:
            await close(nc)

    asyncio.run(scenario())


def test_a_pull_feed_hands_out_a_backlog_in_batches_bounded_by_bytes(node: NatsCluster) -> None:
    """A worker commits what one ``next_batch`` gives it as one group commit, on its
    loop: a backlog of big messages comes out in batches of at most ``max_bytes`` of
    data (a message bigger than that alone), in order, each message once, so a
    commit holds the loop for a bounded time however large the backlog."""

    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="pull-feed-bytes-test")
        try:
            js = await pull_consumer(nc, "PULLBYTES")
            sizes = [400, 400, 400, 900, 100, 100]
            for i, size in enumerate(sizes):
                await js.publish("PULLBYTES.p", bytes([i]) * size)
            feed = PullFeed(nc, "PULLBYTES", "d", batch=64, max_bytes=1000)
            await feed.start()
            assert await feed.next_batch(0) == []  # only sends the request
            for _ in range(200):  # the whole backlog received before any is taken
                if len(feed._buffer) == len(sizes):
                    break
                await asyncio.sleep(0.05)
            batches: list[list[int]] = []
            while sum(map(len, batches)) < len(sizes):
                batch = await feed.next_batch(5)
                assert batch, batches
                batches.append([len(m.data) for m in batch])
                assert [m.data[0] for m in batch] == list(
                    range(sum(map(len, batches)) - len(batch), sum(map(len, batches)))
                )
                for m in batch:
                    await m.ack()
            assert batches == [[400, 400], [400], [900, 100], [100]]
            await feed.close()
        finally:
            await close(nc)

    asyncio.run(scenario())


def test_a_pull_feed_asks_for_a_bounded_amount_of_data_at_a_time(node: NatsCluster) -> None:
    """A worker's pull requests ask for ``batch`` messages; slices are up to 1 MiB each.
    Asked for by count alone, a backlog came at 64 MiB a request and partition: more than
    the loop, busy committing, read in time, so the server dropped the worker's
    connection as a slow consumer (its ``max_pending``, 64 MiB) with everything in
    flight left to ``ack_wait``. A request also names the data it may bring, enough for
    one commit and the largest message the server takes."""

    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="pull-feed-data-test")
        try:
            js = await pull_consumer(nc, "PULLDATA")
            size = nc.max_payload // 4
            for i in range(64):
                await js.publish("PULLDATA.p", bytes([i]) * size)
            feed = PullFeed(nc, "PULLDATA", "d", batch=64, max_bytes=size)
            await feed.start()
            assert await feed.next_batch(0) == []  # only sends the request

            async def settled() -> int:
                """Messages delivered to the feed once its request has ended. Some must
                have come: the server can answer ``consumer_info`` before it has taken
                the pull request, when neither shows anything waiting or pending."""
                for _ in range(200):
                    info = await js.consumer_info("PULLDATA", "d")
                    if info.num_waiting == 0 and info.num_ack_pending == len(feed._buffer) > 0:
                        return len(feed._buffer)
                    await asyncio.sleep(0.05)
                raise AssertionError("the request did not end")

            held = await settled()
            assert 0 < held * size <= size + nc.max_payload + pull_module.REQUEST_SLACK, held
            got: list[int] = []
            while len(got) < 64:
                batch = await feed.next_batch(5)
                assert batch, got
                got += [m.data[0] for m in batch]
                for m in batch:
                    await m.ack()
            assert got == list(range(64))  # every message, in order, a bounded amount at a time
            await feed.close()
        finally:
            await close(nc)

    asyncio.run(scenario())


def test_leases_change_hands_only_by_compare_and_swap(node: NatsCluster) -> None:
    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="lease-test")
        try:
            js = nc.jetstream(timeout=5)
            kv = await lease_bucket(js, "LEASETEST", replicas=1, ttl=1.0)
            later = [0.0]
            a = LeaseTable(js, "LEASETEST", kv, "a", 4, ttl=1.0)
            b = LeaseTable(
                js, "LEASETEST", kv, "b", 4, ttl=1.0, clock=lambda: time.time() + later[0]
            )
            assert await a.try_acquire(0)
            assert not await b.try_acquire(0)  # held and not expired
            await a.confirm(0)
            later[0] = 5.0  # b's clock: a's lease has expired
            c = LeaseTable(js, "LEASETEST", kv, "c", 4, ttl=1.0, clock=lambda: time.time() + 5.0)
            won = await asyncio.gather(b.try_acquire(0), c.try_acquire(0))
            assert sorted(won) == [False, True]  # one compare-and-swap wins the race
            with pytest.raises(LeaseLost):
                await a.confirm(0)  # the fence: a must not write any more
            assert 0 not in a.owned
            # a renewal with a stale revision fails the same way
            assert await a.try_acquire(1)
            assert await c.try_acquire(1)  # c's clock says a's lease on 1 expired
            assert await a.renew() == [1]
            assert 1 not in a.owned
            # a lease not renewed in time stops writes locally, without a round trip
            winner = b if 0 in b.owned else c
            winner.owned[0].valid_until = time.monotonic() - 1
            with pytest.raises(LeaseLost):
                winner.check_local(0)
        finally:
            await close(nc)

    asyncio.run(scenario())


def test_a_commit_reads_the_lease_back_only_when_no_confirmation_is_recent(
    node: NatsCluster,
) -> None:
    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="lease-age-test")
        try:
            js = nc.jetstream(timeout=5)
            kv = await lease_bucket(js, "LEASEAGE", replicas=1, ttl=3.0)
            later = [0.0]
            a = LeaseTable(
                js, "LEASEAGE", kv, "a", 2, ttl=3.0, monotonic=lambda: time.monotonic() + later[0]
            )
            assert await a.try_acquire(0)
            assert not a.revision_due(0)  # the acquisition's compare-and-swap confirmed it
            # another worker whose clock runs far ahead takes the lease early
            b = LeaseTable(js, "LEASEAGE", kv, "b", 2, ttl=3.0, clock=lambda: time.time() + 10)
            assert await b.try_acquire(0)
            a.check_local(0)  # within a third of the TTL, a commit asks no one ...
            later[0] = 1.1
            assert a.revision_due(0)  # ... after it, it reads the lease back first
            with pytest.raises(LeaseLost):
                await a.confirm(0)
            with pytest.raises(LeaseLost):
                a.check_local(0)
            # renewals and reads are confirmations too
            assert await a.try_acquire(1)
            later[0] = 2.2
            assert a.revision_due(1)
            assert await a.renew() == []
            assert not a.revision_due(1)
            later[0] = 3.3
            assert a.revision_due(1)
            await a.confirm(1)
            assert not a.revision_due(1)
        finally:
            await close(nc)

    asyncio.run(scenario())


def test_a_worker_short_of_its_share_knows_when_another_must_give_partitions_back(
    node: NatsCluster,
) -> None:
    async def scenario() -> None:
        nc = await connect(node.urls.split(","), name="lease-share-test")
        try:
            js = nc.jetstream(timeout=5)
            kv = await lease_bucket(js, "LEASESHARE", replicas=1, ttl=3.0)
            a = LeaseTable(js, "LEASESHARE", kv, "a", 4, ttl=3.0)
            b = LeaseTable(js, "LEASESHARE", kv, "b", 4, ttl=3.0)
            for p in (0, 1, 2):  # alone, a took more than its share of two
                assert await a.try_acquire(p)
            assert [await b.try_acquire(p) for p in range(4)] == [False, False, False, True]
            assert b.held_by == {0: "a", 1: "a", 2: "a"}
            assert b.release_due(2)  # a holds 3 > 2: it gives one back at its next round
            assert not a.release_due(2)  # a is not short of its share
            await a.release(2)
            assert await b.try_acquire(2)
            assert not b.release_due(2)  # b has its share
            c = LeaseTable(js, "LEASESHARE", kv, "c", 4, ttl=3.0)
            assert [await c.try_acquire(p) for p in range(4)] == [False] * 4
            assert not c.release_due(2)  # short, but nobody holds more than two
        finally:
            await close(nc)

    asyncio.run(scenario())


# -- partitions in one data directory ---------------------------------------------------
def test_an_hour_is_closed_only_when_every_partition_closed_it(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    now = [FIXED_TS / 1000]
    data = tmp_path / "data"
    deliveries = [
        LocalDelivery(data, registry, layout=partition_layout(p), clock=lambda: now[0])
        for p in (0, 1)
    ]
    for p, d in enumerate(deliveries):
        batch = ingested(
            envelopes(registry, [1, 2, 3]), producer_id=f"prod-{p}", next_seq={END_SONG: 4}
        )
        assert d.deliver_all([batch])[0].accepted == 3
    hour_dir = next((data / END_SONG).glob("*/*"))
    assert sorted(f.name.split("-")[1] for f in hour_dir.glob("part-*.avro")) == ["p0000", "p0001"]
    # reopening one partition (its recovery) leaves the other partition's files alone
    deliveries[1].close()
    deliveries[1] = LocalDelivery(data, registry, layout=partition_layout(1), clock=lambda: now[0])
    assert len(list(hour_dir.glob("part-*.avro"))) == 2
    now[0] += 3 * 3600  # past the hour's end + lateness
    deliveries[0].close_due_buckets()
    assert finalize_hours(data, now=now[0], lateness=600, settle=1) == []
    assert not (hour_dir / "_CLOSED.json").exists()  # partition 1 has not closed it
    deliveries[1].close_due_buckets()
    assert finalize_hours(data, now=now[0], lateness=600, settle=1) == [str(hour_dir)]
    marker = json.loads((hour_dir / "_CLOSED.json").read_text())
    assert marker["events"] == 6 and marker["partitions"] == ["p0000", "p0001"]
    assert finalize_hours(data, now=now[0], lateness=600, settle=1) == []  # once
    for d in deliveries:
        d.close()
    report = load_report(data, now=now[0])
    assert report["totals"]["received"] == 6 and report["totals"]["lost"] == 0
    assert [b["events"] for b in report["buckets"]] == [6]
    assert {s["producer_id"] for s in report["streams"]} == {"prod-0", "prod-1"}


def test_a_partition_whose_ledger_is_lost_is_not_started_afresh_over_its_files(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """A partition's ledger lives apart from its part files (they share the buckets
    with the other partitions): with the ledger gone, its next owner must refuse, as the
    single-process collector does, instead of starting an empty ledger whose recovery
    moves the partition's acknowledged part files out of their buckets."""
    data = tmp_path / "data"
    d = LocalDelivery(data, registry, layout=partition_layout(1))
    batch = ingested(envelopes(registry, [1, 2, 3]), next_seq={END_SONG: 4})
    assert d.deliver_all([batch])[0].accepted == 3
    d.close()
    parts = sorted((data / END_SONG).rglob("part-p0001-*.avro"))
    assert len(parts) == 1
    for f in (data / "_partitions" / "p0001").glob("_ledger.db*"):
        f.unlink()
    with pytest.raises(DataDirError, match="part-p0001-"):
        LocalDelivery(data, registry, layout=partition_layout(1))
    assert sorted((data / END_SONG).rglob("part-p0001-*.avro")) == parts  # left where it was
    # another partition without a ledger yet (its first owner) starts as before
    LocalDelivery(data, registry, layout=partition_layout(2)).close()


def test_the_report_names_events_two_partitions_both_wrote(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """After a change of partition count a producer's retried batch can be delivered by
    its old partition and its new one, each ledger deduplicating only its own: the
    events are in the buckets twice. Adding the ledgers up hid that (the union of the
    received numbers counts them once); the report now says it."""
    data = tmp_path / "data"
    for p, seqs in ((0, [1, 2, 3]), (1, [3, 4])):
        d = LocalDelivery(data, registry, layout=partition_layout(p))
        d.deliver_all([ingested(envelopes(registry, seqs), next_seq={END_SONG: 5})])
        d.close()
    report = load_report(data, now=time.time())
    assert report["totals"]["received"] == 4
    assert [b["events"] for b in report["buckets"]] == [5]  # seq 3 is written twice
    (twice,) = [i for i in report["incidents"] if i["kind"] == "delivered_by_two_partitions"]
    assert "prod-1" in twice["detail"] and "1 event" in twice["detail"]


def test_the_report_says_which_partition_has_no_ledger(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """Adding up the partitions' ledgers skipped a partition directory without one, and
    the report counted the other partitions' events as if they were all there were."""
    data = tmp_path / "data"
    for p in (0, 1):
        d = LocalDelivery(data, registry, layout=partition_layout(p))
        d.deliver_all(
            [ingested(envelopes(registry, [1, 2]), producer_id=f"q{p}", next_seq={END_SONG: 3})]
        )
        d.close()
    for f in (data / "_partitions" / "p0001").glob("_ledger.db*"):
        f.unlink()
    report = load_report(data, now=time.time())
    assert report["totals"]["received"] == 2
    (missing,) = [i for i in report["incidents"] if i["kind"] == "partition_ledger_missing"]
    assert "p0001" in missing["detail"]


def test_no_partition_starts_a_part_file_in_an_hour_already_closed_for_every_partition(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """``_CLOSED.json`` lists the partitions with part files in the hour when it is
    written; a partition whose commit read its clock before the hour's deadline and
    created its first part file there only after the marker (a commit stalled longer
    than the settle time, or a worker's clock behind) put events in a closed hour that
    its marker does not count. Such a commit now fails and its messages come back."""
    hour = FIXED_TS // 3_600_000
    deadline = (hour + 1) * 3600 + 600
    late = [deadline - 1.0]  # partition 2's commit: its clock reading precedes the deadline
    data = tmp_path / "data"
    now = [deadline - 100.0]
    first = LocalDelivery(data, registry, layout=partition_layout(0), clock=lambda: now[0])
    stalled = LocalDelivery(data, registry, layout=partition_layout(2), clock=lambda: late[0])
    first.deliver_all([ingested(envelopes(registry, [1, 2]), producer_id="a")])
    now[0] = deadline + 20
    first.close_due_buckets()
    (hour_dir,) = finalize_hours(data, now=deadline + 20, lateness=600, settle=10)
    (result,) = stalled.deliver_all([ingested(envelopes(registry, [1, 2, 3]), producer_id="c")])
    assert result.status is DeliveryStatus.UNAVAILABLE
    assert not list(Path(hour_dir).glob("part-p0002-*"))
    late[0] = deadline + 30  # redelivered: past the deadline, the events go to the current hour
    (result,) = stalled.deliver_all([ingested(envelopes(registry, [1, 2, 3]), producer_id="c")])
    assert result.status is DeliveryStatus.OK and result.skewed == 3
    assert not list(Path(hour_dir).glob("part-p0002-*"))
    assert json.loads((Path(hour_dir) / "_CLOSED.json").read_text())["events"] == 2
    first.close()
    stalled.close()


def test_report_command_reads_every_partition(tmp_path: Path, registry: SchemaRegistry) -> None:
    data = tmp_path / "data"
    for p in range(3):
        d = LocalDelivery(data, registry, layout=partition_layout(p))
        d.deliver_all(
            [ingested(envelopes(registry, [1, 2]), producer_id=f"q{p}", next_seq={END_SONG: 3})]
        )
        d.close()
    out = subprocess.run(
        [sys.executable, "-m", "spotify_events", "report", "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["totals"]["received"] == 6
    assert {k for s in report["streams"] for k in s} >= {
        "producer_id",
        "event_type",
        "received",
        "duplicates",
        "dropped",
        "rejected",
        "open_gaps",
        "lost",
    }


def test_free_port_helper_is_not_4222() -> None:
    assert free_port() != 4222


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_prefork_workers_serve_one_port_and_are_replaced(
    node: NatsCluster, registry: SchemaRegistry
) -> None:
    child = collector(node, "--stream", "PREFORK", "--partitions", "2", "--workers", "2").start()
    assert child.proc is not None
    url = child.ready_line.split()[-1] + "/v1/batches"

    def post(producer: str) -> int:
        body = encode_batch(WireBatch(producer, envelopes(registry, [1, 2]), {END_SONG: 3}))
        return requests.post(
            url, data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=30
        ).status_code

    try:
        assert wait_for(lambda: len(children_of(child.proc.pid)) == 2, timeout=30)
        assert all(post(f"pf-{i}") == 200 for i in range(20))
        first = children_of(child.proc.pid)
        victim = min(first)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        assert wait_for(
            lambda: (
                len(children_of(child.proc.pid)) == 2 and victim not in children_of(child.proc.pid)
            ),
            timeout=30,
        )
        assert all(post(f"pf-again-{i}") == 200 for i in range(10))
        kids = children_of(child.proc.pid)
    finally:
        code = child.stop()
    assert code == 0
    assert not any(Path(f"/proc/{k}").exists() for k in kids)  # stopped and reaped


def test_demo_cluster_ends_with_a_report_with_nothing_lost(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spotify_events",
            "demo",
            "--cluster",
            "-n",
            "3000",
            "--schemas",
            str(SCHEMAS),
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "SIGKILLed the stream leader" in out.stdout
    total = re.search(
        r"total: received (\d+), duplicates \d+, conflicts 0, dropped 0, rejected 0, "
        r"open gaps 0, lost 0",
        out.stdout,
    )
    assert total is not None and total.group(1) == "3000", out.stdout[-3000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_publish_loop_starts_afresh_in_a_forked_child() -> None:
    loop_thread = LoopThread("fork-test")

    async def pid() -> int:
        return os.getpid()

    assert loop_thread.run(pid(), timeout=10) == os.getpid()  # the parent's loop is running
    child = os.fork()
    if child == 0:  # the inherited loop's thread does not exist here: a new one must start
        try:
            ok = loop_thread.run(pid(), timeout=10) == os.getpid()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    loop_thread.stop()


def test_an_undecodable_stream_message_is_moved_aside_not_lost(
    node: NatsCluster, tmp_path: Path
) -> None:
    settings = StreamSettings(name="POISON", partitions=1, replicas=1)
    asyncio.run(prepare_stream(node.urls.split(","), settings, 30))

    async def publish() -> None:
        nc = await connect(node.urls.split(","), name="poison")
        try:
            await nc.jetstream(timeout=5).publish("POISON.p.0", b"not a slice")
        finally:
            await close(nc)

    asyncio.run(publish())
    data = tmp_path / "data"
    worker = deliver_worker(node, data, "POISON", "--lease-ttl", "1").start()
    try:
        kept = data / "_partitions" / "p0000" / "quarantine"
        assert wait_for(lambda: kept.is_dir() and any(kept.iterdir()), timeout=60)
        assert next(kept.iterdir()).read_bytes() == b"not a slice"
        # the message is counted after its bytes are kept: wait for the count as well
        counted = 'spotify_events_deliver_messages_total{outcome="invalid"} 1.0'
        assert wait_for(lambda: counted in requests.get(worker.url + "/metrics", timeout=5).text)
    finally:
        assert worker.stop() == 0


def test_a_slice_the_worker_cannot_deliver_does_not_hold_back_the_ones_beside_it(
    node: NatsCluster, tmp_path: Path, registry: SchemaRegistry
) -> None:
    """Slices that decode but cannot be written (a timestamp no bucket path can be built
    from; a schema the worker does not have, as when collectors got a new schema
    first) used to fail the whole group commit they were fetched with: every message
    of it was naked and came back together, again and again. The first is now moved
    aside like an undecodable message, the second waits in the stream alone, and the
    slices beside them are delivered."""
    settings = StreamSettings(name="UNDELIVERABLE", partitions=1, replicas=1)
    asyncio.run(prepare_stream(node.urls.split(","), settings, 30))
    good_events = envelopes(registry, [1, 2, 3])
    (bad_ts,) = envelopes(registry, [1])
    (new_schema,) = envelopes(registry, [1])
    batches = [
        ingested([bad_ts._replace(timestamp=1 << 62)], producer_id="far-future"),
        ingested([new_schema._replace(fingerprint=b"\x01" * 8)], producer_id="new-schema"),
        ingested(good_events, producer_id="good", next_seq={END_SONG: 4}),
    ]
    messages = [
        m
        for b in batches
        for m in batch_messages(b, subject="UNDELIVERABLE.p.0", max_bytes=64 << 10)
    ]

    async def publish() -> None:  # all before the worker starts: one fetch takes them all
        nc = await connect(node.urls.split(","), name="undeliverable")
        try:
            js = nc.jetstream(timeout=5)
            for m in messages:
                await js.publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id})
        finally:
            await close(nc)

    asyncio.run(publish())
    data = tmp_path / "data"
    worker = deliver_worker(node, data, "UNDELIVERABLE", "--lease-ttl", "1").start()
    try:

        def received() -> dict[str, int]:
            try:
                report = load_report(data, now=time.time())
            except (OSError, DataDirError):  # no ledger yet, or one being created
                return {}
            return {s["producer_id"]: s["received"] for s in report["streams"]}

        assert wait_for(lambda: received().get("good") == 3, timeout=30), received()
        invalid = 'spotify_events_deliver_messages_total{outcome="invalid"} 1.0'
        assert wait_for(  # counted once its bytes are kept
            lambda: invalid in requests.get(worker.url + "/metrics", timeout=5).text, timeout=10
        )
        (kept,) = (data / "_partitions" / "p0000" / "quarantine").iterdir()
        assert kept.read_bytes() == messages[0].data
        assert "new-schema" not in received()  # not written, not dropped: still in the stream
    finally:
        assert worker.stop() == 0
    pending = asyncio.run(_consumer_pending(node, "UNDELIVERABLE", "deliver_p0"))
    assert pending == 1  # the slice of the unknown schema, for a worker that has it


async def _consumer_pending(node: NatsCluster, stream: str, durable: str) -> int:
    """Messages of a consumer not yet acknowledged: waiting, or delivered and unacked."""
    nc = await connect(node.urls.split(","), name="pending")
    try:
        info = await nc.jetstream(timeout=5).consumer_info(stream, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await close(nc)


def test_a_slice_header_of_the_wrong_shape_is_moved_aside_and_blocks_nothing(
    node: NatsCluster, tmp_path: Path, registry: SchemaRegistry
) -> None:
    """A slice header that is JSON but not the object decoding expects (not an object;
    a producer id that is no string; an incident whose detail is no text) raised past
    the decoder's checks: the first killed the partition's consumer loop before it
    answered any message, so every next owner fetched it first and died the same way;
    the others failed each group commit they were in. All are now undecodable
    messages: kept, counted, terminated."""
    settings = StreamSettings(name="SHAPES", partitions=1, replicas=1)
    asyncio.run(prepare_stream(node.urls.split(","), settings, 30))

    def slice_with(header: Any) -> bytes:
        head = json.dumps(header).encode()
        return b"SE1" + len(head).to_bytes(4, "big") + head

    control = {"service": "s", "host": "h", "sdk_version": "1", "count": 0}
    incident = {"kind": "queue_damaged", "at": 1.5, "detail": ["not", "text"]}
    poison = [
        slice_with([]),
        slice_with({**control, "producer_id": ["a", "list"]}),
        slice_with({**control, "producer_id": "p", "control": {"incidents": [incident]}}),
    ]
    good = batch_messages(
        ingested(envelopes(registry, [1, 2]), producer_id="good", next_seq={END_SONG: 3}),
        subject="SHAPES.p.0",
        max_bytes=64 << 10,
    )

    async def publish() -> None:
        nc = await connect(node.urls.split(","), name="shapes")
        try:
            js = nc.jetstream(timeout=5)
            for data in poison:
                await js.publish("SHAPES.p.0", data)
            for m in good:
                await js.publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id})
        finally:
            await close(nc)

    asyncio.run(publish())
    data = tmp_path / "data"
    worker = deliver_worker(node, data, "SHAPES", "--lease-ttl", "1").start()
    try:

        def metrics() -> str:
            return str(requests.get(worker.url + "/metrics", timeout=5).text)

        # counted once their bytes are kept
        assert wait_for(
            lambda: 'spotify_events_deliver_messages_total{outcome="invalid"} 3.0' in metrics(),
            timeout=30,
        )
        kept = data / "_partitions" / "p0000" / "quarantine"
        assert sorted(f.read_bytes() for f in kept.iterdir()) == sorted(poison)
        committed = 'spotify_events_deliver_messages_total{outcome="committed"} 1.0'
        assert wait_for(lambda: committed in metrics())
    finally:
        assert worker.stop() == 0
    report = load_report(data, now=time.time())
    assert [(s["producer_id"], s["received"]) for s in report["streams"]] == [("good", 2)]


def test_worker_serves_the_completeness_page_behind_its_token(
    node: NatsCluster, tmp_path: Path
) -> None:
    settings = StreamSettings(name="PAGE", partitions=1, replicas=1)
    asyncio.run(prepare_stream(node.urls.split(","), settings, 30))
    worker = deliver_worker(
        node, tmp_path / "data", "PAGE", "--lease-ttl", "1", "--token", "s3cret"
    ).start()
    try:
        assert wait_for(lambda: (tmp_path / "data" / "_partitions" / "p0000").is_dir(), timeout=60)
        assert requests.get(worker.url + "/healthz", timeout=5).status_code in (200, 503)
        for path in ("/", "/metrics"):
            refused = requests.get(worker.url + path, timeout=5)
            assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
            wrong = requests.get(worker.url + path, auth=("any", "wrong"), timeout=5)
            assert wrong.status_code == 401
        # 503 while the first owner creates the partition's ledger, then the page
        pages: list[requests.Response] = []
        assert wait_for(
            lambda: (
                pages.append(requests.get(worker.url + "/", auth=("any", "s3cret"), timeout=5))
                or pages[-1].status_code != 503
            ),
            timeout=30,
        )
        page = pages[-1]
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert "<html" in page.text.lower()
        metrics = requests.get(
            worker.url + "/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=5
        )
        assert metrics.status_code == 200 and "spotify_events_deliver" in metrics.text
        # a ledger that cannot be read (here: not a database) is a 503 that says so
        stray = tmp_path / "data" / "_partitions" / "p0007"
        stray.mkdir()
        (stray / "_ledger.db").write_bytes(b"not a ledger")
        unreadable = requests.get(worker.url + "/", auth=("any", "s3cret"), timeout=5)
        assert unreadable.status_code == 503 and unreadable.headers["Retry-After"] == "1"
        assert "ledgers not readable yet" in unreadable.json()["error"]
    finally:
        assert worker.stop() == 0


@pytest.mark.slow
def test_a_worker_behind_on_every_partition_keeps_its_leases(
    node: NatsCluster, tmp_path: Path, registry: SchemaRegistry
) -> None:
    """A worker's group commits and its lease renewals share one loop. A renewal round is
    a KV round trip per lease, each a few turns of the loop, and on every turn each runner
    with a backlog commits once: renewals that wait behind those commits came too late,
    the fence stopped the worker's own partitions (no other worker wanted them) and they
    were acquired again later, pausing delivery just when it was behind. Alone, with a
    backlog on each of its partitions, a worker acquires each lease once."""
    partitions = 8
    settings = StreamSettings(name="BEHIND", partitions=partitions, replicas=1)
    asyncio.run(prepare_stream(node.urls.split(","), settings, 30))
    schema = registry.get(END_SONG)
    payload = EventEncoder(schema).encode(numbered("behind"))  # seqs tell events apart
    chunk, chunks = 120_000, 8  # about 40 slices of 1 MiB for each partition
    per_partition = chunk * chunks
    owners: dict[int, str] = {}
    for i in range(1000):
        owners.setdefault(partition_of(f"behind-{i}", partitions), f"behind-{i}")
    assert len(owners) == partitions

    async def publish() -> None:
        nc = await connect(node.urls.split(","), name="behind")
        try:
            js = nc.jetstream(timeout=30)
            for p, producer in owners.items():
                for first in range(1, per_partition + 1, chunk):
                    events = [
                        Envelope(s, END_SONG, schema.fingerprint, FIXED_TS, payload)
                        for s in range(first, first + chunk)
                    ]
                    batch = ingested(
                        events, producer_id=producer, next_seq={END_SONG: first + chunk}
                    )
                    subject = settings.subject(p)
                    for m in batch_messages(batch, subject=subject, max_bytes=1 << 20):
                        await js.publish(m.subject, m.data, headers={"Nats-Msg-Id": m.msg_id})
        finally:
            await close(nc)

    asyncio.run(publish())
    data = tmp_path / "data"
    worker = deliver_worker(node, data, "BEHIND", "--lease-ttl", "3", "--log-level", "INFO").start()

    def received() -> int:
        try:
            report = load_report(data, now=time.time())
        except Exception:  # a ledger being created by its first owner
            return 0
        return sum(s["received"] for s in report["streams"])

    try:
        everything = partitions * per_partition
        assert wait_for(lambda: received() == everything, timeout=180, interval=0.5), received()
        metrics = requests.get(worker.url + "/metrics", timeout=5).text
        lapsed = [line for line in worker.stderr_lines if "not renewed in time" in line]
        assert not lapsed, lapsed[:3]
        acquired = 'spotify_events_deliver_lease_changes_total{change="acquired"}'
        assert f"{acquired} {float(partitions)}" in metrics, worker.stderr_tail()
    finally:
        assert worker.stop() == 0
