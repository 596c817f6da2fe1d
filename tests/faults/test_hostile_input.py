"""Hostile input to the collector: fuzzed bodies never crash it, never get a 5xx,
never corrupt a bucket, never write outside the data dir, and never cost unbounded
memory; the security checks (token, size limit, Avro names) hold.

Property-based (hypothesis), deterministic for CI (``derandomize=True``, no example
database). Inputs are valid wire batches mutated at random (bit flips, byte
overwrites, truncation, insertions, deletions, wrong sync markers, huge varints
where counts and lengths live) and containers built by hand from hostile parts
(codecs, schemas that are not the envelope, bad ``se.*`` metadata JSON, hostile event
type names, extreme sequence numbers and timestamps, wrong declared block counts and
sizes). They go through:

* the SDK's ``decode_batch`` and the collector's own decode path (``guard`` ->
  ``envelopes`` -> ``Ingest.parse``): only the documented errors may escape;
* the collector's WSGI app, in process: only 200/400/413 come back, a good batch
  sent after each hostile one is still accepted, and afterwards every part file
  is exactly its ledger-committed length and reads completely.

Deterministic tests around them pin what the fuzzers found or cannot reach: bombs
(zstd, deflate, declared sizes; tracemalloc peak under 64 MiB), look-alike envelope
schemas, a recursive schema with deep data, an oversized decimal, extreme sequence
numbers and timestamps, client-supplied reasons, and the security checks.

``FAULTS_FUZZ_SCALE`` multiplies the example counts (1 by default: the module runs in
about 6 s); ``FAULTS_FUZZ_RANDOM=1`` drops ``derandomize`` for exploratory runs (pass
``--hypothesis-seed=N`` to replay one).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import json
import os
import time
import tracemalloc
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from collector_faults_helpers import (
    END_SONG,
    FIXED_TS,
    PAGE_VIEW,
    BatchMaker,
    check_data_dir,
    files_outside,
    part_files,
    read_uids,
    record_for,
    snapshot_tree,
    wsgi_call,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SCHEMAS

from spotify_events.collector.app import CollectorApp, token_matches
from spotify_events.collector.buckets import avro_long
from spotify_events.collector.envelopes import decode_envelopes
from spotify_events.collector.guard import GuardError, scan_container
from spotify_events.collector.ingest import MAX_TIMESTAMP_MS, Ingest, IngestError, IngestLimits
from spotify_events.collector.report import load_report
from spotify_events.collector.server import Collector, CollectorConfig
from spotify_events.encoding import EventEncoder
from spotify_events.errors import BatchDecodeError
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import DropNotice, Envelope, WireBatch, decode_batch, is_avro_full_name

try:
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # Python < 3.14
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

pytestmark = pytest.mark.faults

SCALE = float(os.environ.get("FAULTS_FUZZ_SCALE", "1"))


def _examples(n: int) -> int:
    return max(1, int(n * SCALE))


_FUZZ: dict[str, Any] = {
    "derandomize": os.environ.get("FAULTS_FUZZ_RANDOM") != "1",
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
}
DECODER = settings(max_examples=_examples(300), **_FUZZ)
APP = settings(max_examples=_examples(200), **_FUZZ)

REGISTRY = SchemaRegistry(SCHEMAS)
MAKER = BatchMaker(REGISTRY, "fuzz-producer")
AD = "spotify.events.ads.AdImpression"
REGISTERED = sorted(s.full_name for s in (REGISTRY.get(t) for t in REGISTRY.event_types))

#: Small limits so that "too big" is reachable by the fuzzer and bombs stay cheap.
LIMITS = IngestLimits(max_body_bytes=1 << 20, max_events=2_000, max_decoded_bytes=16 << 20)
INGEST = Ingest(REGISTRY, limits=LIMITS)
MiB = 1 << 20
MAGIC = b"Obj\x01"

# -- building containers by hand ------------------------------------------------------


def _string(b: bytes) -> bytes:
    return avro_long(len(b)) + b


def _header(meta: dict[str, bytes], sync: bytes) -> bytes:
    out = MAGIC
    if meta:
        out += avro_long(len(meta))
        for k, v in meta.items():
            out += _string(k.encode()) + _string(v)
    return out + avro_long(0) + sync


def _block(count: int, data: bytes, sync: bytes, size: int | None = None) -> bytes:
    return avro_long(count) + avro_long(len(data) if size is None else size) + data + sync


def _envelope_bytes(env: Envelope) -> bytes:
    """One envelope record, encoded by hand so out-of-range values can be written too."""
    return (
        avro_long(env.seq)
        + _string(env.event_type.encode("utf-8", "surrogatepass"))
        + env.fingerprint
        + avro_long(env.timestamp)
        + _string(env.payload)
    )


def _hand_body(envs: list[Envelope], producer: bytes = b"fuzz-producer") -> bytes:
    """A null-codec wire batch written by hand (any string, even a lone surrogate)."""
    sync = b"H" * 16
    meta = {
        "avro.schema": json.dumps(ENVELOPE_JSON).encode(),
        "avro.codec": b"null",
        "se.producer_id": producer,
    }
    data = b"".join(_envelope_bytes(e) for e in envs)
    return _header(meta, sync) + _block(len(envs), data, sync)


def _compress(codec: str, data: bytes) -> bytes:
    if codec == "deflate":
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    if codec == "zstandard":
        return bytes(zstd.compress(data))
    return data


ENVELOPE_JSON = {
    "type": "record",
    "name": "Envelope",
    "namespace": "spotify_events.wire",
    "fields": [
        {"name": "seq", "type": "long"},
        {"name": "event_type", "type": "string"},
        {"name": "fingerprint", "type": {"type": "fixed", "name": "Fingerprint", "size": 8}},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "payload", "type": "bytes"},
    ],
}


def _lookalike(**field_types: Any) -> bytes:
    """An envelope-named schema with some field types replaced."""
    doc = json.loads(json.dumps(ENVELOPE_JSON))
    for f in doc["fields"]:
        if f["name"] in field_types:
            f["type"] = field_types[f["name"]]
    return json.dumps(doc).encode()


ENVELOPE = json.dumps(ENVELOPE_JSON).encode()
#: Same name as the envelope, other field types (the first three: logical types only,
#: so the same bytes on the wire as a real envelope).
LOOKALIKE = {
    "seq-timestamp-micros": _lookalike(seq={"type": "long", "logicalType": "timestamp-micros"}),
    "event-type-uuid": _lookalike(event_type={"type": "string", "logicalType": "uuid"}),
    "payload-decimal": _lookalike(
        payload={"type": "bytes", "logicalType": "decimal", "precision": 4}
    ),
    "seq-string": _lookalike(seq="string"),
    "seq-nullable": _lookalike(seq=["null", "long"]),
    "fingerprint-3-bytes": _lookalike(
        fingerprint={"type": "fixed", "name": "Fingerprint", "size": 3}
    ),
}
#: Recursive: deep nesting in the data once overflowed fastavro's C stack (SIGSEGV).
RECURSIVE = json.dumps(
    {
        "type": "record",
        "name": "Envelope",
        "namespace": "spotify_events.wire",
        "fields": [{"name": "next", "type": ["null", "Envelope"]}],
    }
).encode()
EVENT_SCHEMA = json.dumps(REGISTRY.get(END_SONG).raw).encode()  # an event, not an envelope

#: Writer schemas the hand-built containers declare; the first is the real envelope.
WRITER_SCHEMAS: list[bytes] = [
    ENVELOPE,
    *LOOKALIKE.values(),
    RECURSIVE,
    EVENT_SCHEMA,
    b'"string"',
    b'{"type": "map", "values": "long"}',
    b"{",
    b"",
    b"[" * 3000 + b"]" * 3000,
    b"\xff\xfe not utf-8",
]
CODECS = ["null", "deflate", "zstandard", "snappy", "bogus", ""]

HOSTILE_NAMES = [
    "../x",
    "../../escape",
    "/tmp/spotify-events-escape",
    "/etc/passwd",
    "..",
    ".",
    "",
    "a..b",
    "a.",
    ".a",
    "a/b",
    "a\\b",
    "C:\\x",
    "a\x00b",
    END_SONG + "\x00",
    END_SONG + "/../../x",
    "x" * 600,
    "a." * 300 + "b",
    "ünïcödé.Événement",
    "spotify.events.playback.EndSong\u202e",
    "\ud800",
    "_ledger.db",
    "spotify.events.playback.endsong",
    "spotify.events.playback.EndSong ",
]
SEQS = [0, -1, -(2**63), 2**63 - 1, 2**62, 2**31]
TIMESTAMPS = [-1, 0, MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS + 1, 2**63 - 1, -(2**63)]
HUGE = [2**62, 2**31, 2**63 - 1, -1, -(2**62), 100_001, 10**6]


def _seed_bodies() -> list[bytes]:
    es = MAKER.envelopes(END_SONG, range(1, 6))
    pv = MAKER.envelopes(PAGE_VIEW, range(1, 4))
    ad = MAKER.envelopes(AD, range(1, 3))
    return [
        MAKER.body(es, codec="zstandard"),
        MAKER.body(es + pv, codec="deflate"),
        MAKER.body(pv + ad, codec="null"),
        MAKER.body(es[:2], codec="null"),
        MAKER.body([], next_seq={END_SONG: 9}, drops=[DropNotice(END_SONG, 6, 8, 3, "full")]),
    ]


SEEDS = _seed_bodies()

# -- strategies -------------------------------------------------------------------------


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid batch with one to four random mutations."""
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "sync", "huge"]))
        pos = draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and body:
            body[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del body[pos:]
        elif op == "insert":
            body[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del body[pos : pos + draw(st.integers(1, 32))]
        elif op == "sync" and len(body) >= 16:
            sync = bytes(body[-16:])  # the last block's marker is the header's too
            where = [i for i in range(len(body) - 15) if body[i : i + 16] == sync]
            i = draw(st.sampled_from(where)) if where else len(body) - 16
            body[i : i + 16] = draw(st.binary(min_size=16, max_size=16))
        elif op == "huge":
            body[pos : pos + draw(st.integers(0, 3))] = avro_long(draw(st.sampled_from(HUGE)))
    return bytes(body)


@st.composite
def hostile_envelopes(draw: st.DrawFn) -> Envelope:
    etype = draw(st.sampled_from(REGISTERED))
    seq = draw(st.one_of(st.integers(1, 10**9), st.sampled_from(SEQS)))
    ts = draw(st.one_of(st.just(FIXED_TS), st.sampled_from(TIMESTAMPS)))
    env = MAKER.envelope(etype, seq, ts)  # the payload's id says "<producer>:<seq>"
    if draw(st.integers(0, 2)):  # keep it valid (the collector accepts it) two times in three
        return env
    what = draw(st.sampled_from(["name", "text", "fingerprint", "payload", "trailing"]))
    if what == "name":
        return env._replace(event_type=draw(st.sampled_from(HOSTILE_NAMES)))
    if what == "text":
        return env._replace(event_type=draw(st.text(max_size=40)))
    if what == "fingerprint":
        return env._replace(fingerprint=draw(st.binary(min_size=8, max_size=8)))
    if what == "payload":
        return env._replace(payload=draw(st.binary(max_size=64)))
    return env._replace(payload=env.payload + b"\x00")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids),
    max_leaves=12,
)
_NAMES = st.one_of(st.sampled_from(REGISTERED + HOSTILE_NAMES), st.text(max_size=20))
_SEQ_VALUES = st.one_of(st.integers(-5, 10**6), st.sampled_from([*SEQS, 10**30]), _JSON)


