"""Avro encoding: single events (round trips, validation errors) and the wire batch codec."""

from __future__ import annotations

import io
import json
import random
import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sdk_helpers import VALID_RECORDS

from spotify_events.encoding import EventEncoder, decode_event
from spotify_events.errors import BatchDecodeError, EventTooLargeError, EventValidationError
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import (
    ENVELOPE_SCHEMA,
    DropNotice,
    Envelope,
    WireBatch,
    decode_batch,
    encode_batch,
    is_avro_full_name,
)

EXAMPLE_SCHEMAS = ["EndSong", "PageView", "SearchQuery", "AdImpression", "ServiceCall"]
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- strategies --------------------------------------------------------------------


def _value(schema: Any) -> st.SearchStrategy[Any]:
    """Values valid for a parsed Avro schema (the subset the example schemas use)."""
    if isinstance(schema, list):
        return st.one_of([_value(branch) for branch in schema])
    if isinstance(schema, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "string": st.text(max_size=40),
            "bytes": st.binary(max_size=40),
        }
        return primitives[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "decimal":
        limit = 10 ** schema["precision"] - 1
        return st.integers(-limit, limit).map(lambda i: Decimal(i).scaleb(-schema.get("scale", 0)))
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_value(schema["items"]), max_size=5)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), _value(schema["values"]), max_size=5)
    if kind == "record":
        required = {f["name"]: _value(f["type"]) for f in schema["fields"] if "default" not in f}
        optional = {f["name"]: _value(f["type"]) for f in schema["fields"] if "default" in f}
        return st.fixed_dictionaries(required, optional=optional)
    return _value(kind)


def _with_defaults(schema: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f["name"]: record[f["name"]] if f["name"] in record else f["default"]
        for f in schema["fields"]
    }


@st.composite
def typed_records(draw: st.DrawFn, registry: SchemaRegistry) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(EXAMPLE_SCHEMAS))
    return name, draw(_value(registry.get(name).parsed))


event_types = st.from_regex(
    r"[a-z][a-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,8}){0,3}", fullmatch=True
)
# realistic event times, including before 1970 and past 2100 (timestamp-millis)
timestamps = st.integers(-(2**41), 2**42)
envelopes = st.builds(
    Envelope,
    seq=st.integers(1, 2**63 - 1),
    event_type=event_types,
    fingerprint=st.binary(min_size=8, max_size=8),
    timestamp=timestamps,
    payload=st.binary(max_size=200),
)


@st.composite
def drop_notices(draw: st.DrawFn) -> DropNotice:
    first = draw(st.integers(1, 2**40))
    count = draw(st.integers(1, 10**6))
    return DropNotice(
        draw(event_types), first, first + count - 1, count, draw(st.text(max_size=30))
    )


wire_batches = st.builds(
    WireBatch,
    producer_id=st.uuids().map(str),
    envelopes=st.lists(envelopes, max_size=30),
    next_seq=st.dictionaries(event_types, st.integers(1, 2**63 - 1), max_size=5),
    drops=st.lists(drop_notices(), max_size=5),
    service=st.text(max_size=20),
    host=st.text(max_size=20),
    sdk_version=st.text(max_size=10),
)


def _sample_batch(n: int = 20) -> WireBatch:
    return WireBatch(
        producer_id="8d1f7e0c-7b44-4c38-9d2b-0a8c53f0b0a1",
        envelopes=[
            Envelope(
                i, "spotify.events.playback.EndSong", b"\x01" * 8, 1_763_158_400_000 + i, b"p" * i
            )
            for i in range(1, n + 1)
        ],
        next_seq={"spotify.events.playback.EndSong": n + 6},
        drops=[DropNotice("spotify.events.playback.EndSong", n + 1, n + 5, 5, "queue_full")],
        service="playback-api",
        host="host-1",
        sdk_version="0.1.0",
    )


# -- single events -------------------------------------------------------------------


@HYPOTHESIS
@given(data=st.data())
def test_event_round_trip(registry: SchemaRegistry, data: st.DataObject) -> None:
    name, record = data.draw(typed_records(registry))
    schema = registry.get(name)
    payload = EventEncoder(schema).encode(record)
    assert decode_event(schema, payload) == _with_defaults(schema.parsed, record)


