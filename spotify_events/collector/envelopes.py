"""Fast envelope decoding for the collector's hot path.

``decode_batch`` (spotify_events/wire.py) reads ``timestamp`` through fastavro's
``timestamp-millis`` logical type, i.e. builds an aware ``datetime`` per event and
converts it back to milliseconds, and decompresses every block a second time after
the bomb guard already has: twice the cost of this path (benchmarks/RESULTS.md).
So, when (and only when) a body's writer schema is the envelope
schema (``wire.is_envelope_schema``: same Parsing Canonical Form, which ignores
logical types, hence the same bytes on the wire), the collector reads the already-decompressed blocks with a
copy of the envelope schema that has no logical type. The batch metadata still
goes through ``decode_batch`` (on the header alone), so there is one definition
of the ``se.*`` keys. Any other writer schema takes the plain ``decode_batch`` path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import fastavro
from fastavro.schema import to_parsing_canonical_form

from ..errors import BatchDecodeError
from ..wire import ENVELOPE_SCHEMA, Envelope, block_records
from .buckets import avro_long

_RAW_ENVELOPE = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Envelope",
        "namespace": "spotify_events.wire",
        "fields": [
            {"name": "seq", "type": "long"},
            {"name": "event_type", "type": "string"},
            {"name": "fingerprint", "type": {"type": "fixed", "name": "Fingerprint", "size": 8}},
            {"name": "timestamp", "type": "long"},  # no logicalType: stays an int
            {"name": "payload", "type": "bytes"},
        ],
    },
    named_schemas={},
)
assert to_parsing_canonical_form(_RAW_ENVELOPE) == to_parsing_canonical_form(ENVELOPE_SCHEMA)

_SYNC = b"spotify-events-c"  # 16 bytes; the container below never leaves this process
_header = io.BytesIO()
fastavro.writer(_header, _RAW_ENVELOPE, [], codec="null", sync_marker=_SYNC)
_RAW_HEADER = _header.getvalue()


def decode_envelopes(blocks: Sequence[tuple[int, bytes]]) -> list[Envelope]:
    """Envelopes from decompressed container blocks of (record count, data).

    Each block must end where its last record does, as in ``decode_batch``: both read
    records through :func:`spotify_events.wire.block_records`.
    """
    parts = [_RAW_HEADER]
    for count, data in blocks:
        parts += [avro_long(count), avro_long(len(data)), data, _SYNC]
    try:
        read = fastavro.block_reader(io.BytesIO(b"".join(parts)))
        return [
            Envelope(r["seq"], r["event_type"], r["fingerprint"], r["timestamp"], r["payload"])
            for r in block_records(read)
        ]
    except BatchDecodeError:
        raise
    except Exception as exc:  # fastavro raises a zoo of types on corrupt input
        raise BatchDecodeError(f"undecodable batch: {type(exc).__name__}: {exc}") from exc