def _metadata_json() -> st.SearchStrategy[bytes]:
    next_seq = st.dictionaries(_NAMES, _SEQ_VALUES, max_size=4).map(json.dumps)
    drops = st.lists(
        st.fixed_dictionaries(
            {
                "event_type": _NAMES,
                "first_seq": _SEQ_VALUES,
                "last_seq": _SEQ_VALUES,
                "count": _SEQ_VALUES,
                "reason": st.one_of(st.text(max_size=30), _JSON),
            }
        ),
        max_size=3,
    ).map(json.dumps)
    raw = st.one_of(
        _JSON.map(json.dumps),
        st.sampled_from(["{", "[", "", "NaN", "1e999", "[" * 5000, "9" * 5000]),
    )
    return st.one_of(next_seq, drops, raw).map(lambda s: s.encode("utf-8", "surrogatepass"))


@st.composite
def hostile_containers(draw: st.DrawFn) -> bytes:
    """An Object Container assembled from parts, each one sometimes hostile, so most
    bodies carry one or two faults and many are valid (and get written)."""

    def hostile() -> bool:  # hypothesis favours small integers: 0 means "keep it valid"
        return draw(st.integers(0, 5)) == 5

    schema = draw(st.sampled_from(WRITER_SCHEMAS[1:])) if hostile() else ENVELOPE
    codec = draw(st.sampled_from(CODECS if hostile() else CODECS[:3]))
    meta: dict[str, bytes] = {"avro.schema": schema, "avro.codec": codec.encode()}
    if hostile():
        if draw(st.booleans()):  # else: missing altogether
            meta["se.producer_id"] = draw(
                st.one_of(
                    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
                    st.sampled_from([b"", b"p\x00q", b"x" * 300, b"\xff\xfe"]),
                )
            )
    else:
        meta["se.producer_id"] = b"fuzz-producer"
    for key in ("se.next_seq", "se.drops"):
        if hostile():
            meta[key] = draw(_metadata_json())
    if hostile():
        meta[draw(st.text(max_size=12))] = draw(st.binary(max_size=16))
    sync = draw(st.binary(min_size=16, max_size=16))
    body = _header(meta, sync)
    for _ in range(draw(st.integers(0, 3))):
        envs = draw(st.lists(hostile_envelopes(), max_size=6))
        data = _compress(codec, b"".join(_envelope_bytes(e) for e in envs))
        count, size, block_sync = len(envs), None, sync
        if hostile():  # one framing fault in this block
            fault = draw(st.sampled_from(["count", "size", "sync"]))
            if fault == "count":
                count = draw(st.sampled_from([0, len(envs) + 1, *HUGE]))
            elif fault == "size":
                size = draw(st.sampled_from([len(data) - 1, len(data) + 1, *HUGE]))
            else:
                block_sync = draw(st.binary(min_size=16, max_size=16))
        body += _block(count, data, block_sync, size)
    if hostile():
        body = body[: draw(st.integers(0, len(body)))]
    return body