def test_encode_sample(registry: SchemaRegistry, end_song_record: dict[str, Any]) -> None:
    schema = registry.get("EndSong")
    payload = EventEncoder(schema).encode(end_song_record)
    # fastavro with the unparsed schema writes the same bytes
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, dict(schema.raw), end_song_record)
    assert payload == buf.getvalue()
    assert decode_event(schema, payload) == end_song_record


def test_optional_fields_take_defaults(
    registry: SchemaRegistry, end_song_record: dict[str, Any]
) -> None:
    for key in ("shuffle", "offline", "context_uri", "conn_country"):
        del end_song_record[key]
    schema = registry.get("EndSong")
    decoded = decode_event(schema, EventEncoder(schema).encode(end_song_record))
    assert decoded["shuffle"] is False and decoded["context_uri"] is None


BAD_RECORDS: dict[str, tuple[str, dict[str, Any], str]] = {
    # id: (event type, changes to a valid record (None value = delete the field), field named)
    "wrong-type-string": ("EndSong", {"user_id": 5}, "user_id"),
    "wrong-type-long": ("EndSong", {"ms_played": "31000"}, "ms_played"),
    "long-out-of-range": ("EndSong", {"ms_played": 2**63}, "ms_played"),
    "missing-required": ("EndSong", {"track_id": None}, "track_id"),
    "null-for-required": ("EndSong", {"platform": ...}, "platform"),
    "unknown-field": ("EndSong", {"skipped": True}, "skipped"),
    "bad-enum-symbol": ("EndSong", {"reason_end": "EXPLODED"}, "reason_end"),
    "union-wrong-branch": ("EndSong", {"context_uri": 17}, "context_uri"),
    "int-out-of-32-bit": ("PageView", {"load_ms": 2**31}, "load_ms"),
    "int-below-32-bit": ("PageView", {"load_ms": -(2**31) - 1}, "load_ms"),
    "nullable-int-out-of-range": ("SearchQuery", {"clicked_position": 2**40}, "clicked_position"),
    "map-value-wrong-type": ("PageView", {"viewport": {"width": "wide"}}, "viewport"),
    "map-value-out-of-range": ("PageView", {"viewport": {"width": 2**33}}, "viewport"),
    "array-item-wrong-type": ("SearchQuery", {"result_types": ["track", 7]}, "result_types"),
    "enum-wrong-type": ("ServiceCall", {"outcome": 1}, "outcome"),
    "decimal-wrong-type": ("AdImpression", {"price_micros": "1.5"}, "price_micros"),
    "list-for-map": ("PageView", {"viewport": ["width"]}, "viewport"),
    "non-string-map-key": ("PageView", {"viewport": {1: 1280}}, "viewport"),
}


