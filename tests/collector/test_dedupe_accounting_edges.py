"""How one batch is deduplicated and accounted before anything is written.

Each test posts ingested batches to a real LocalDelivery (real part files, real
SQLite ledger) with an injected clock, and reads back what the promise is about:
which events were taken, which refused and why, which bucket they landed in, and the
counts of streams, buckets and producers that the report and ``_CLOSED.json`` give.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import (
    END_SONG,
    HOUR,
    PAGE_VIEW,
    T0,
    BatchMaker,
    FakeClock,
    OpenDelivery,
    dir_snapshot,
    expected_uids,
    ms,
    read_uids,
    stream,
)

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest, IngestedBatch
from spotify_events.collector.report import load_report
from spotify_events.collector.seam import DeliveryResult, DeliveryStatus
from spotify_events.wire import DropNotice, Envelope, WireBatch, encode_batch


class Poster:
    """Ingests and delivers wire batches of one producer, at the clock's time."""

    def __init__(self, d: LocalDelivery, maker: BatchMaker, clock: FakeClock) -> None:
        self.d, self.maker, self.clock = d, maker, clock

    def batch(self, envs: list[Envelope], **kw: Any) -> IngestedBatch:
        return Ingest(self.maker.registry, clock=self.clock).parse(self.maker.body(envs, **kw))

    def post(self, envs: list[Envelope], **kw: Any) -> DeliveryResult:
        result = self.d.deliver(self.batch(envs, **kw))
        assert result.status is DeliveryStatus.OK, result.message
        return result


def rejections(result: DeliveryResult | IngestedBatch) -> list[tuple[str, int, str]]:
    return [(r.event_type, r.seq, r.code) for r in result.rejections]


# --- conflicts: a number that comes again with another payload ---------------------------