ANY_BODY = st.one_of(mutated_bodies(), hostile_containers(), st.binary(max_size=256))
#: The app sees more hand-built containers: more of them are valid enough to be written.
APP_BODY = st.one_of(hostile_containers(), mutated_bodies(), hostile_containers())

# -- checks on what decoders return -----------------------------------------------------


def _assert_typed_envelopes(envelopes: list[Envelope]) -> None:
    for e in envelopes:
        assert type(e.seq) is int and type(e.timestamp) is int, e
        assert type(e.event_type) is str and type(e.payload) is bytes, e
        assert type(e.fingerprint) is bytes and len(e.fingerprint) == 8, e


def _assert_typed_batch(batch: WireBatch) -> None:
    assert isinstance(batch.producer_id, str)
    _assert_typed_envelopes(batch.envelopes)
    assert all(type(k) is str and type(v) is int and v >= 1 for k, v in batch.next_seq.items())
    for d in batch.drops:
        assert isinstance(d, DropNotice) and 1 <= d.first_seq <= d.last_seq
        assert d.count == d.last_seq - d.first_seq + 1


# -- (a) the decoders -------------------------------------------------------------------


@DECODER
@given(body=ANY_BODY)
def test_decode_batch_raises_only_batch_decode_error(body: bytes) -> None:
    try:
        batch = decode_batch(body, max_events=LIMITS.max_events)
    except BatchDecodeError:
        return
    _assert_typed_batch(batch)
    assert len(batch.envelopes) <= LIMITS.max_events


