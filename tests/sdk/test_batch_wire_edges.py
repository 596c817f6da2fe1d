"""The wire batch codec at its edges: what a body written by another Avro tool decodes
to, the facts a batch carries besides its events, and look-alike envelopes.

A wire batch is an Avro object container, so any Avro writer can produce one
(docs/architecture.md, "Wire format"). The collector must read such a body the
same way it reads the SDK's, and refuse what it cannot account for with
BatchDecodeError (a 400), never with another exception (a 503, retried forever).
"""

from __future__ import annotations

import io
import json
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from spotify_events.container import container
from spotify_events.errors import BatchDecodeError
from spotify_events.wire import (
    ENVELOPE_SCHEMA,
    DropNotice,
    Envelope,
    WireBatch,
    decode_batch,
    encode_batch,
)

TS = 1_763_158_400_123
DROP = {"event_type": "a.B", "first_seq": 1, "last_seq": 2, "count": 2, "reason": "queue_full"}
GOOD = {"seq": 1, "event_type": "a.B", "fingerprint": b"\1" * 8, "timestamp": TS, "payload": b"p"}


def _envelope_schema(**field_types: Any) -> dict[str, Any]:
    """The envelope schema with some field types replaced (same canonical form when
    only logical types are added)."""
    fields = [
        {"name": "seq", "type": "long"},
        {"name": "event_type", "type": "string"},
        {"name": "fingerprint", "type": {"type": "fixed", "name": "Fingerprint", "size": 8}},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "payload", "type": "bytes"},
    ]
    for f in fields:
        f["type"] = field_types.get(f["name"], f["type"])
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": "spotify_events.wire",
        "fields": fields,
    }


def _container(
    records: list[dict[str, Any]],
    schema: Any = ENVELOPE_SCHEMA,
    codec: str = "null",
    **meta: str,
) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, schema, records, codec=codec, metadata=meta)
    return out.getvalue()


def test_incidents_travel_with_the_batch_and_are_absent_when_there_are_none() -> None:
    incidents = [{"kind": "queue_file_lost", "at": 1.5}, {"kind": "other", "detail": "x"}]
    batch = WireBatch("p", next_seq={"a.B": 3}, incidents=incidents)
    body = encode_batch(batch)
    assert decode_batch(body).incidents == incidents
    assert json.loads(fastavro.reader(io.BytesIO(body)).metadata["se.incidents"]) == incidents
    quiet = encode_batch(WireBatch("p", next_seq={"a.B": 3}))
    assert "se.incidents" not in fastavro.reader(io.BytesIO(quiet)).metadata
    assert decode_batch(quiet).incidents == []


def test_a_batch_from_another_avro_writer_needs_only_the_producer_id() -> None:
    body = _container([GOOD], **{"se.producer_id": "p"})
    assert decode_batch(body) == WireBatch(
        producer_id="p",
        envelopes=[Envelope(1, "a.B", b"\1" * 8, TS, b"p")],
        next_seq={},
        drops=[],
        service="",
        host="",
        sdk_version="",
        incidents=[],
    )


def test_every_batch_fact_is_read_back_from_its_own_key() -> None:
    drop = DropNotice("a.B", 2, 4, 3, "queue_full")
    body = _container(
        [GOOD],
        codec="deflate",
        **{
            "se.producer_id": "p",
            "se.next_seq": '{"a.B":5,"c.D":1}',
            "se.drops": json.dumps([drop.to_json()]),
            "se.service": "svc",
            "se.host": "h",
            "se.sdk_version": "9.9",
            "se.incidents": '[{"kind":"k"}]',
        },
    )
    decoded = decode_batch(body)
    assert decoded.next_seq == {"a.B": 5, "c.D": 1}
    assert decoded.drops == [drop]
    assert (decoded.service, decoded.host, decoded.sdk_version) == ("svc", "h", "9.9")
    assert decoded.incidents == [{"kind": "k"}]


