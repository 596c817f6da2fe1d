"""Wire batches framed by hand (spotify_events.container) against fastavro's writer.

``encode_batch`` encodes envelopes itself and frames them with
:func:`spotify_events.container.container`; with the same sync marker its bytes
must be exactly fastavro's for the same batch, for every codec, including batches
that span several blocks, and fastavro must read them back.
"""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotify_events import container as container_module
from spotify_events import wire
from spotify_events.wire import (
    ENVELOPE_SCHEMA,
    MAX_EVENT_MILLIS,
    MIN_EVENT_MILLIS,
    DropNotice,
    Envelope,
    WireBatch,
    decode_batch,
    encode_batch,
)

SYNC = bytes(range(16))
#: deflate is compared by content: see test_deflate_blocks_are_raw_deflate_any_reader_opens.
BYTE_EXACT_CODECS = ["null", "zstandard"]

envelopes = st.builds(
    Envelope,
    seq=st.integers(1, 2**63 - 1),
    event_type=st.sampled_from(["a.B", "spotify.events.playback.EndSong", "ü.Ä" * 40]),
    fingerprint=st.binary(min_size=8, max_size=8),
    timestamp=st.integers(MIN_EVENT_MILLIS, MAX_EVENT_MILLIS),
    payload=st.binary(max_size=300),
)
batches = st.builds(
    WireBatch,
    producer_id=st.text(min_size=1, max_size=40),
    envelopes=st.lists(envelopes, max_size=40),
    next_seq=st.dictionaries(st.text(max_size=10), st.integers(1, 2**40), max_size=3),
    drops=st.lists(
        st.builds(DropNotice, st.just("a.B"), st.just(1), st.just(2), st.just(2), st.text()),
        max_size=2,
    ),
    service=st.text(max_size=20),
    host=st.text(max_size=20),
    incidents=st.lists(
        st.fixed_dictionaries({"kind": st.text(max_size=8), "count": st.integers(0, 9)}),
        max_size=2,
    ),
)


def _fastavro_bytes(batch: WireBatch, codec: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """What fastavro's own container writer makes of ``batch`` (metadata taken from
    encode_batch's header, so only the framing and the records are compared)."""
    ours = _encode(batch, codec, monkeypatch)
    header = fastavro.reader(io.BytesIO(ours)).metadata
    metadata = {k: v for k, v in header.items() if not k.startswith("avro.")}
    out = io.BytesIO()
    fastavro.writer(
        out,
        ENVELOPE_SCHEMA,
        [e._asdict() for e in batch.envelopes],
        codec=codec,
        metadata=metadata,
        sync_interval=1 << 20,
        sync_marker=SYNC,
    )
    return out.getvalue()


def _encode(batch: WireBatch, codec: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(container_module.os, "urandom", lambda n: SYNC[:n])
    return encode_batch(batch, codec=codec)


@pytest.mark.parametrize("codec", BYTE_EXACT_CODECS)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(batch=batches)
def test_encode_batch_writes_fastavros_bytes(batch: WireBatch, codec: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        ours = _encode(batch, codec, monkeypatch)
        assert ours == _fastavro_bytes(batch, codec, monkeypatch)
    assert decode_batch(ours) == batch


def test_a_batch_over_a_mebibyte_spans_blocks_like_fastavro(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = [Envelope(i, "a.B", b"\1" * 8, 1_763_158_400_000, bytes(90_000)) for i in range(1, 26)]
    batch = WireBatch("p", big, {"a.B": 26})
    ours = _encode(batch, "null", monkeypatch)
    assert ours == _fastavro_bytes(batch, "null", monkeypatch)
    assert ours.count(SYNC) == 4  # the header, then blocks of 12, 12 and 1 envelopes
    assert decode_batch(ours) == batch


def test_deflate_blocks_are_raw_deflate_any_reader_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro keeps three bytes of zlib's checksum after its deflate data; readers
    ignore them, and this writer leaves them out, so deflate is compared by content."""
    batch = WireBatch("p", [Envelope(i, "a.B", b"\0" * 8, i, b"x" * 500) for i in range(1, 9)])
    ours = _encode(batch, "deflate", monkeypatch)
    assert ours != _fastavro_bytes(batch, "deflate", monkeypatch)
    assert list(fastavro.reader(io.BytesIO(ours))) == list(
        fastavro.reader(io.BytesIO(_fastavro_bytes(batch, "deflate", monkeypatch)))
    )
    assert decode_batch(ours) == batch


def test_the_header_carries_the_envelope_schema_as_fastavro_writes_it() -> None:
    header = fastavro.reader(io.BytesIO(encode_batch(WireBatch("p")))).metadata
    assert json.loads(header["avro.schema"]) == json.loads(wire._ENVELOPE_SCHEMA_JSON)
    assert header["avro.codec"] == wire.WIRE_CODEC


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (Envelope(-(2**63) - 1, "a.B", b"\0" * 8, 0, b""), "not a valid envelope"),
        (Envelope(2**63, "a.B", b"\0" * 8, 0, b""), "not a valid envelope"),
        (Envelope(1, "a.B", b"\0" * 7, 0, b""), "a.B seq 1: not a valid envelope"),
    ],
)
def test_an_envelope_fastavro_could_not_write_is_refused(envelope: Envelope, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_batch(WireBatch("p", [envelope]))


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 63, -64, 64, -65, 127, 128, 8191, -8192, 8192, 2**31, -(2**31), 2**63 - 1, -(2**63)],
)
def test_write_long_is_avros_long_at_every_varint_edge(value: int) -> None:
    """Zigzag values 127/128 and 16383/16384 sit where a varint grows a byte."""
    out = bytearray()
    container_module.write_long(out, value)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, "long", value)
    assert bytes(out) == expected.getvalue()


@pytest.mark.parametrize(
    ("seq", "timestamp"),
    [(-(2**63), MIN_EVENT_MILLIS), (2**63 - 1, MAX_EVENT_MILLIS)],
)
def test_envelopes_at_the_limits_are_written(
    seq: int, timestamp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = WireBatch("p", [Envelope(seq, "a.B", b"\0" * 8, timestamp, b"")])
    assert _encode(batch, "null", monkeypatch) == _fastavro_bytes(batch, "null", monkeypatch)


def test_an_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unrecognized codec: snappy"):
        encode_batch(WireBatch("p"), codec="snappy")