@DECODER
@given(body=ANY_BODY)
def test_collector_decode_path_raises_only_documented_errors(body: bytes) -> None:
    try:
        scan = scan_container(
            body, max_events=LIMITS.max_events, max_decoded_bytes=LIMITS.max_decoded_bytes
        )
    except GuardError as exc:
        assert exc.status in (400, 413)
    else:
        assert scan.records <= LIMITS.max_events
        assert scan.decoded_bytes <= LIMITS.max_decoded_bytes
        with contextlib.suppress(BatchDecodeError):
            _assert_typed_envelopes(decode_envelopes(scan.blocks))
    try:
        batch = INGEST.parse(body)
    except IngestError as exc:
        assert exc.status in (400, 413) and exc.kind
        return
    _assert_typed_envelopes(batch.events)
    for e in batch.events:  # everything ingest lets through is safe to write
        schema = REGISTRY.by_fingerprint(e.fingerprint)
        assert schema is not None and schema.full_name == e.event_type
        assert is_avro_full_name(e.event_type) and e.seq >= 1
        assert 0 <= e.timestamp <= MAX_TIMESTAMP_MS
    for r in batch.rejections:
        assert r.reason and r.event_type.isprintable() and len(r.event_type) <= 2000


# -- (b) the WSGI app -------------------------------------------------------------------


def _make_collector(data: Path, **kw: Any) -> Collector:
    return Collector(
        CollectorConfig(
            data_dir=str(data),
            schemas=str(SCHEMAS),
            max_body_bytes=LIMITS.max_body_bytes,
            max_events=LIMITS.max_events,
            max_decoded_bytes=LIMITS.max_decoded_bytes,
            **kw,
        )
    )


@pytest.fixture
def app_collector(tmp_path: Path) -> Iterator[Collector]:
    c = _make_collector(tmp_path / "data")
    yield c
    c.shutdown()


