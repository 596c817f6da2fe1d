"""Resources no request can exhaust, state no client can inflate, messages a person can act on.

Each test is an attack that took the collector down, stalled it or grew it
without bound, and now gets a bounded, specific answer: a per-event rejection
with a ``code`` (never a 5xx for something that fails the same way every time),
a 4xx for the body, or a refusal to start that names the cause. Also here: the
same sequence number arriving with a different payload (two producers sharing a
copied queue file) is a conflict the report names, not a silent duplicate.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from collector_faults_helpers import (
    END_SONG,
    PAGE_VIEW,
    BatchMaker,
    part_files,
    read_uids,
    record_for,
    wsgi_call,
)
from support import SCHEMAS

from spotify_events import wire
from spotify_events.collector.buckets import avro_long
from spotify_events.collector.ingest import Ingest
from spotify_events.collector.process import CollectorProcess
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.encoding import EventEncoder
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import (
    CONTENT_TYPE,
    ENVELOPE_SCHEMA,
    DropNotice,
    Envelope,
    WireBatch,
    encode_batch,
)

REGISTRY = SchemaRegistry(SCHEMAS)
HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(CollectorConfig(data_dir=str(tmp_path / "data"), schemas=str(SCHEMAS)))
    yield c
    c.shutdown()


def post_app(c: Collector, body: bytes, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, out = wsgi_call(c.app, "POST", "/v1/batches", body, headers)
    return status, json.loads(out)


def post_http(url: str, body: bytes, timeout: float = 30.0) -> requests.Response:
    return requests.post(
        f"{url}/v1/batches", data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=timeout
    )


def heartbeat(producer: str, next_seq: dict[str, int], drops: list[DropNotice]) -> bytes:
    return encode_batch(WireBatch(producer, [], next_seq, drops, service="t", host="h"))


# -- 7: one small batch, a thousand hours ---------------------------------------------------
def test_batch_spread_over_a_thousand_future_hours_is_refused_per_event(tmp_path: Path) -> None:
    maker = BatchMaker(REGISTRY, "hours")
    base = now_ms()
    envs = [maker.envelope(PAGE_VIEW, k, base + k * HOUR_MS) for k in range(1, 1101)]
    body = maker.body(envs)
    assert len(body) < 64 << 10
    with CollectorProcess(tmp_path / "data", SCHEMAS) as c:
        assert c.proc is not None
        r = post_http(c.url, body)
        assert r.status_code == 200, r.text
        out = r.json()
        codes = {rej["code"] for rej in out["rejected"]}
        assert codes <= {"too_far_in_future", "too_many_hours"} and out["rejected"], codes
        assert out["accepted"] + len(out["rejected"]) == 1100
        assert len(os.listdir(f"/proc/{c.proc.pid}/fd")) < 400  # part files stay bounded
        good = maker.body(maker.envelopes(PAGE_VIEW, range(2000, 2010), now_ms()))
        assert post_http(c.url, good).json()["accepted"] == 10
        assert c.alive()


def test_open_part_files_are_bounded_and_hours_per_batch_capped(tmp_path: Path) -> None:
    from spotify_events.collector.delivery import LocalDelivery
    from spotify_events.collector.seam import DeliveryConfig

    clock_now = time.time()
    d = LocalDelivery(
        tmp_path / "data",
        REGISTRY,
        config=DeliveryConfig(max_open_files=3, max_hours_per_batch=6),
        clock=lambda: clock_now,
    )
    maker = BatchMaker(REGISTRY, "lru")
    base = int(clock_now * 1000)
    try:
        for round_ in range(3):  # every round touches files the last one had to close
            envs = [
                maker.envelope(END_SONG, 100 * round_ + k, base + (k % 8) * HOUR_MS)
                for k in range(1, 17)
            ]
            batch = Ingest(REGISTRY, clock=lambda: clock_now).parse(maker.body(envs))
            result = d.deliver(batch)
            assert result.status.value == "ok"
            assert d.open_files() <= 3
            refused = [(r.seq, r.code) for r in result.rejections]
            # hours +7 and +0 come after six others: past the cap of six per batch
            assert refused == [(100 * round_ + k, "too_many_hours") for k in (7, 8, 15, 16)]
            assert result.accepted == 12
    finally:
        d.close()
    assert sum(read_uids(tmp_path / "data").values()) == 36
    assert len(part_files(tmp_path / "data")) == 6


# -- 8: a fleet of idle keep-alive clients ----------------------------------------------------
def test_150_idle_connections_do_not_stop_service(tmp_path: Path) -> None:
    maker = BatchMaker(REGISTRY, "fleet")
    with CollectorProcess(tmp_path / "data", SCHEMAS) as c:
        host, port = c.url.rsplit("/", 1)[1].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(150)]
        try:
            for i in range(3):
                body = maker.body(maker.envelopes(END_SONG, range(10 * i + 1, 10 * i + 11)))
                r = post_http(c.url, body, timeout=20)
                assert (r.status_code, r.json()["accepted"]) == (200, 10)
            assert requests.get(f"{c.url}/healthz", timeout=20).status_code == 200
        finally:
            for s in idle:
                s.close()


# -- 9: state and metrics no client can inflate -----------------------------------------------
def test_made_up_types_in_heartbeats_and_drops_create_no_state(app: Collector) -> None:
    made_up = {f"made.up.Type{i}": 1000 for i in range(1000)}
    drops = [DropNotice(f"made.up.Drop{i}", 1, 5, 5, "queue_full") for i in range(100)]
    for p in range(5):
        status, _ = post_app(app, heartbeat(f"anon-{p}", made_up, drops))
        assert status == 200
    maker = BatchMaker(REGISTRY, "anon-x")
    stray = maker.envelope(END_SONG, 1)._replace(event_type="made.up.Rejected")
    status, out = post_app(app, maker.body([stray], next_seq={}))
    assert status == 200 and len(out["rejected"]) == 1
    assert app.delivery.report()["streams"] == []  # nothing kept for types nobody registered
    status, _ = post_app(app, heartbeat("real", {END_SONG: 3}, []))
    assert [s["event_type"] for s in app.delivery.report()["streams"]] == [END_SONG]


def test_a_watermark_or_drop_notice_past_the_last_possible_number_is_refused(
    app: Collector,
) -> None:
    """A sequence number is an Avro long, so no producer has numbered past 2**63 - 1;
    JSON carries any integer, and a 400-digit watermark was taken and broke /metrics
    (503 from then on). Up to the last possible number is taken; past it, a 400 that
    names the fact."""
    huge = 10**400
    for body, fact in (
        (heartbeat("far", {END_SONG: huge}, []), "se.next_seq"),
        (heartbeat("far", {}, [DropNotice(END_SONG, 1, huge, huge, "queue_full")]), "se.drops"),
    ):
        status, out = post_app(app, body)
        assert status == 400 and fact in out["error"], out
    assert app.delivery.report()["streams"] == []
    assert post_app(app, heartbeat("edge", {END_SONG: 2**63}, []))[0] == 200
    status, text = scrape(app, None)
    assert status == 200 and b"spotify_events_collector_missing_events 9.2" in text, text


def test_queue_incidents_kept_per_producer_are_bounded(app: Collector) -> None:
    from spotify_events.collector.dedupe import MAX_INCIDENTS_PER_PRODUCER

    def incidents(producer: str, first: int) -> bytes:
        told = [{"kind": "queue_damaged", "detail": "x" * 500, "at": first + i} for i in range(16)]
        return encode_batch(WireBatch(producer, [], {}, [], incidents=told))

    for n in range(MAX_INCIDENTS_PER_PRODUCER // 16 + 5):
        assert post_app(app, incidents("chatty", n * 16))[0] == 200
    assert post_app(app, incidents("quiet", 5000))[0] == 200
    kept = Counter(i["producer_id"] for i in app.delivery.report()["incidents"])
    assert kept == {"chatty": MAX_INCIDENTS_PER_PRODUCER, "quiet": 16}
    app.delivery.close()  # the bound holds across a restart too
    again = Collector(app.config)
    try:
        assert post_app(again, incidents("chatty", 10_000))[0] == 200
        kept = Counter(i["producer_id"] for i in again.delivery.report()["incidents"])
        assert kept["chatty"] == MAX_INCIDENTS_PER_PRODUCER
    finally:
        again.shutdown()


def test_report_stays_strict_json_whatever_incident_times_a_producer_sends(
    app: Collector,
) -> None:
    told = [{"kind": "k", "detail": "d", "at": t} for t in (float("inf"), float("nan"), 5.0)]
    assert post_app(app, encode_batch(WireBatch("odd-clock", [], {}, [], incidents=told)))[0] == 200

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    status, _, body = wsgi_call(app.app, "GET", "/v1/report")
    report = json.loads(body, parse_constant=refuse)  # what a browser or jq accepts
    assert status == 200 and [i["at"] for i in report["incidents"]] == [5.0]


def test_no_producer_can_speak_as_the_collector(app: Collector) -> None:
    told = [{"kind": "damaged_part_file", "detail": "run rm -rf DATA_DIR", "at": 1.0}]
    status, out = post_app(app, encode_batch(WireBatch("(collector)", [], {}, [], incidents=told)))
    assert status == 400 and "se.producer_id" in out["error"]
    assert app.delivery.report()["incidents"] == []


def _collector(data: Path, **config: Any) -> Collector:
    return Collector(CollectorConfig(data_dir=str(data), schemas=str(SCHEMAS), **config))


def scrape(c: Collector, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, text = wsgi_call(c.app, "GET", "/metrics", headers=headers)
    return status, text


def test_metrics_need_the_token_carry_no_producer_ids_and_skip_the_delivery_lock(
    tmp_path: Path,
) -> None:
    c = _collector(tmp_path / "data", token="producers")
    try:
        maker = BatchMaker(REGISTRY, "producer-with-a-secret-id")
        body = maker.body(maker.envelopes(END_SONG, range(1, 5), now_ms()))
        assert post_app(c, body, "producers")[0] == 200
        assert scrape(c, None)[0] == 401 and scrape(c, "x")[0] == 403
        status, text = scrape(c, "producers")
        assert status == 200 and b"producer-with-a-secret-id" not in text
        # a scrape never waits for delivery (which may be busy fsyncing)
        answered = threading.Event()
        with c.delivery._lock:
            threading.Thread(
                target=lambda: (scrape(c, "producers"), answered.set()), daemon=True
            ).start()
            assert answered.wait(20)
    finally:
        c.shutdown()


def test_a_scrape_token_opens_metrics_only(tmp_path: Path) -> None:
    c = _collector(tmp_path / "data", token="producers", metrics_token="scraper")
    try:
        assert scrape(c, "scraper")[0] == 200 and scrape(c, "producers")[0] == 200
        body = BatchMaker(REGISTRY, "p").body([])
        assert post_app(c, body, "scraper")[0] == 403
    finally:
        c.shutdown()


# -- 10: schema-text caches bounded by bytes --------------------------------------------------
def test_schema_verdict_caches_hold_digests_not_texts(app: Collector) -> None:
    for i in range(70):  # distinct 30 KB schemas that are not the envelope
        fields = [{"name": f"f{i}_{j}", "type": "long"} for j in range(1000)]
        schema = {"type": "record", "name": "NotEnvelope", "fields": fields}
        meta = {
            "avro.schema": json.dumps(schema).encode(),
            "avro.codec": b"null",
            "se.producer_id": b"p",
        }
        status, _, _ = wsgi_call(app.app, "POST", "/v1/batches", _container(meta, []))
        assert status in (200, 400)
    held = sum(len(k) for k in wire._envelope_verdicts)
    assert held < 64 * 2 * 100, held


# -- 11: cheap bodies that cost a lot of CPU --------------------------------------------------
def _container(meta: dict[str, bytes], blocks: list[tuple[int, bytes]]) -> bytes:
    sync = b"S" * 16
    out = b"Obj\x01" + avro_long(len(meta))
    for k, v in meta.items():
        out += avro_long(len(k)) + k.encode() + avro_long(len(v)) + v
    out += avro_long(0) + sync
    for count, data in blocks:
        out += avro_long(count) + avro_long(len(data)) + data + sync
    return out


def _envelope_meta(codec: bytes = b"null") -> dict[str, bytes]:
    return {
        "avro.schema": json.dumps(ENVELOPE_SCHEMA).encode(),
        "avro.codec": codec,
        "se.producer_id": b"burner",
    }


def test_many_empty_blocks_are_refused_before_they_cost_cpu(app: Collector) -> None:
    body = _container(_envelope_meta(), [(0, b"")] * 50_000)
    status, out = post_app(app, body)
    assert status == 413 and "blocks" in out["error"], out


def test_huge_header_schema_is_refused_unparsed(app: Collector) -> None:
    fields = [{"name": f"f{j}", "type": "long"} for j in range(20_000)]
    meta = {
        **_envelope_meta(),
        "avro.schema": json.dumps({"type": "record", "name": "R", "fields": fields}).encode(),
    }
    status, out = post_app(app, _container(meta, []))
    assert status == 400 and "schema exceeds" in out["error"], out


# -- the same number, another payload: a conflict, not a duplicate ----------------------------
def test_same_seq_with_a_different_payload_is_a_conflict_in_the_report(app: Collector) -> None:
    encoder = EventEncoder(REGISTRY.get(END_SONG))
    ts = now_ms()

    def clone_batch(clone: str) -> bytes:
        envs = [
            Envelope(
                s,
                END_SONG,
                encoder.schema.fingerprint,
                ts,
                encoder.encode(record_for(END_SONG, f"{clone}:{s}")),
            )
            for s in range(1, 11)
        ]
        return encode_batch(WireBatch("copied-queue-id", envs, {END_SONG: 11}, []))

    assert post_app(app, clone_batch("a"))[1]["accepted"] == 10
    status, out = post_app(app, clone_batch("a"))  # a plain retry: duplicates
    assert (status, out["duplicates"], out["rejected"]) == (200, 10, [])
    status, out = post_app(app, clone_batch("b"))  # the clone's own events, same numbers
    assert status == 200 and out["duplicates"] == 0
    assert [r["code"] for r in out["rejected"]] == ["conflict"] * 10
    report = app.delivery.report()
    (stream,) = report["streams"]
    assert stream["conflicts"] == 10 and report["totals"]["conflicts"] == 10


def test_a_number_already_received_is_a_duplicate_whatever_refuses_it_now(
    tmp_path: Path,
) -> None:
    """An event taken under one setting and sent again after a stricter one (here: an
    hour ahead, then at most a minute ahead) was answered "rejected", and the producer
    dead-lettered a copy of an event the collector holds. A number the stream has
    received is a duplicate, whatever the rest of the request says; a new number with
    the same problem is still refused."""
    maker = BatchMaker(REGISTRY, "resender")
    ahead = now_ms() + 3_600_000
    lenient = _collector(tmp_path / "data", max_future_seconds=7200.0)
    try:
        status, out = post_app(lenient, maker.body(maker.envelopes(END_SONG, [1, 2], ahead)))
        assert (status, out["accepted"]) == (200, 2), out
    finally:
        lenient.shutdown()
    strict = _collector(tmp_path / "data", max_future_seconds=60.0)
    try:
        status, out = post_app(strict, maker.body(maker.envelopes(END_SONG, [1, 2, 3], ahead)))
        assert status == 200 and (out["accepted"], out["duplicates"]) == (0, 2), out
        assert [(r["seq"], r["code"]) for r in out["rejected"]] == [(3, "too_far_in_future")]
        (s,) = strict.delivery.report()["streams"]
        assert (s["received"], s["duplicates"], s["rejected"]) == (2, 2, 1)
    finally:
        strict.shutdown()


def test_numbers_out_of_order_with_gaps_cannot_grow_a_stream_past_its_range_limit(
    tmp_path: Path,
) -> None:
    """Descending numbers with gaps made one range each, every insert shifting all the
    ranges after it (170k of them took 3 s under the delivery lock) and the stream's
    ledger row grew with each. Past ``max_ranges_per_stream`` an event that would open
    a range is rejected (``too_many_ranges``; the SDK keeps it in its dead letters) and
    a drop notice that would is not recorded; numbers that join a range are still
    taken, nothing taken is lost, and an incident names the stream once."""
    c = _collector(tmp_path / "data", max_ranges_per_stream=4)
    try:
        maker = BatchMaker(REGISTRY, "scatter")
        ts = now_ms()
        status, out = post_app(c, maker.body(maker.envelopes(END_SONG, [20, 18, 16, 14, 12], ts)))
        assert status == 200 and out["accepted"] == 4, out
        assert [(r["seq"], r["code"]) for r in out["rejected"]] == [(12, "too_many_ranges")]
        status, out = post_app(
            c,
            maker.body(
                maker.envelopes(END_SONG, [21, 15, 10], ts),  # extends, bridges, opens a 4th
                drops=[DropNotice(END_SONG, 1, 5, 5, "queue_full")],  # would open a 5th
            ),
        )
        assert (status, out["accepted"], out["rejected"]) == (200, 3, []), out
        status, out = post_app(c, maker.body(maker.envelopes(END_SONG, [12, 11], ts)))
        assert status == 200 and out["accepted"] == 1, out
        assert [(r["seq"], r["code"]) for r in out["rejected"]] == [(12, "too_many_ranges")]
        (stream,) = c.delivery.state.streams.values()
        assert list(stream.received) == [(10, 11), (14, 16), (18, 18), (20, 21)]
        assert stream.marks == {}
        (s,) = c.delivery.report()["streams"]
        assert (s["received"], s["dropped"]) == (8, 0)
        incidents = [i for i in c.delivery.report()["incidents"] if i["kind"] == "too_many_ranges"]
        assert len(incidents) == 1 and "'scatter'" in incidents[0]["detail"]
        assert read_uids(tmp_path / "data") == Counter(
            f"{END_SONG}/scatter:{n}" for n in (10, 11, 14, 15, 16, 18, 20, 21)
        )
    finally:
        c.shutdown()


# -- 13: messages -----------------------------------------------------------------------------
def run_cli(*args: str, prelude: str = "", timeout: float = 30.0) -> tuple[int | None, str, str]:
    """``spotify-events ARGS`` in a child (after ``prelude``); (code, stdout, stderr)."""
    code = f"import sys\n{prelude}\nfrom spotify_events.cli import main\nmain(sys.argv[1:])"
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return None, out, err
        return proc.returncode, out, err


def test_unusable_data_dir_names_the_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "_ledger.db").mkdir(parents=True)  # the ledger's place is taken by a directory
    code, _, err = run_cli(
        "collector", "--port", "0", "--data-dir", str(data), "--schemas", str(SCHEMAS)
    )
    assert code not in (None, 0) and "Traceback" not in err, err
    assert str(data / "_ledger.db") in err, err


def test_listening_on_all_interfaces_without_a_token_warns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "_ledger.db").write_bytes(b"garbage " * 100)  # so it stops before binding
    code, _, err = run_cli(
        "collector",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--data-dir",
        str(data),
        "--schemas",
        str(SCHEMAS),
    )
    assert code not in (None, 0), err
    assert "without --token" in err, err


@pytest.mark.parametrize("command", ["collector", "demo"])
def test_commands_without_the_collector_extra_say_what_to_install(
    tmp_path: Path, command: str
) -> None:
    args = ["--data-dir", str(tmp_path / "d"), "--schemas", str(SCHEMAS)]
    code, _, err = run_cli(
        command,
        *(args if command == "collector" else ["-n", "1"]),
        prelude="sys.modules['waitress'] = None",
    )
    assert code not in (None, 0), err
    assert "Traceback" not in err and "pip install 'spotify-events[collector]'" in err, err


def test_log_level_help_matches_its_choices() -> None:
    code, out, _ = run_cli("collector", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "[debug|info|warning|error]" in text and "default: warning" in text, text