def _mutate(event_type: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    record = dict(VALID_RECORDS[event_type])
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = None if value is ... else value
    return record


@pytest.mark.parametrize("name", VALID_RECORDS)
def test_valid_records_encode(registry: SchemaRegistry, name: str) -> None:
    schema = registry.get(name)
    record = VALID_RECORDS[name]
    decoded = decode_event(schema, EventEncoder(schema).encode(record))
    assert decoded == _with_defaults(schema.parsed, record)
    assert all(type(decoded[k]) is type(v) for k, v in record.items())  # True stays a bool


@pytest.mark.parametrize(
    ("event_type", "changes", "field"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys()
)
def test_validation_error_names_type_and_field(
    registry: SchemaRegistry, event_type: str, changes: dict[str, Any], field: str
) -> None:
    schema = registry.get(event_type)
    with pytest.raises(EventValidationError) as err:
        EventEncoder(schema).encode(_mutate(event_type, changes))
    error = err.value
    assert isinstance(error, ValueError)
    assert error.event_type == schema.full_name
    assert error.field == field
    assert schema.full_name in str(error) and field in str(error)
    assert error.errors and all(isinstance(e, str) for e in error.errors)


# Values that fastavro's writer coerces instead of refusing: the fast path in
# EventEncoder.encode only range-checks top-level ints, so these reach the queue as
# *different* data (True -> 1, 1.5 -> 1, "yes" -> true, "abc" -> ["a", "b", "c"]).
SILENTLY_COERCED: dict[str, tuple[str, dict[str, Any], str]] = {
    "float-for-long": ("EndSong", {"ms_played": 3.5}, "ms_played"),
    "bool-for-int": ("SearchQuery", {"result_count": True}, "result_count"),
    "float-for-int": ("SearchQuery", {"result_count": 1.5}, "result_count"),
    "string-for-boolean": ("EndSong", {"shuffle": "yes"}, "shuffle"),
    "int-for-boolean": ("EndSong", {"offline": 1}, "offline"),
    "string-for-double": ("ServiceCall", {"duration_ms": "1.5"}, "duration_ms"),
    "bool-for-double": ("ServiceCall", {"duration_ms": True}, "duration_ms"),
    "string-for-array": ("SearchQuery", {"result_types": "abc"}, "result_types"),
    "bool-for-nullable-int": ("SearchQuery", {"clicked_position": True}, "clicked_position"),
}


@pytest.mark.parametrize(
    ("event_type", "changes", "field"), SILENTLY_COERCED.values(), ids=SILENTLY_COERCED.keys()
)
def test_wrong_type_is_refused_not_coerced(
    registry: SchemaRegistry, event_type: str, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(EventValidationError) as err:
        EventEncoder(registry.get(event_type)).encode(_mutate(event_type, changes))
    assert err.value.field == field


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user_id": 5}, "user_id: expected string, got int 5"),  # refused by the writer
        ({"ms_played": "x" * 58}, f"ms_played: expected int (64-bit), got str {'x' * 58!r}"),
        ({"ms_played": "x" * 59}, f"ms_played: expected int (64-bit), got str '{'x' * 56}..."),
    ],
    ids=["writer-refusal", "value-shown-whole", "long-value-shortened"],
)
def test_error_message_says_what_was_expected_and_what_came(
    registry: SchemaRegistry, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(EventValidationError) as err:
        EventEncoder(registry.get("EndSong")).encode(_mutate("EndSong", changes))
    assert err.value.errors == [message]


def test_a_map_key_that_is_not_a_string_is_named(registry: SchemaRegistry) -> None:
    with pytest.raises(EventValidationError) as err:
        EventEncoder(registry.get("PageView")).encode(_mutate("PageView", {"viewport": {7: 1}}))
    assert err.value.errors == ["viewport[7]: map keys must be strings"]


def test_not_a_mapping(registry: SchemaRegistry) -> None:
    with pytest.raises(EventValidationError, match="mapping"):
        EventEncoder(registry.get("EndSong")).encode(["user_id", "u1"])  # type: ignore[arg-type]


def test_event_too_large(registry: SchemaRegistry, end_song_record: dict[str, Any]) -> None:
    schema = registry.get("EndSong")
    size = len(EventEncoder(schema).encode(end_song_record))
    assert EventEncoder(schema, max_event_bytes=size).encode(
        end_song_record
    )  # exactly at the limit
    with pytest.raises(EventTooLargeError) as err:
        EventEncoder(schema, max_event_bytes=size - 1).encode(end_song_record)
    assert isinstance(err.value, EventValidationError) and isinstance(err.value, ValueError)
    assert (err.value.size, err.value.limit) == (size, size - 1)
    assert err.value.event_type == schema.full_name
    huge = dict(end_song_record, user_id="x" * (1 << 20))
    with pytest.raises(EventTooLargeError):
        EventEncoder(schema).encode(huge)  # default limit 1 MiB


def test_avro_full_name() -> None:
    assert is_avro_full_name("spotify.events.playback.EndSong")
    assert is_avro_full_name("_x")
    for bad in ("", "1a", "a..b", "a.", "../etc/passwd", "a/b", "a b", "a" * 513, "a\n"):
        assert not is_avro_full_name(bad), bad


# -- wire batches ----------------------------------------------------------------------


@HYPOTHESIS
@given(batch=wire_batches, codec=st.sampled_from(["zstandard", "deflate", "null"]))
def test_wire_batch_round_trip(batch: WireBatch, codec: str) -> None:
    assert decode_batch(encode_batch(batch, codec=codec)) == batch


def test_timestamp_round_trip_is_exact() -> None:
    # 24 in 2000 random millisecond timestamps came back one millisecond early when the
    # decoder went through float seconds (datetime.timestamp() * 1000)
    rnd = random.Random(7)
    stamps = [1_763_158_400_123, 1_700_000_000_001, -1, -1001, 0] + [
        rnd.randrange(0, 2**42) for _ in range(2000)
    ]
    batch = WireBatch(
        "p", [Envelope(i + 1, "a.B", b"\0" * 8, ts, b"") for i, ts in enumerate(stamps)]
    )
    assert [e.timestamp for e in decode_batch(encode_batch(batch)).envelopes] == stamps


#: The first and last millisecond of years 1 and 9999: what a timestamp-millis decodes to.
FIRST_MS, LAST_MS = -62_135_596_800_000, 253_402_300_799_999


@pytest.mark.parametrize("ts", [FIRST_MS, LAST_MS, 0, -1])
def test_timestamps_within_years_1_to_9999_round_trip(ts: int) -> None:
    good = Envelope(1, "a.B", b"\0" * 8, 1_763_158_400_000, b"")
    batch = WireBatch("p", [good, good._replace(seq=2, timestamp=ts)])
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize("ts", [LAST_MS + 1, FIRST_MS - 1, 2**62, -(2**62), 2**63 - 1])
def test_a_timestamp_no_reader_can_decode_is_refused_before_encoding(ts: int) -> None:
    good = Envelope(1, "a.B", b"\0" * 8, 1_763_158_400_000, b"")
    batch = WireBatch("p", [good, good._replace(seq=2, timestamp=ts)])
    with pytest.raises(
        ValueError, match=rf"^a\.B seq 2: timestamp {ts} ms is outside years 1-9999$"
    ):
        encode_batch(batch)


def test_heartbeat_is_an_empty_batch() -> None:
    batch = WireBatch("p", next_seq={"a.B": 7})
    decoded = decode_batch(encode_batch(batch))
    assert decoded.envelopes == [] and decoded.next_seq == {"a.B": 7}


def test_any_avro_reader_can_read_a_batch() -> None:
    batch = _sample_batch()
    body = encode_batch(batch)
    reader = fastavro.reader(io.BytesIO(body))
    assert reader.codec == "zstandard"
    assert reader.writer_schema["name"] == "spotify_events.wire.Envelope"
    meta = reader.metadata
    assert meta["se.producer_id"] == batch.producer_id
    assert json.loads(meta["se.next_seq"]) == batch.next_seq
    assert json.loads(meta["se.drops"]) == [d.to_json() for d in batch.drops]
    assert (meta["se.service"], meta["se.host"], meta["se.sdk_version"]) == (
        "playback-api",
        "host-1",
        "0.1.0",
    )
    records = list(reader)
    assert [r["seq"] for r in records] == [e.seq for e in batch.envelopes]
    assert [r["payload"] for r in records] == [e.payload for e in batch.envelopes]
    assert all(r["event_type"] == "spotify.events.playback.EndSong" for r in records)


def test_max_events_bounds_decoding() -> None:
    body = encode_batch(_sample_batch(20))
    assert len(decode_batch(body, max_events=20).envelopes) == 20
    with pytest.raises(BatchDecodeError, match="more than 19"):
        decode_batch(body, max_events=19)


def test_foreign_container_is_refused() -> None:
    out = io.BytesIO()
    fastavro.writer(
        out,
        {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]},
        [{"a": 1}],
    )
    with pytest.raises(BatchDecodeError, match="Envelope"):
        decode_batch(out.getvalue())
    # a container of primitives: writer_schema is a str, not a dict
    out = io.BytesIO()
    fastavro.writer(out, "string", ["x"])
    with pytest.raises(BatchDecodeError):
        decode_batch(out.getvalue())


def _drop(**changes: Any) -> dict[str, Any]:
    notice = {
        "event_type": "a.B",
        "first_seq": 1,
        "last_seq": 2,
        "count": 2,
        "reason": "queue_full",
    }
    return {**notice, **changes}


def _container_with_meta(**meta: str) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, ENVELOPE_SCHEMA, [], metadata=meta)
    return out.getvalue()