def test_app_never_5xx_never_corrupts_never_escapes(tmp_path: Path) -> None:
    root = tmp_path.parent  # pytest's base dir for this session: escapes would land here
    before = snapshot_tree(root)
    data = tmp_path / "data"
    c = _make_collector(data)
    good = BatchMaker(c.registry, "good-producer")  # a producer no hostile body claims
    good_seq = itertools.count(1)
    statuses: Counter[int] = Counter()
    hostile_accepted = 0

    @APP
    @given(body=APP_BODY)
    def run(body: bytes) -> None:
        nonlocal hostile_accepted
        status, _, out = wsgi_call(c.app, "POST", "/v1/batches", body)
        assert status in (200, 400, 413), (status, out[:300])
        doc = json.loads(out)
        if status == 200:
            assert set(doc) == {"accepted", "duplicates", "rejected"}, doc
            hostile_accepted += doc["accepted"]
        else:
            assert isinstance(doc["error"], str)
        statuses[status] += 1
        # whatever came before, the collector still takes (and keeps) good data
        seq = next(good_seq)
        body2 = good.body(good.envelopes(END_SONG, [seq]))
        status2, _, out2 = wsgi_call(c.app, "POST", "/v1/batches", body2)
        assert (status2, json.loads(out2)["accepted"]) == (200, 1), out2

    try:
        run()
    finally:
        c.shutdown()
    good_sent = next(good_seq) - 1
    # the fuzzer reached both sides: refusals, and hostile events actually written
    assert statuses[400] and statuses[200] and hostile_accepted > 0, (statuses, hostile_accepted)
    # every part file is exactly its committed length and reads completely
    check = check_data_dir(data)
    found = read_uids(data)
    assert check.records == sum(found.values())
    good_ids = Counter(
        {k: n for k, n in found.items() if k.startswith(f"{END_SONG}/good-producer:")}
    )
    assert good_ids == Counter(f"{END_SONG}/good-producer:{s}" for s in range(1, good_sent + 1))
    # hostile producers reuse ids across producer names, so for them count against the
    # ledger: one record in the buckets per (producer, type, seq) received, none twice
    report = load_report(data, now=time.time())
    assert report["totals"]["received"] == check.records
    # nothing was created outside the data dir; type directories are registered names only
    print(
        f"\nhostile app fuzz: {sum(statuses.values())} bodies, statuses {dict(statuses)}, "
        f"hostile events accepted {hostile_accepted}, good batches {good_sent}, "
        f"part files {check.parts}, records {check.records}"
    )
    assert files_outside(root, before, data) == []
    assert not Path("/tmp/spotify-events-escape").exists()
    types_on_disk = {p.name for p in data.iterdir() if p.is_dir()}
    assert types_on_disk <= set(REGISTERED)


# -- bombs and memory ---------------------------------------------------------------------


