"""The completeness page in-process: states of the cells, hostile producer strings,
the token as a browser sends it (basic auth), and the report sections it draws on.
The same page in a real browser is tests/browser/."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import END_SONG, FIXED_TS, PAGE_VIEW, BatchMaker, part_files, wsgi_call
from support import SCHEMAS

from spotify_events.collector.buckets import hour_label
from spotify_events.collector.page import cell_state, render_page
from spotify_events.collector.report import format_table
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.wire import DropNotice, WireBatch, encode_batch

TOKEN = "page-token"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(FIXED_TS / 1000 + 5)


@pytest.fixture
def collector(tmp_path: Path, clock: Clock) -> Iterator[Collector]:
    c = Collector(
        CollectorConfig(
            data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS), grace_period=60, lateness=60
        ),
        clock=clock,
    )
    yield c
    c.shutdown()


def send(c: Collector, maker: BatchMaker, batch: WireBatch, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, out = wsgi_call(c.app, "POST", "/v1/batches", encode_batch(batch), headers)
    assert status == 200, out


def batch(maker: BatchMaker, etype: str, seqs: list[int], **facts: Any) -> WireBatch:
    envs = maker.envelopes(etype, seqs)
    return WireBatch(
        maker.producer_id,
        envs,
        {etype: max(seqs) + 1},
        facts.pop("drops", []),
        service=facts.pop("service", "tests"),
        host=facts.pop("host", "localhost"),
        sdk_version=facts.pop("sdk_version", "0.1.0"),
    )


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of the document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def cells(page: Elements) -> list[dict[str, str | None]]:
    return [a for t, a in page.tags if t == "td" and "data-state" in a]


def cells_by_type(page: Elements) -> dict[str | None, dict[str, str | None]]:
    """The (one) grid cell with data of each event type's row."""
    out = {}
    row_type = None
    for tag, attrs in page.tags:
        if tag == "tr" and "data-event-type" in attrs:
            row_type = attrs["data-event-type"]
        if tag == "td" and "data-state" in attrs:
            out[row_type] = attrs
    return out


def test_page_shows_lost_dropped_and_open_cells_and_escapes_producer_strings(
    collector: Collector, collector_registry: Any, clock: Clock
) -> None:
    hostile = BatchMaker(collector_registry, "producer-hostile")
    send(
        collector,
        hostile,
        batch(hostile, END_SONG, [1, 2, 5], service=HOSTILE, host='"><b>', sdk_version=HOSTILE),
    )
    dropper = BatchMaker(collector_registry, "producer-dropper")
    drops = [DropNotice(PAGE_VIEW, 3, 4, 2, f"queue_full {HOSTILE}")]
    send(collector, dropper, batch(dropper, PAGE_VIEW, [1, 2, 5], drops=drops))

    doc = parse(render_page(collector.delivery.report()))
    assert not [t for t, _ in doc.tags if t in ("script", "img")]
    assert HOSTILE in "".join(doc.text)  # shown as text, not markup
    by_type = cells_by_type(doc)
    assert by_type[END_SONG]["data-state"] == "open"  # seq 3..4 missing, within grace
    assert by_type[END_SONG]["data-open-gaps"] == "2"

    clock.now += 61  # past the grace period: EndSong 3..4 are lost
    doc = parse(render_page(collector.delivery.report()))
    by_type = cells_by_type(doc)
    assert by_type[END_SONG]["data-state"] == "lost"
    assert by_type[END_SONG]["data-lost"] == "2"
    assert by_type[END_SONG]["data-received"] == "3"
    assert by_type[PAGE_VIEW]["data-state"] == "dropped"
    assert by_type[PAGE_VIEW]["data-dropped"] == "2"
    title = by_type[PAGE_VIEW]["title"] or ""
    assert f"dropped: queue_full {HOSTILE}: 2" in title
    producers = {a["data-producer"] for t, a in doc.tags if t == "tr" and "data-producer" in a}
    assert producers == {"producer-hostile", "producer-dropper"}
    assert "EndSong: 3..4 (2 lost, 0 open)" in "".join(doc.text).replace(
        "spotify.events.playback.", ""
    )


def test_cell_is_complete_once_the_hour_closes_with_nothing_missing(
    collector: Collector, collector_registry: Any, clock: Clock
) -> None:
    maker = BatchMaker(collector_registry, "producer-a")
    send(collector, maker, batch(maker, END_SONG, [1, 2, 3]))
    clock.now += 3600 + 61
    collector.delivery.close_due_buckets()
    [bucket] = collector.delivery.report()["buckets"]
    assert bucket["closed"] and cell_state(bucket) == "complete"
    [cell] = cells(parse(render_page(collector.delivery.report())))
    assert (cell["data-state"], cell["data-received"]) == ("complete", "3")