@pytest.mark.parametrize(
    "meta",
    [
        {},  # no producer id
        {"se.producer_id": "p", "se.next_seq": "[1]"},
        {"se.producer_id": "p", "se.next_seq": '{"a.B": 0}'},
        {"se.producer_id": "p", "se.next_seq": '{"a.B": "3"}'},
        {"se.producer_id": "p", "se.next_seq": "{"},
        {"se.producer_id": "p", "se.drops": "{}"},
        {"se.producer_id": "p", "se.drops": '[{"event_type": "a.B"}]'},
        {
            "se.producer_id": "p",
            "se.drops": json.dumps(
                [{"event_type": "a.B", "first_seq": 5, "last_seq": 4, "count": 0, "reason": "x"}]
            ),
        },
        {
            "se.producer_id": "p",
            "se.drops": json.dumps(
                [{"event_type": "a.B", "first_seq": 0, "last_seq": 4, "count": 5, "reason": "x"}]
            ),
        },
        {"se.producer_id": "p", "se.drops": "[null]"},
        # JSON true is not a sequence number
        {"se.producer_id": "p", "se.next_seq": '{"a.B": true}'},
        # a count that disagrees with its range would skew the loss report
        {
            "se.producer_id": "p",
            "se.drops": json.dumps([_drop(first_seq=1, last_seq=1, count=10**9)]),
        },
        {"se.producer_id": "p", "se.drops": json.dumps([_drop(first_seq="1", last_seq="2")])},
        {"se.producer_id": "p", "se.drops": json.dumps([_drop(first_seq=1.5, last_seq=2.5)])},
        {
            "se.producer_id": "p",
            "se.drops": json.dumps([_drop(first_seq=True, last_seq=True, count=1)]),
        },
        {"se.producer_id": "p", "se.drops": json.dumps([_drop(event_type=None)])},
    ],
)
def test_bad_metadata_is_a_batch_decode_error(meta: dict[str, str]) -> None:
    with pytest.raises(BatchDecodeError):
        decode_batch(_container_with_meta(**meta))