def _zstd_bomb(total: int, frames: int = 1) -> bytes:
    """``frames`` zstd frames of zeros expanding to ``total`` bytes in all, built from
    1 MiB chunks (never holding the expansion)."""
    chunk = bytes(MiB)
    comp = zstd.ZstdCompressor(level=3)
    frame = b"".join(comp.compress(chunk) for _ in range(total // frames // MiB))
    return (frame + comp.flush()) * frames


def _deflate_bomb(total: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    return b"".join(comp.compress(chunk) for _ in range(total // MiB)) + comp.flush()


def _bomb_container(codec: str, data: bytes, count: int = 1, size: int | None = None) -> bytes:
    sync = b"B" * 16
    meta = {
        "avro.schema": json.dumps(ENVELOPE_JSON).encode(),
        "avro.codec": codec.encode(),
        "se.producer_id": b"bomber",
    }
    return _header(meta, sync) + _block(count, data, sync, size)


BOMBS = {
    "zstd-1GiB-one-frame": lambda: _bomb_container("zstandard", _zstd_bomb(1024 * MiB)),
    "zstd-4GiB-in-256-frames": lambda: _bomb_container(
        "zstandard", _zstd_bomb(4096 * MiB, frames=256)
    ),
    "deflate-256MiB": lambda: _bomb_container("deflate", _deflate_bomb(256 * MiB)),
    "declared-2**62-records": lambda: _bomb_container("null", b"\x02" * 64, count=2**62),
    "declared-2**62-bytes": lambda: _bomb_container("null", b"\x02" * 64, size=2**62),
    "max-events-of-tiny-records": lambda: _bomb_container(
        "zstandard",
        bytes(zstd.compress(_envelope_bytes(Envelope(1, "a", bytes(8), 0, b"")) * 2_000)),
        count=2_000,
    ),
    "recursive-schema-deep-data": lambda: (
        _header(
            {
                "avro.schema": RECURSIVE,
                "avro.codec": b"zstandard",
                "se.producer_id": b"bomber",
            },
            b"R" * 16,
        )
        + _block(1, bytes(zstd.compress(b"\x02" * 500_000 + b"\x00")), b"R" * 16)
    ),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_with_bounded_memory(app_collector: Collector, name: str) -> None:
    body = BOMBS[name]()
    assert len(body) <= LIMITS.max_body_bytes
    tracemalloc.start()
    try:
        status, _, out = wsgi_call(app_collector.app, "POST", "/v1/batches", body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status in (200, 400, 413), out
    if name.startswith(("zstd", "deflate")):
        assert status == 413, out  # more than max_decoded_bytes: refused, not decoded
    # bounded by the configured limit, not by what the bomb claims (GiBs)
    assert peak < LIMITS.max_decoded_bytes + 48 * MiB, f"{name}: peak {peak / MiB:.1f} MiB"
    assert part_files(Path(app_collector.config.data_dir)) == []


def _lookalike_records() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Writer schemas that are not quite the envelope, each with one record that is
    well-formed *for that schema*, so decoding gets past the framing."""
    env = MAKER.envelope(END_SONG, 1)
    good = {
        "seq": 1,
        "event_type": END_SONG,
        "fingerprint": env.fingerprint,
        "timestamp": FIXED_TS,
        "payload": env.payload,
    }
    return {
        "seq-string": (LOOKALIKE["seq-string"], {**good, "seq": "1"}),
        "seq-nullable": (LOOKALIKE["seq-nullable"], {**good, "seq": None}),
        "seq-timestamp-micros": (LOOKALIKE["seq-timestamp-micros"], {**good, "seq": 1}),
        "event-type-uuid": (
            LOOKALIKE["event-type-uuid"],
            {**good, "event_type": str(uuid.UUID(int=7))},
        ),
        "fingerprint-3-bytes": (LOOKALIKE["fingerprint-3-bytes"], {**good, "fingerprint": b"abc"}),
        "payload-decimal": (LOOKALIKE["payload-decimal"], {**good, "payload": Decimal(15)}),
        "an-event-schema": (EVENT_SCHEMA, record_for(END_SONG, "not-an-envelope")),
    }


LOOKALIKES = _lookalike_records()


SAME_WIRE_BYTES = {"seq-timestamp-micros", "event-type-uuid", "payload-decimal"}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_lookalike_envelope_schemas(app_collector: Collector, name: str) -> None:
    """Before the fix a string ``seq`` reached the ledger and came back as a 503.

    A schema with the envelope's canonical form is the envelope as far as the bytes go:
    the collector reads it (ignoring logical types) and judges each event as usual.
    ``decode_batch`` refuses all of them: it would hand out a datetime as ``seq``."""
    schema_json, record = LOOKALIKES[name]
    out = io.BytesIO()
    fastavro.writer(
        out,
        fastavro.parse_schema(json.loads(schema_json), named_schemas={}),
        [record],
        codec="null",
        metadata={"se.producer_id": "lookalike"},
    )
    status, _, body = wsgi_call(app_collector.app, "POST", "/v1/batches", out.getvalue())
    if name in SAME_WIRE_BYTES:
        assert status == 200, body
    else:
        assert status == 400, body
        assert part_files(Path(app_collector.config.data_dir)) == []
    check_data_dir(Path(app_collector.config.data_dir))
    with pytest.raises(BatchDecodeError):
        decode_batch(out.getvalue())


def test_oversized_decimal_payload_is_rejected_fast(app_collector: Collector) -> None:
    """A decimal's bytes became an unbounded int, then a Decimal: quadratic. A 1 MB one
    (a few hundred bytes of zstd) held a worker thread for 100 s of CPU."""
    ad = REGISTRY.get(AD)
    record = record_for(AD, "decimal")
    record["price_micros"] = Decimal(0)  # the last field; encodes as length 1, byte 0
    zero = EventEncoder(ad).encode(record)
    assert zero.endswith(b"\x02\x00")
    payload = zero[:-2] + _string(b"\x7f" * 1_000_000)
    env = Envelope(1, AD, ad.fingerprint, FIXED_TS, payload)
    valid = MAKER.envelope(AD, 2)
    started = time.perf_counter()
    status, _, out = wsgi_call(app_collector.app, "POST", "/v1/batches", MAKER.body([env]))
    elapsed = time.perf_counter() - started
    doc = json.loads(out)
    assert status == 200 and doc["accepted"] == 0 and len(doc["rejected"]) == 1, doc
    assert elapsed < 2.0
    # a decimal within its precision is still accepted
    status, _, out = wsgi_call(app_collector.app, "POST", "/v1/batches", MAKER.body([valid]))
    assert (status, json.loads(out)["accepted"]) == (200, 1)


_TOO_FAR = "s ahead of the collector's clock"
EXTREMES = [  # (seq, timestamp, expected code and reason, or None when accepted)
    (0, FIXED_TS, ("invalid_seq", "seq must be >= 1")),
    (-1, FIXED_TS, ("invalid_seq", "seq must be >= 1")),
    (-(2**63), FIXED_TS, ("invalid_seq", "seq must be >= 1")),
    (2**63 - 1, FIXED_TS, None),
    (7, -1, ("invalid_timestamp", "timestamp -1 out of range")),
    (8, -(2**63), ("invalid_timestamp", f"timestamp {-(2**63)} out of range")),
    (
        9,
        MAX_TIMESTAMP_MS + 1,
        ("invalid_timestamp", f"timestamp {MAX_TIMESTAMP_MS + 1} out of range"),
    ),
    (10, 2**63 - 1, ("invalid_timestamp", f"timestamp {2**63 - 1} out of range")),
    # 9999-12-31T23: a bucket path can be built, but no clock is that far behind
    (11, MAX_TIMESTAMP_MS, ("too_far_in_future", _TOO_FAR)),
    (12, 0, None),  # 1970: long closed, so it lands in the current hour, counted as skewed
]


@pytest.mark.parametrize(("seq", "ts", "expected"), EXTREMES)
def test_extreme_seqs_and_timestamps(
    app_collector: Collector, seq: int, ts: int, expected: tuple[str, str] | None
) -> None:
    env = MAKER.envelope(PAGE_VIEW, seq, ts)
    status, _, out = wsgi_call(app_collector.app, "POST", "/v1/batches", _hand_body([env]))
    doc = json.loads(out)
    assert status == 200, doc
    if expected is None:
        assert (doc["accepted"], doc["rejected"]) == (1, []), doc
    else:
        code, reason = expected
        (rej,) = doc["rejected"]
        assert doc["accepted"] == 0 and (rej["event_type"], rej["seq"], rej["code"]) == (
            PAGE_VIEW,
            seq,
            code,
        )
        assert reason in rej["reason"], rej
    report = app_collector.delivery.report()  # still computable, and plain JSON
    json.dumps(report)
    streams = [x for x in report["streams"] if x["producer_id"] == "fuzz-producer"]
    if seq < 1:
        assert streams == []  # no sequence number to account it under
    else:
        (s,) = streams
        assert (s["received"], s["rejected"]) == ((1, 0) if expected is None else (0, 1))
    app_collector.shutdown()
    check_data_dir(Path(app_collector.config.data_dir))
    for path in part_files(Path(app_collector.config.data_dir)):
        assert path.relative_to(app_collector.config.data_dir).parts[0] == PAGE_VIEW


def test_client_supplied_reasons_keep_the_ledger_bounded(app_collector: Collector) -> None:
    """Rejection reasons can embed client values and drop reasons are client text: one
    stream's ledger row grew by 1.3 MB per batch of distinct reasons before the cap."""
    maker = BatchMaker(app_collector.registry, "many-reasons")
    for b in range(3):
        # 500 events whose (pre-1970) timestamps are refused, each with its own reason
        envs = [maker.envelope(END_SONG, b * 500 + i + 1, -(b * 500 + i + 1)) for i in range(500)]
        drops = [
            DropNotice(END_SONG, 10_000 + b * 200 + i, 10_000 + b * 200 + i, 1, f"{i} " * 300)
            for i in range(200)
        ]
        body = maker.body(envs, drops=drops, next_seq={})
        status, _, out = wsgi_call(app_collector.app, "POST", "/v1/batches", body)
        doc = json.loads(out)
        assert (status, doc["accepted"], len(doc["rejected"])) == (200, 0, 500), out[:300]
    stream = app_collector.delivery.state.streams[("many-reasons", END_SONG)]
    assert len(stream.to_json()) < 64 << 10
    s = next(
        x for x in app_collector.delivery.report()["streams"] if x["producer_id"] == "many-reasons"
    )
    assert (s["rejected"], s["dropped"]) == (1500, 600)  # capped reasons, exact counts
    assert sum(s["rejected_reasons"].values()) == 1500
    assert sum(s["dropped_reasons"].values()) == 600


# -- security: token, size limit, Avro names ----------------------------------------------

TOKEN = "s3cret-t0ken"


def test_token_compare_is_constant_time() -> None:
    check = inspect.getsource(CollectorApp._check_auth)
    assert "token_matches(" in check  # the one comparison, shared with the delivery worker
    source = inspect.getsource(token_matches)
    assert "hmac.compare_digest(" in source
    for text in (check, source):
        assert "== self._token" not in text and "self._token ==" not in text
        assert "== t" not in text and "given ==" not in text


def test_token_required_when_configured(tmp_path: Path) -> None:
    c = _make_collector(tmp_path / "data", token=TOKEN)
    try:
        body = MAKER.body(MAKER.envelopes(END_SONG, [1]))
        cases = {
            None: 401,
            "": 401,
            "Bearer": 403,
            "Bearer ": 403,
            f"Basic {TOKEN}": 403,
            f"Bearer {TOKEN}x": 403,
            f"Bearer {TOKEN[:-1]}": 403,
            f"Bearer {TOKEN.upper()}": 403,
            "Bearer s3cret-t0ken\x00": 403,
            "Bearer \u00e9": 403,
        }
        for header, want in cases.items():
            headers = {} if header is None else {"Authorization": header}
            for path in ("/v1/batches", "/v1/report"):
                method = "POST" if path == "/v1/batches" else "GET"
                status, hdrs, out = wsgi_call(c.app, method, path, body, headers)
                assert status == want, (header, path, out)
                if want == 401:
                    assert hdrs["WWW-Authenticate"].startswith("Bearer")
        assert part_files(tmp_path / "data") == []
        ok = {"Authorization": f"Bearer {TOKEN}"}
        status, _, out = wsgi_call(c.app, "POST", "/v1/batches", body, ok)
        assert (status, json.loads(out)["accepted"]) == (200, 1)
        status, _, _ = wsgi_call(c.app, "GET", "/v1/report", b"", ok)
        assert status == 200
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    c = _make_collector(tmp_path_factory.mktemp("auth") / "data", token=TOKEN)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def names_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    data = tmp_path_factory.mktemp("names") / "data"
    c = _make_collector(data)
    yield c
    c.shutdown()
    # only the one registered name ever became a directory, and its files are clean
    assert {p.name for p in data.iterdir() if p.is_dir()} <= {END_SONG}
    check_data_dir(data)


@settings(max_examples=_examples(60), **_FUZZ)
@given(presented=st.text(max_size=40))
def test_any_other_token_is_refused(auth_app: Collector, presented: str) -> None:
    app = auth_app
    headers = {"Authorization": f"Bearer {presented}"}
    status, _, _ = wsgi_call(app.app, "POST", "/v1/batches", b"not a batch", headers)
    if presented.strip() == TOKEN:
        assert status == 400  # authenticated; the body is then refused as undecodable
    else:
        assert status in (401, 403)


class _Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body must not be read once Content-Length is over the limit")


def test_body_size_limit(app_collector: Collector) -> None:
    limit = LIMITS.max_body_bytes
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/batches",
        "CONTENT_LENGTH": str(limit + 1),
        "wsgi.input": _Unreadable(),
    }
    got: dict[str, Any] = {}
    out = b"".join(app_collector.app(environ, lambda s, h: got.update(status=s)))
    assert got["status"].startswith("413") and json.loads(out)["error"]
    # no Content-Length (a chunked body): read at most limit + 1 bytes, then 413
    body = io.BytesIO(b"x" * (limit + 10))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/batches", "wsgi.input": body}
    out = b"".join(app_collector.app(environ, lambda s, h: got.update(status=s)))
    assert got["status"].startswith("413") and body.tell() <= limit + 1
    for bad in ("abc", "1e3", "-"):
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/v1/batches",
            "CONTENT_LENGTH": bad,
            "wsgi.input": io.BytesIO(b""),
        }
        out = b"".join(app_collector.app(environ, lambda s, h: got.update(status=s)))
        assert got["status"].startswith("400"), bad
    status, _, _ = wsgi_call(app_collector.app, "POST", "/v1/batches", b"x" * (limit + 1))
    assert status == 413


_NAME_TEXT = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(max_size=60),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,8}){0,3}", fullmatch=True),
)


@settings(max_examples=_examples(150), **_FUZZ)
@given(name=_NAME_TEXT)
def test_avro_name_check_on_event_types(names_app: Collector, name: str) -> None:
    """Only Avro full names pass, and an Avro full name is always a safe path component;
    a hostile name is rejected per event, with nothing written anywhere."""
    if is_avro_full_name(name):
        assert len(name) <= 512 and name.isascii() and name.isprintable()
        assert not any(c in name for c in "/\\\x00") and ".." not in name
        assert not name.startswith(".") and not name.endswith(".")
    env = MAKER.envelope(END_SONG, 1)._replace(event_type=name)
    status, _, out = wsgi_call(names_app.app, "POST", "/v1/batches", _hand_body([env]))
    doc = json.loads(out)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate is not UTF-8: the batch is undecodable
        assert status == 400, doc
        return
    if name == END_SONG:
        assert status == 200 and doc["rejected"] == []
        return
    assert status == 200 and doc["accepted"] == 0, doc
    (rej,) = doc["rejected"]
    if is_avro_full_name(name):
        assert rej["reason"].startswith("event_type does not match"), rej
    else:
        assert rej["reason"] == "invalid event type name", rej
        assert rej["event_type"].isprintable()