@pytest.mark.parametrize("codec", ["bzip2", "xz"])
def test_a_codec_outside_the_wire_contract_is_refused_by_name(codec: str) -> None:
    body = _container([GOOD], codec=codec, **{"se.producer_id": "p"})
    with pytest.raises(BatchDecodeError, match=rf"^unsupported codec '{codec}'$"):
        decode_batch(body)


@pytest.mark.parametrize("incidents", ["{}", "[1]", '[{"a": 1}, "x"]'])
def test_incidents_that_are_not_a_list_of_objects_are_refused(incidents: str) -> None:
    body = _container([], **{"se.producer_id": "p", "se.incidents": incidents})
    with pytest.raises(BatchDecodeError, match=r"se\.incidents must be a JSON list of objects"):
        decode_batch(body)


@pytest.mark.parametrize("codec", ["null", "deflate", "zstandard"])
def test_a_block_holding_more_records_than_it_declares_is_refused(codec: str) -> None:
    """fastavro reads as many records as a block declares and ignores the rest of it:
    three envelopes under a count of one decoded as one, so the SDK's tools (and any
    reader of a captured batch) saw a batch the collector refuses. Both read records
    through one reader, which refuses the body."""
    records = io.BytesIO()
    for seq in (1, 2, 3):
        fastavro.schemaless_writer(records, ENVELOPE_SCHEMA, {**GOOD, "seq": seq})
    schema = json.dumps(_envelope_schema())
    meta = {"se.producer_id": "p"}
    honest = container(schema, meta, [(3, records.getvalue())], codec)
    assert [e.seq for e in decode_batch(honest).envelopes] == [1, 2, 3]
    lying = container(schema, meta, [(1, records.getvalue())], codec)
    with pytest.raises(BatchDecodeError, match="bytes past its 1 records"):
        decode_batch(lying)


def test_the_lowest_sequence_number_1_is_a_valid_watermark() -> None:
    body = _container([], **{"se.producer_id": "p", "se.next_seq": '{"a.B": 1}'})
    assert decode_batch(body).next_seq == {"a.B": 1}


@pytest.mark.parametrize(
    ("field", "logical", "value"),
    [
        ("seq", {"type": "long", "logicalType": "timestamp-micros"}, TS * 1000),
        ("event_type", {"type": "string", "logicalType": "uuid"}, str(uuid.UUID(int=7))),
        (
            "payload",
            {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 0},
            Decimal(1),
        ),
    ],
)
def test_a_look_alike_envelope_whose_fields_decode_to_other_types_is_refused(
    field: str, logical: dict[str, Any], value: Any
) -> None:
    """Same canonical form as the envelope, but a logical type turns the field into a
    datetime, a UUID or a Decimal on read."""
    schema = _envelope_schema(**{field: logical})
    body = _container([{**GOOD, field: value}], schema, **{"se.producer_id": "p"})
    with pytest.raises(
        BatchDecodeError, match=r"^envelope fields do not have the spotify_events\.wire\.Envelope"
    ):
        decode_batch(body)


def test_a_local_timestamp_is_read_as_utc_milliseconds() -> None:
    """A writer that declares the event time as local-timestamp-millis (a naive datetime
    on read) gets the same milliseconds back, not shifted by the reader's zone."""
    schema = _envelope_schema(timestamp={"type": "long", "logicalType": "local-timestamp-millis"})
    body = _container([GOOD], schema, **{"se.producer_id": "p"})
    assert decode_batch(body).envelopes == [Envelope(1, "a.B", b"\1" * 8, TS, b"p")]