def _decodes_or_refuses(body: bytes) -> WireBatch | None:
    """The codec's contract on hostile input: a WireBatch, or BatchDecodeError; nothing else."""
    try:
        return decode_batch(body, max_events=10_000)
    except BatchDecodeError:
        return None


@HYPOTHESIS
@given(body=st.binary(max_size=2000))
def test_garbage_is_a_batch_decode_error(body: bytes) -> None:
    assume(not body.startswith(b"Obj\x01"))
    with pytest.raises(BatchDecodeError):
        decode_batch(body)


@HYPOTHESIS
@given(junk=st.binary(max_size=300))
def test_avro_magic_then_garbage(junk: bytes) -> None:
    _decodes_or_refuses(b"Obj\x01" + junk)


VALID_BODIES = {
    codec: encode_batch(_sample_batch(), codec=codec) for codec in ("zstandard", "deflate", "null")
}


@HYPOTHESIS
@given(codec=st.sampled_from(sorted(VALID_BODIES)), data=st.data())
def test_truncated_batch(codec: str, data: st.DataObject) -> None:
    body = VALID_BODIES[codec]
    cut = data.draw(st.integers(0, len(body) - 1))
    decoded = _decodes_or_refuses(body[:cut])
    if decoded is not None:  # a cut on a block boundary may leave a shorter valid file
        original = _sample_batch().envelopes
        assert decoded.envelopes == original[: len(decoded.envelopes)]


@HYPOTHESIS
@given(
    codec=st.sampled_from(sorted(VALID_BODIES)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flipped_batch(codec: str, flips: list[tuple[int, int]]) -> None:
    body = bytearray(VALID_BODIES[codec])
    for position, bit in flips:
        body[position % len(body)] ^= 1 << bit
    _decodes_or_refuses(bytes(body))


def test_huge_declared_lengths_do_not_escape_as_other_errors() -> None:
    body = bytearray(VALID_BODIES["null"])
    header_end = body.index(b"\0", 4)  # somewhere in the header map
    for position in range(4, min(len(body), header_end + 64)):
        for value in (0x7F, 0xFF, 0x80, 0x01):
            mutated = bytearray(body)
            mutated[position] = value
            _decodes_or_refuses(bytes(mutated))


def test_private_fastavro_writer_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro's compiled ``write_data`` lives in a private module; a fastavro without
    it (or with another signature) must leave the public writer in charge, not break
    the import of the SDK."""
    from spotify_events import encoding

    assert encoding._probe_write_data() is not None  # the tested fastavro range has it
    monkeypatch.setitem(sys.modules, "fastavro._write", None)  # import now raises
    assert encoding._probe_write_data() is None
