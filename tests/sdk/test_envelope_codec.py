"""The one envelope encoder (``wire.write_envelopes``), which the queue now runs at
commit and whose bytes then travel as they are: byte for byte fastavro's encoding of
the envelope schema at the edges of every field, read back by ``read_envelopes``, and
joined into container blocks that any Avro reader opens."""

from __future__ import annotations

import io

import fastavro
import pytest

from spotify_events.wire import (
    ENVELOPE_SCHEMA,
    MAX_EVENT_MILLIS,
    MIN_EVENT_MILLIS,
    WireBatch,
    decode_batch,
    encode_batch,
    join_envelopes,
    read_envelopes,
    write_envelopes,
)

FINGERPRINT = bytes(range(8))
SEQS = [1, 63, 64, 8191, 8192, (1 << 31) - 1, 1 << 31, 1 << 62, (1 << 63) - 1]
TIMESTAMPS = [MIN_EVENT_MILLIS, -8193, -1, 0, 1, 8191, 8192, 1 << 40, MAX_EVENT_MILLIS]
PAYLOADS = [b"", b"p" * 63, b"p" * 64, b"q" * 8191, b"r" * 8192]
TYPES = ["a.B", "x." + "y" * 200, "caf\u00e9.\u00e9v\u00e9nement"]


def fastavro_bytes(seq: int, event_type: str, timestamp: int, payload: bytes) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out,
        ENVELOPE_SCHEMA,
        {
            "seq": seq,
            "event_type": event_type,
            "fingerprint": FINGERPRINT,
            "timestamp": timestamp,
            "payload": payload,
        },
    )
    return out.getvalue()


@pytest.mark.parametrize("event_type", TYPES)
def test_every_edge_value_is_encoded_as_fastavro_does_and_read_back(event_type: str) -> None:
    envelopes = [
        (seq, event_type, FINGERPRINT, ts, payload)
        for seq in SEQS
        for ts in TIMESTAMPS
        for payload in PAYLOADS
    ]
    blocks = write_envelopes(envelopes)
    data = b"".join(d for _, d in blocks)
    assert sum(n for n, _ in blocks) == len(envelopes)
    assert data == b"".join(fastavro_bytes(s, t, ts, p) for s, t, _, ts, p in envelopes)
    assert read_envelopes(data) == envelopes


def test_envelopes_no_reader_could_read_back_are_refused() -> None:
    with pytest.raises(ValueError, match="outside years 1-9999"):
        write_envelopes([(1, "a.B", FINGERPRINT, MAX_EVENT_MILLIS + 1, b"")])
    with pytest.raises(ValueError, match="not a valid envelope"):
        write_envelopes([(1 << 63, "a.B", FINGERPRINT, 0, b"")])
    with pytest.raises(ValueError, match="not a valid envelope"):
        write_envelopes([(1, "a.B", b"short", 0, b"")])
    with pytest.raises(ValueError):
        read_envelopes(fastavro_bytes(1, "a.B", 0, b"xyz")[:-1])  # cut short


def test_stored_pieces_join_into_containers_any_reader_opens() -> None:
    """Pieces stored apart (blocks of a queue) joined without re-encoding: the
    container holds every envelope in order, cut into Avro blocks of about 1 MiB."""
    payload = b"z" * 5000
    pieces = [
        (len(group), b"".join(d for _, d in write_envelopes(group)))
        for group in (
            [(seq, "a.B", FINGERPRINT, 1_000 + seq, payload) for seq in range(start, start + 100)]
            for start in range(1, 501, 100)
        )
    ]
    joined = join_envelopes(pieces)
    # a block closes once it reaches 1 MiB: three 0.5 MB pieces, then the other two
    assert [n for n, _ in joined] == [300, 200]
    body = encode_batch(WireBatch(producer_id="p"), encoded=joined)
    batch = decode_batch(body)
    assert [(e.seq, e.timestamp, e.payload) for e in batch.envelopes] == [
        (seq, 1_000 + seq, payload) for seq in range(1, 501)
    ]
    records = list(fastavro.reader(io.BytesIO(body)))
    assert [r["seq"] for r in records] == list(range(1, 501))