def test_a_timestamp_declared_as_a_plain_long_is_read_as_milliseconds() -> None:
    """The canonical form ignores logical types, so another writer may leave out
    timestamp-millis; its timestamp is then read as an int, and means the same."""
    body = _container([GOOD], _envelope_schema(timestamp="long"), **{"se.producer_id": "p"})
    assert decode_batch(body).envelopes == [Envelope(1, "a.B", b"\1" * 8, TS, b"p")]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, r"^container metadata lacks 'se\.producer_id'$"),
        (
            {"se.next_seq": '{"a.B": 0}'},
            r"^se\.next_seq must map event types to sequence numbers from 1 to 2\*\*63$",
        ),
        (
            {"se.next_seq": json.dumps({"a.B": 2**63 + 1})},
            r"^se\.next_seq must map event types to sequence numbers from 1 to 2\*\*63$",
        ),
        (
            {"se.drops": json.dumps([{**DROP, "last_seq": 2**63, "count": 2**63}])},
            rf"^bad drop notice in se\.drops: drop notice with bad range 1\.\.{2**63}$",
        ),
        ({"se.drops": "{}"}, r"^se\.drops must be a JSON list$"),
        ({"se.drops": "[{}]"}, r"^bad drop notice in se\.drops: 'event_type'$"),
        (
            {"se.drops": json.dumps([{**DROP, "reason": 7}])},
            r"^bad drop notice in se\.drops: drop notice event_type and reason must be strings$",
        ),
        (
            {"se.drops": json.dumps([{**DROP, "count": 2.0}])},
            r"^bad drop notice in se\.drops: drop notice first_seq, last_seq and count must be "
            r"integers$",
        ),
        (
            {"se.drops": json.dumps([{**DROP, "first_seq": 3, "count": 0}])},
            r"^bad drop notice in se\.drops: drop notice with bad range 3\.\.2$",
        ),
        (
            {"se.drops": json.dumps([{**DROP, "count": 3}])},
            r"^bad drop notice in se\.drops: drop notice count 3 does not match its range 1\.\.2$",
        ),
    ],
)
def test_a_refused_batch_says_which_fact_is_wrong(meta: dict[str, str], message: str) -> None:
    """The collector answers 400 with this text: the producer's operator reads it."""
    body = _container([], **({"se.producer_id": "p"} if meta else {}), **meta)
    with pytest.raises(BatchDecodeError, match=message):
        decode_batch(body)


def test_a_container_of_other_records_is_refused_by_name() -> None:
    other = {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]}
    body = _container([{"a": 1}], other, **{"se.producer_id": "p"})
    with pytest.raises(
        BatchDecodeError,
        match=r"^container does not hold spotify_events\.wire\.Envelope records$",
    ):
        decode_batch(body)


def test_a_batch_over_the_event_limit_is_refused_with_the_limit() -> None:
    body = _container([GOOD, {**GOOD, "seq": 2}], **{"se.producer_id": "p"})
    assert len(decode_batch(body, max_events=2).envelopes) == 2
    with pytest.raises(BatchDecodeError, match=r"^batch holds more than 1 events$"):
        decode_batch(body, max_events=1)


def test_a_corrupt_body_is_refused_naming_what_broke() -> None:
    body = _container([GOOD], **{"se.producer_id": "p"})
    with pytest.raises(BatchDecodeError) as info:
        decode_batch(body[: len(body) - 20])
    cause = info.value.__cause__
    assert str(info.value) == f"undecodable batch: {type(cause).__name__}: {cause}"


def test_a_batch_is_one_compressed_block() -> None:
    """One block is one zstandard frame over every event: payloads of one event type
    compress against each other (small blocks lose most of that)."""
    envelopes = [Envelope(i, "a.B", b"\1" * 8, TS, b"%08d" % i * 64) for i in range(1, 201)]
    body = encode_batch(WireBatch("p", envelopes, {"a.B": 201}))
    blocks = list(fastavro.block_reader(io.BytesIO(body)))
    assert [b.num_records for b in blocks] == [200]


def test_batch_facts_are_written_as_compact_json() -> None:
    """Sent with every batch and heartbeat: no whitespace to pay for."""
    drop = DropNotice("a.B", 2, 4, 3, "queue_full")
    batch = WireBatch("p", [], {"a.B": 5, "c.D": 1}, [drop], incidents=[{"kind": "k"}])
    meta = fastavro.reader(io.BytesIO(encode_batch(batch))).metadata
    for key in ("se.next_seq", "se.drops", "se.incidents"):
        assert " " not in meta[key], meta[key]