def test_report_groups_producers_by_service_and_sdk_version(
    collector: Collector, collector_registry: Any, clock: Clock
) -> None:
    old = BatchMaker(collector_registry, "producer-old")
    send(collector, old, batch(old, END_SONG, [1, 3], service="api", sdk_version="0.0.9"))
    new = BatchMaker(collector_registry, "producer-new")
    send(collector, new, batch(new, END_SONG, [1, 2], service="api", sdk_version="0.1.0"))
    clock.now += 61
    report = collector.delivery.report()
    versions = {v["sdk_version"]: v for v in report["versions"]}
    assert versions["0.0.9"]["lost"] == 1 and versions["0.0.9"]["producers"] == 1
    assert versions["0.1.0"]["lost"] == 0 and versions["0.1.0"]["received"] == 2
    producers = {p["producer_id"]: p for p in report["producers"]}
    assert producers["producer-old"]["newest_event"] == FIXED_TS / 1000
    table = format_table(report)
    assert "0.0.9" in table and "sdk version" in table
    json.dumps(report)  # the JSON report stays serialisable


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(
        CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS), token=TOKEN)
    )
    yield c
    c.shutdown()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_page_with_a_token_asks_the_browser_for_basic_auth(guarded: Collector) -> None:
    status, headers, _ = wsgi_call(guarded.app, "GET", "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    status, headers, _ = wsgi_call(guarded.app, "GET", "/", headers=basic("me", "wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    status, _, _ = wsgi_call(guarded.app, "GET", "/", headers={"Authorization": "Basic %%%"})
    assert status == 401
    status, headers, body = wsgi_call(guarded.app, "GET", "/", headers=basic("anyone", TOKEN))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert b'http-equiv="refresh"' in body
    status, _, _ = wsgi_call(guarded.app, "GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    status, _, _ = wsgi_call(guarded.app, "GET", "/healthz")
    assert status == 200


def test_empty_collector_page(collector: Collector) -> None:
    status, _, body = wsgi_call(collector.app, "GET", "/")
    assert status == 200 and b"no events yet" in body and b"no producers yet" in body
    status, _, _ = wsgi_call(collector.app, "POST", "/")
    assert status == 405


def test_page_is_bounded_whatever_the_report_holds() -> None:
    """Thousands of producers and of event types named in rejected events: the page
    shows the newest hours, the first types and the worst producers, and says so."""
    now = FIXED_TS / 1000
    streams = [
        {
            "producer_id": f"p{i}",
            "event_type": f"hostile.Type{i}",
            "gap_ranges": [[1, 2]],
            "lost": 2,
            "open_gaps": 0,
        }
        for i in range(3000)
    ]
    producers = [
        {
            "producer_id": f"p{i}",
            "service": "s",
            "host": "h",
            "sdk_version": "v",
            "last_seen": now,
            "newest_event": None,
            "incidents": 0,
            "received": 0,
            "dropped": 0,
            "lost": 2,
            "open_gaps": 0,
        }
        for i in range(3000)
    ]
    buckets = [
        {
            "event_type": END_SONG,
            "hour": hour_label(int(now // 3600) - h),
            "closed": True,
            "events": 1,
            "skewed": 0,
            "duplicates": 0,
            "producers": [],
        }
        for h in range(500)
    ]
    totals = dict.fromkeys(("received", "duplicates", "dropped", "rejected", "open_gaps"), 0)
    report = {
        "generated_at": now,
        "grace_period": 300.0,
        "lateness": 600.0,
        "totals": {**totals, "lost": 6000},
        "streams": streams,
        "buckets": buckets,
        "producers": producers,
        "versions": [
            {"service": f"s{i}", "sdk_version": "v", "producers": 1, "lost": 2, "received": 0}
            | {"dropped": 0, "open_gaps": 0}
            for i in range(3000)
        ],
        "incidents": [{"producer_id": "p0", "kind": "k", "detail": "d"}] * 500,
    }
    doc = parse(render_page(report, max_hours=48, max_types=100, max_producers=200))
    rows = [a for t, a in doc.tags if t == "tr" and "data-event-type" in a]
    assert len(rows) == 100 and rows[0]["data-event-type"] == END_SONG
    assert len([a for t, a in doc.tags if t == "th" and "data-hour" in a]) == 48
    assert len([a for t, a in doc.tags if t == "tr" and "data-producer" in a]) == 200
    text = "".join(doc.text)
    assert "2,901 more event types not shown" in text and "2,800 more producers not shown" in text
    assert len([a for t, a in doc.tags if t == "tr" and "data-sdk-version" in a]) == 200
    assert "2,800 more not shown" in text
    assert text.count("k: d") == 20  # one producer's drill-down


def test_page_shows_what_the_collector_found_wrong_in_its_data_directory(
    tmp_path: Path, clock: Clock
) -> None:
    """A part file damaged while the collector was stopped is moved aside and recorded as
    the collector's own incident, which no producer row carries: the page lists it."""
    config = CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS))
    first = Collector(config, clock=clock)
    maker = BatchMaker(first.registry, "producer-a")
    send(first, maker, batch(maker, END_SONG, [1, 2, 3]))
    first.shutdown()
    (part,) = part_files(tmp_path / "data")
    part.write_bytes(part.read_bytes()[:-7])  # cut while stopped
    again = Collector(config, clock=clock)
    try:
        status, _, body = wsgi_call(again.app, "GET", "/")
        doc = parse(body.decode())
        listed = [a["data-kind"] for t, a in doc.tags if t == "li" and "data-kind" in a]
        assert status == 200 and listed == ["damaged_part_file"]
        assert "_quarantine" in "".join(doc.text)
    finally:
        again.shutdown()