def test_a_number_sent_again_with_another_payload_is_refused_as_a_conflict(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    p = Poster(open_delivery(), maker, clock)
    ts = ms(T0 + 30)
    p.post(maker.envelopes(END_SONG, [1, 2], ts))
    other = maker.envelope(END_SONG, 1, ts)._replace(payload=maker.envelope(END_SONG, 9).payload)
    result = p.post([other, maker.envelope(END_SONG, 2, ts)])
    assert (result.accepted, result.duplicates) == (0, 1)
    (conflict,) = result.rejections
    assert (conflict.event_type, conflict.seq, conflict.code) == (END_SONG, 1, "conflict")
    assert conflict.reason == (
        "seq 1 was already delivered with a different payload "
        "(two producers share one producer id?)"
    )
    # the same payload at another millisecond is another event too
    later = maker.envelope(END_SONG, 2, ts + 1)
    result = p.post([later])
    assert rejections(result) == [(END_SONG, 2, "conflict")]
    s = stream(p.d.report(), "producer-a", END_SONG)
    assert (s["received"], s["duplicates"], s["conflicts"], s["rejected"]) == (2, 1, 2, 0)
    assert read_uids(tmp_path / "data") == expected_uids("producer-a", END_SONG, [1, 2])


def test_a_number_older_than_the_conflict_window_counts_as_a_duplicate(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    p = Poster(open_delivery(conflict_window=3), maker, clock)
    ts = ms(T0)
    p.post(maker.envelopes(END_SONG, range(1, 6), ts))
    foreign = maker.envelope(END_SONG, 99, ts).payload
    result = p.post(
        [maker.envelope(END_SONG, n, ts)._replace(payload=foreign) for n in (1, 2, 3, 4, 5)]
    )
    assert rejections(result) == [(END_SONG, n, "conflict") for n in (3, 4, 5)]
    assert result.duplicates == 2
    assert stream(p.d.report(), "producer-a", END_SONG)["conflicts"] == 3


# --- counts that add up over runs and batches --------------------------------------------


def test_duplicates_and_skewed_events_add_up_over_runs_and_batches(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    """Two old hours (past their lateness) are skewed into the open hour; a later batch
    repeats numbers of two hours. Every count is a sum, never the last run's."""
    p = Poster(open_delivery(lateness=600.0), maker, clock)
    old_a, old_b = ms(T0 - 3 * HOUR), ms(T0 - 2 * HOUR)
    first = p.post(maker.envelopes(END_SONG, [1, 2], old_a) + maker.envelopes(END_SONG, [3], old_b))
    assert (first.accepted, first.skewed) == (3, 3)
    second = p.post(maker.envelopes(END_SONG, [4], old_a))
    assert second.skewed == 1
    (bucket,) = p.d.report()["buckets"]
    assert (bucket["hour"], bucket["events"], bucket["skewed"]) == ("2026-01-01T10:00Z", 4, 4)
    (producer,) = bucket["producers"]
    assert (producer["events"], producer["skewed"]) == (4, 4)
    again = p.post(maker.envelopes(END_SONG, [1], old_a) + maker.envelopes(END_SONG, [3], old_b))
    assert (again.accepted, again.duplicates, again.duplicates_by_type) == (0, 2, {END_SONG: 2})
    p.post(maker.envelopes(END_SONG, [2], old_a))
    (bucket,) = p.d.report()["buckets"]
    assert bucket["duplicates"] == 3 and bucket["producers"][0]["duplicates"] == 3
    assert stream(p.d.report(), "producer-a", END_SONG)["duplicates"] == 3


# --- buckets a batch may write to -------------------------------------------------------


def test_a_batch_writes_to_at_most_max_hours_per_batch_buckets_and_refuses_the_rest(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """Three hours, two allowed: the third hour's events are refused one by one, and the
    events after them that belong to an hour already taken are still written."""
    p = Poster(open_delivery(lateness=3 * HOUR, max_hours_per_batch=2), maker, clock)
    h8, h9, h10 = ms(T0 - 2 * HOUR), ms(T0 - HOUR), ms(T0)
    envs = [
        maker.envelope(END_SONG, 1, h8),
        maker.envelope(END_SONG, 2, h9),
        maker.envelope(END_SONG, 3, h10),
        maker.envelope(END_SONG, 4, h10),
        maker.envelope(END_SONG, 5, h8),
        maker.envelope(END_SONG, 6, h10),
        maker.envelope(END_SONG, 7, h9),
    ]
    result = p.post(envs)
    assert result.accepted == 4
    assert rejections(result) == [(END_SONG, n, "too_many_hours") for n in (3, 4, 6)]
    assert {r.reason for r in result.rejections} == {
        "batch spreads over more than 2 hourly buckets; send fewer hours per batch"
    }
    assert read_uids(tmp_path / "data") == expected_uids("producer-a", END_SONG, [1, 2, 5, 7])
    s = stream(p.d.report(), "producer-a", END_SONG)
    assert (s["received"], s["rejected"], s["open_gaps"]) == (4, 3, 0)
    hours = {b["hour"]: b["events"] for b in p.d.report()["buckets"]}
    assert hours == {"2026-01-01T08:00Z": 2, "2026-01-01T09:00Z": 2}


def assert_only_bucket_is_10h(d: LocalDelivery, clock: FakeClock, data: Path) -> None:
    """The 10:00 bucket is the only one: in the live report, the open-bucket gauge, the
    buckets that close, the ledger they are saved to, and the files."""
    assert [b["hour"] for b in d.report()["buckets"]] == ["2026-01-01T10:00Z"]
    (hour,) = d.report()["buckets"]
    assert len(hour["parts"]) == 1
    gauges = d.completeness()
    assert gauges is not None and gauges.open_buckets == 1
    clock.now = T0 + 4 * HOUR
    assert d.close_due_buckets() == 1
    saved = load_report(data, now=clock.now)["buckets"]
    assert [(b["hour"], b["closed"]) for b in saved] == [("2026-01-01T10:00Z", True)]
    assert {os.path.dirname(f) for f in dir_snapshot(data) if f.startswith(END_SONG)} == {
        os.path.join(END_SONG, "2026-01-01", "10")
    }


def test_an_hour_refused_for_max_hours_per_batch_leaves_no_bucket_behind(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """A hostile batch naming many hours must not grow the state by a bucket per hour
    (nor the report, the ledger or the close work) for events that were refused."""
    d = open_delivery(max_hours_per_batch=1)
    p = Poster(d, maker, clock)
    envs = [maker.envelope(END_SONG, n, ms(T0 + (n - 1) * HOUR)) for n in (1, 2, 3)]
    result = p.post(envs)
    assert rejections(result) == [(END_SONG, n, "too_many_hours") for n in (2, 3)]
    assert_only_bucket_is_10h(d, clock, tmp_path / "data")


def test_a_run_of_conflicts_only_leaves_no_bucket_or_part_file_behind(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    """Numbers sent again with another payload are refused, counted on the stream only:
    the next hour they name gets no bucket, and their own full part no successor."""
    d = open_delivery(max_part_bytes=1024)  # the first block fills the part
    p = Poster(d, maker, clock)
    p.post(maker.envelopes(END_SONG, [1, 2], ms(T0)))
    foreign = maker.envelope(END_SONG, 9).payload
    again = [
        maker.envelope(END_SONG, 1, ms(T0))._replace(payload=foreign),
        maker.envelope(END_SONG, 2, ms(T0 + HOUR))._replace(payload=foreign),
    ]
    result = p.post(again)
    assert rejections(result) == [(END_SONG, n, "conflict") for n in (1, 2)]
    assert stream(d.report(), "producer-a", END_SONG)["conflicts"] == 2
    assert_only_bucket_is_10h(d, clock, tmp_path / "data")


def test_after_the_clock_steps_back_an_event_of_a_closed_hour_goes_to_the_next_open_one(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    d = open_delivery(lateness=600.0)
    p = Poster(d, maker, clock)
    p.post(maker.envelopes(END_SONG, [1], ms(T0 + 30)))
    clock.now = T0 + HOUR + 600
    assert d.close_due_buckets() == 1
    closed = data / END_SONG / "2026-01-01" / "10"
    before = {f.name: f.stat().st_size for f in closed.iterdir()}
    clock.now = T0 - HOUR + 60  # stepped back into 09:00: the closed 10:00 is "the future"
    result = p.post(maker.envelopes(END_SONG, [2], ms(T0 + 40)))
    assert (result.accepted, result.skewed) == (1, 1)
    assert {f.name: f.stat().st_size for f in closed.iterdir()} == before
    buckets = {b["hour"]: b for b in d.report()["buckets"]}
    assert sorted(buckets) == ["2026-01-01T10:00Z", "2026-01-01T11:00Z"]
    assert (buckets["2026-01-01T11:00Z"]["events"], buckets["2026-01-01T11:00Z"]["skewed"]) == (
        1,
        1,
    )
    assert buckets["2026-01-01T11:00Z"]["closed"] is False
    assert read_uids(data) == expected_uids("producer-a", END_SONG, [1, 2])


# --- the watermark: what a batch says was sent ------------------------------------------


def test_without_next_seq_the_watermark_rises_past_the_highest_number_seen(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    """Received, rejected and dropped numbers each raise the watermark to one past the
    highest of them, whatever order the runs come in."""
    p = Poster(open_delivery(lateness=3 * HOUR), maker, clock)
    h9, h10 = ms(T0 - HOUR), ms(T0)
    p.post([maker.envelope(END_SONG, 10, h10), maker.envelope(END_SONG, 5, h9)], next_seq={})
    assert stream(p.d.report(), "producer-a", END_SONG)["next_seq"] == 11
    bad = maker.envelope(PAGE_VIEW, 7, h10)._replace(payload=b"")
    rejected = p.batch([bad, bad._replace(seq=3)], next_seq={})
    assert rejections(rejected) == [
        (PAGE_VIEW, 7, "invalid_payload"),
        (PAGE_VIEW, 3, "invalid_payload"),
    ]
    assert p.d.deliver(rejected).status is DeliveryStatus.OK
    s = stream(p.d.report(), "producer-a", PAGE_VIEW)
    assert (s["next_seq"], s["received"], s["rejected"]) == (8, 0, 2)
    drops = [
        DropNotice(PAGE_VIEW, 20, 21, 2, "queue full"),
        DropNotice(PAGE_VIEW, 12, 13, 2, "queue full"),
    ]
    p.post([], next_seq={}, drops=drops)
    s = stream(p.d.report(), "producer-a", PAGE_VIEW)
    assert (s["next_seq"], s["dropped"]) == (22, 4)


def test_a_rejected_first_number_is_accounted_as_rejected(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    p = Poster(open_delivery(), maker, clock)
    bad = maker.envelope(END_SONG, 1, ms(T0))._replace(payload=b"")
    rejected = p.batch([bad])
    assert rejections(rejected) == [(END_SONG, 1, "invalid_payload")]
    assert p.d.deliver(rejected).status is DeliveryStatus.OK
    clock.now += 10_000
    s = stream(p.d.report(), "producer-a", END_SONG)
    assert (s["rejected"], s["open_gaps"], s["lost"], s["complete"]) == (1, 0, 0, True)


def test_a_number_both_dropped_and_rejected_is_only_rejected_in_the_reasons(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    p = Poster(open_delivery(), maker, clock)
    drops = [
        DropNotice(END_SONG, 5, 5, 1, "queue full"),
        DropNotice(END_SONG, 5, 5, 1, "rejected: schema mismatch"),
        DropNotice(END_SONG, 6, 6, 1, "queue full"),
    ]
    p.post([], next_seq={END_SONG: 7}, drops=drops)
    s = stream(p.d.report(), "producer-a", END_SONG)
    assert (s["dropped"], s["dropped_reasons"]) == (1, {"queue full": 1})
    assert (s["rejected"], s["rejected_reasons"]) == (1, {"rejected: schema mismatch": 1})


def test_a_drop_notice_for_a_type_this_delivery_does_not_know_is_skipped_not_the_rest(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    p = Poster(open_delivery(), maker, clock)
    b = p.batch([], next_seq={END_SONG: 4})
    drops = [
        DropNotice("com.example.Unknown", 1, 9, 9, "queue full"),
        DropNotice(END_SONG, 2, 3, 2, "queue full"),
    ]
    b = dataclasses.replace(b, facts=dataclasses.replace(b.facts, drops=drops))
    assert p.d.deliver(b).status is DeliveryStatus.OK
    s = stream(p.d.report(), "producer-a", END_SONG)
    assert (s["dropped"], s["next_seq"]) == (2, 4)
    assert [x["event_type"] for x in p.d.report()["streams"]] == [END_SONG]


# --- streams ---------------------------------------------------------------------------


def test_a_stream_remembers_when_it_was_first_and_last_seen_and_by_whom(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    p = Poster(open_delivery(), maker, clock)
    first_at = clock.now
    p.post(maker.envelopes(END_SONG, [1], ms(T0)), next_seq={END_SONG: 2, PAGE_VIEW: 5})
    clock.now += 30
    p.post(maker.envelopes(END_SONG, [2], ms(T0)), next_seq={END_SONG: 3, PAGE_VIEW: 5})
    report = p.d.report()
    for etype in (END_SONG, PAGE_VIEW):  # PAGE_VIEW only ever announced: a heartbeat stream
        s = stream(report, "producer-a", etype)
        assert (s["first_seen"], s["last_seen"]) == (first_at, first_at + 30)
        assert (s["service"], s["host"], s["sdk_version"]) == ("tests", "localhost", "0.1.0")
    assert stream(report, "producer-a", PAGE_VIEW)["open_gaps"] == 4


def test_missing_events_follows_every_stream_as_gaps_open_and_fill(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    d = open_delivery()
    p = Poster(d, maker, clock)
    ts = ms(T0)
    p.post(maker.envelopes(END_SONG, [1, 3], ts) + maker.envelopes(PAGE_VIEW, [1, 4], ts))
    assert d.missing_events() == 3
    p.post(maker.envelopes(END_SONG, [2], ts))
    assert d.missing_events() == 2
    p.post(maker.envelopes(PAGE_VIEW, [3], ts))
    assert d.missing_events() == 1
    d.close()
    assert open_delivery().missing_events() == 1


# --- a producer's queue incidents ------------------------------------------------------


def incident_body(maker: BatchMaker, producer: str, incidents: list[dict[str, Any]]) -> bytes:
    return encode_batch(
        WireBatch(
            producer,
            [],
            {},
            [],
            service="tests",
            host="h",
            sdk_version="0.1.0",
            incidents=incidents,
        )
    )


def test_queue_incidents_are_kept_once_each_and_at_most_100_per_producer(
    open_delivery: OpenDelivery,
    maker: BatchMaker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = open_delivery()

    def send(producer: str, first: int, n: int) -> None:
        incidents = [
            {"kind": "queue_damaged", "detail": f"file {i} moved aside", "at": 1000.0 + i}
            for i in range(first, first + n)
        ]
        body = incident_body(maker, producer, incidents)
        batch = Ingest(maker.registry, clock=clock).parse(body)
        assert d.deliver(batch).status is DeliveryStatus.OK

    def kept() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for i in d.report()["incidents"]:
            out.setdefault(i["producer_id"], []).append(i)
        return out

    send("p1", 0, 2)
    send("p1", 0, 2)  # a retried batch adds nothing
    assert kept() == {
        "p1": [
            {
                "producer_id": "p1",
                "kind": "queue_damaged",
                "detail": "file 0 moved aside",
                "at": 1000.0,
            },
            {
                "producer_id": "p1",
                "kind": "queue_damaged",
                "detail": "file 1 moved aside",
                "at": 1001.0,
            },
        ]
    }
    with caplog.at_level(logging.WARNING, logger="spotify_events.collector.delivery"):
        caplog.clear()
        send("p1", 1, 2)  # one already kept, one new: the new one is kept
        (logged,) = [r.getMessage() for r in caplog.records]
        assert logged == (
            'producer p1 reports a queue incident: {"producer_id": "p1", "kind": '
            '"queue_damaged", "detail": "file 2 moved aside", "at": 1002.0}'
        )
        for first in range(3, 130, 16):
            send("p1", first, 16)
    assert len(kept()["p1"]) == 100
    assert kept()["p1"][-1]["at"] == 1099.0
    refusals = [
        r.getMessage() for r in caplog.records if "further ones are not kept" in r.getMessage()
    ]
    assert refusals == ["producer p1 has reported 100 queue incidents; further ones are not kept"]
    send("p2", 200, 1)  # another producer's are still kept
    assert len(kept()["p2"]) == 1
    d.close()
    d = open_delivery()  # after a restart the count per producer is where it was
    send("p1", 500, 3)
    send("p2", 201, 1)
    assert (len(kept()["p1"]), len(kept()["p2"])) == (100, 2)


def test_an_incident_sent_again_under_another_producer_id_is_kept_once(
    open_delivery: OpenDelivery, maker: BatchMaker, clock: FakeClock
) -> None:
    """The SDK sends a queue file's incidents with whatever batch goes next: under the
    producer id of the drop notices or events it carries (a copied file's earlier id),
    or the file's own. A crash between the acknowledgement and forgetting them sends
    them again, maybe under another id, and they were kept (and counted) twice. The
    wire carries no incident id; kind, time (the queue's float clock) and detail
    together are one, whichever producer id brings them, also after a restart."""
    told = [{"kind": "queue_file_lost", "detail": "queue.db moved aside", "at": 1765.25}]

    def send(d: LocalDelivery, producer: str) -> None:
        batch = Ingest(maker.registry, clock=clock).parse(incident_body(maker, producer, told))
        assert d.deliver(batch).status is DeliveryStatus.OK

    d = open_delivery()
    send(d, "copied-earlier-id")
    send(d, "own-id")
    assert [i["producer_id"] for i in d.report()["incidents"]] == ["copied-earlier-id"]
    d.close()
    d = open_delivery()
    send(d, "own-id")
    assert len(d.report()["incidents"]) == 1
