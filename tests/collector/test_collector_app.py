"""In-process tests of the WSGI app: every bad input is a 4xx or a per-event rejection,
nothing is written, and the app keeps serving. Called through WSGI directly (no socket).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from collector_helpers import END_SONG, PAGE_VIEW, BatchMaker, part_files, wsgi_call
from support import SCHEMAS

from spotify_events.collector import report as report_module
from spotify_events.collector.ledger import LedgerState
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.wire import ENVELOPE_SCHEMA, DropNotice, Envelope

TOKEN = "s3cret-token"
#: Longest a test waits for another thread to reach a point (only a failure waits it out).
WAIT = 10.0


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(
        CollectorConfig(
            data_dir=str(tmp_path / "data"),
            schemas=str(SCHEMAS),
            max_body_bytes=200_000,
            max_events=5_000,
            max_decoded_bytes=1_000_000,
        )
    )
    yield c
    c.shutdown()


def post(c: Collector, body: bytes, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, out = wsgi_call(c.app, "POST", "/v1/batches", body, headers)
    return status, json.loads(out)


def metric(c: Collector, name: str, **labels: str) -> float:
    value = c.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else float(value)


def assert_still_serving(c: Collector, maker: BatchMaker) -> None:
    status, out = post(c, maker.body(maker.envelopes(PAGE_VIEW, [1])))
    assert (status, out["accepted"] + out["duplicates"]) == (200, 1)


def raw_container(records: list[dict[str, Any]], schema: Any = ENVELOPE_SCHEMA, **kw: Any) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, records, **kw)
    return out.getvalue()


def test_good_batch_and_routes(collector: Collector, maker: BatchMaker) -> None:
    status, out = post(collector, maker.body(maker.envelopes(END_SONG, range(1, 11))))
    assert (status, out) == (200, {"accepted": 10, "duplicates": 0, "rejected": []})
    assert wsgi_call(collector.app, "GET", "/healthz")[0] == 200
    status, headers, text = wsgi_call(collector.app, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    sample = (
        b"spotify_events_collector_events_total"
        b'{event_type="spotify.events.playback.EndSong",outcome="accepted"} 10.0'
    )
    assert sample in text
    assert b"spotify_events_collector_request_seconds_bucket" in text
    assert b"spotify_events_collector_missing_events 0.0" in text
    status, _, report = wsgi_call(collector.app, "GET", "/v1/report")
    assert status == 200 and json.loads(report)["streams"][0]["received"] == 10
    assert wsgi_call(collector.app, "GET", "/nope")[0] == 404
    assert wsgi_call(collector.app, "GET", "/v1/batches")[0] == 405


@pytest.mark.parametrize(
    ("name", "make_body", "status"),
    [
        ("garbage", lambda m: b"this is not avro at all", 400),
        ("empty body", lambda m: b"", 400),
        ("truncated", lambda m: m.body(m.envelopes(END_SONG, range(1, 50)))[:-40], 400),
        (
            "bzip2 codec",
            lambda m: raw_container(
                [m.envelopes(END_SONG, [1])[0]._asdict()],
                codec="bzip2",
                metadata={"se.producer_id": "p"},
            ),
            400,
        ),
        (
            "unknown codec name",
            lambda m: m.body(m.envelopes(END_SONG, [1]), codec="null").replace(
                b"\x08null", b"\x0csnappy", 1
            ),
            400,
        ),
        (
            "not envelopes",
            lambda m: raw_container(
                [{"a": 1}],
                {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]},
            ),
            400,
        ),
        ("too many events", lambda m: m.body(m.envelopes(PAGE_VIEW, range(1, 5_002))), 413),
        ("oversized body", lambda m: b"Obj\x01" + b"\x00" * 200_001, 413),
        (
            "zstd bomb",
            lambda m: raw_container(
                [
                    {
                        "seq": 1,
                        "event_type": END_SONG,
                        "fingerprint": b"\x00" * 8,
                        "timestamp": 0,
                        "payload": b"\x00" * 5_000_000,
                    }
                ],
                codec="zstandard",
                metadata={"se.producer_id": "p"},
            ),
            413,
        ),
        (
            "deflate bomb",
            lambda m: raw_container(
                [
                    {
                        "seq": 1,
                        "event_type": END_SONG,
                        "fingerprint": b"\x00" * 8,
                        "timestamp": 0,
                        "payload": b"\x00" * 5_000_000,
                    }
                ],
                codec="deflate",
                metadata={"se.producer_id": "p"},
            ),
            413,
        ),
        ("hostile type in next_seq", lambda m: m.body([], next_seq={"../x": 3}), 400),
        (
            "hostile type in drops",
            lambda m: m.body([], drops=[DropNotice("../../etc", 1, 1, 1, "x")]),
            400,
        ),
        ("no producer id", lambda m: raw_container([], metadata={}), 400),
    ],
)
def test_bad_batches_are_4xx_and_write_nothing(
    collector: Collector,
    maker: BatchMaker,
    tmp_path: Path,
    name: str,
    make_body: Any,
    status: int,
) -> None:
    got, out = post(collector, make_body(maker))
    assert got == status, out
    assert isinstance(out["error"], str) and out["error"]
    assert part_files(tmp_path / "data") == []
    assert collector.delivery.report()["streams"] == []
    counted = sum(
        metric(collector, "spotify_events_collector_bad_requests_total", kind=kind)
        for kind in ("too_large", "decode", "metadata")
    )
    assert counted == 1.0
    assert_still_serving(collector, maker)


def test_decode_errors_are_counted(collector: Collector) -> None:
    post(collector, b"garbage")
    assert metric(collector, "spotify_events_collector_decode_errors_total") == 1.0


def test_bad_events_are_rejected_one_by_one(
    collector: Collector, maker: BatchMaker, tmp_path: Path
) -> None:
    good = maker.envelopes(END_SONG, [1, 2])
    page = maker.envelope(PAGE_VIEW, 1)
    bad = [
        good[0]._replace(seq=3, fingerprint=b"\x01" * 8),  # unknown fingerprint
        good[0]._replace(seq=4, payload=b"\xff\xff\xff"),  # does not decode
        good[0]._replace(seq=5, payload=good[0].payload + b"\x00"),  # trailing bytes
        Envelope(6, END_SONG, page.fingerprint, page.timestamp, page.payload),  # type mismatch
        good[0]._replace(seq=1, event_type="../x"),  # hostile name
        good[0]._replace(seq=0),  # bad seq
    ]
    status, out = post(collector, maker.body([*good, *bad], next_seq={END_SONG: 7}))
    assert status == 200
    assert (out["accepted"], out["duplicates"]) == (2, 0)
    reasons = {(r["event_type"], r["seq"]): r["reason"] for r in out["rejected"]}
    assert len(reasons) == 6
    assert reasons[(END_SONG, 3)].startswith("unknown schema fingerprint 0101")
    assert reasons[(END_SONG, 4)].startswith("payload does not decode")
    assert "trailing bytes" in reasons[(END_SONG, 5)]
    assert "does not match" in reasons[(END_SONG, 6)]
    assert reasons[("../x", 1)] == "invalid event type name"
    assert reasons[(END_SONG, 0)] == "seq must be >= 1"
    codes = {(r["event_type"], r["seq"]): r["code"] for r in out["rejected"]}
    assert codes == {
        (END_SONG, 3): "unknown_schema",
        (END_SONG, 4): "invalid_payload",
        (END_SONG, 5): "invalid_payload",
        (END_SONG, 6): "invalid_type",
        ("../x", 1): "invalid_type",
        (END_SONG, 0): "invalid_seq",
    }
    assert not (tmp_path / "data" / "..").joinpath("x").exists()
    assert [p.parts[-4] for p in part_files(tmp_path / "data")] == [END_SONG]
    stream = collector.delivery.report()["streams"][0]
    # seq 3 (unknown schema) is held by the producer, so it stays an open gap
    assert (stream["received"], stream["rejected"], stream["open_gaps"]) == (2, 3, 1)
    assert (
        metric(
            collector,
            "spotify_events_collector_events_total",
            event_type=END_SONG,
            outcome="rejected",
        )
        == 5.0
    )
    assert (
        metric(
            collector,
            "spotify_events_collector_events_total",
            event_type="_unknown",
            outcome="rejected",
        )
        == 1.0
    )


def test_auth(tmp_path: Path, maker: BatchMaker) -> None:
    c = Collector(
        CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS), token=TOKEN)
    )
    try:
        body = maker.body(maker.envelopes(END_SONG, [1]))
        status, out = post(c, body)
        assert status == 401 and "error" in out
        assert post(c, body, token="wrong")[0] == 403
        assert (
            wsgi_call(c.app, "POST", "/v1/batches", body, {"Authorization": "Basic eA=="})[0] == 403
        )
        assert wsgi_call(c.app, "GET", "/v1/report")[0] == 401
        assert part_files(tmp_path / "data") == []
        status, out = post(c, body, token=TOKEN)
        assert (status, out["accepted"]) == (200, 1)
        assert wsgi_call(c.app, "GET", "/healthz")[0] == 200  # probes need no token
    finally:
        c.shutdown()


@pytest.mark.parametrize("path", ["/v1/report", "/"])
def test_a_post_goes_through_while_a_report_is_built_and_the_report_is_of_one_moment(
    collector: Collector, maker: BatchMaker, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Building the report walks every stream and bucket: under the delivery lock, a big
    one would stall every POST for as long. Built from a copy, it still gives the numbers
    of one moment, not some from before a commit and some from after."""
    real_build = report_module.build_report
    building, proceed = threading.Event(), threading.Event()
    built: list[dict[str, Any]] = []

    def slow_build_report(state: LedgerState, **kw: Any) -> dict[str, Any]:
        building.set()
        assert proceed.wait(WAIT)
        built.append(real_build(state, **kw))
        return built[-1]

    assert post(collector, maker.body(maker.envelopes(END_SONG, range(1, 11))))[0] == 200
    monkeypatch.setattr(report_module, "build_report", slow_build_report)
    served: list[int] = []
    posted: list[tuple[int, dict[str, Any]]] = []
    reader = threading.Thread(
        target=lambda: served.append(wsgi_call(collector.app, "GET", path)[0])
    )
    more = maker.body(maker.envelopes(END_SONG, range(11, 21)))
    writer = threading.Thread(target=lambda: posted.append(post(collector, more)))
    reader.start()
    try:
        assert building.wait(WAIT)
        writer.start()
        writer.join(WAIT)
        assert posted == [(200, {"accepted": 10, "duplicates": 0, "rejected": []})]
        assert reader.is_alive()  # the report is still being built
    finally:
        proceed.set()
        reader.join(WAIT)
        if writer.ident is not None:  # started
            writer.join(WAIT)
    assert served == [200]
    (report,) = built
    (s,) = report["streams"]
    assert (report["totals"]["received"], s["received"], s["next_seq"]) == (10, 10, 11)
    assert sum(b["events"] for b in report["buckets"]) == 10
    assert sum(p["events"] for b in report["buckets"] for p in b["parts"]) == 10
    assert max(p["max_seq"] for b in report["buckets"] for p in b["producers"]) == 10
    monkeypatch.undo()
    assert json.loads(wsgi_call(collector.app, "GET", "/v1/report")[2])["totals"]["received"] == 20
