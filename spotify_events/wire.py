"""The wire contract: what one HTTP body between a producer and the collector holds.

Shared by the SDK (which writes batches) and the collector (which reads them), so
each fact has one definition (docs/architecture.md, "Wire format"):

* :data:`ENVELOPE_SCHEMA`: an Avro object container of ``spotify_events.wire.Envelope``
  records, zstandard compressed (:data:`WIRE_CODEC`), so any Avro tool can open a
  captured batch; :func:`is_envelope_schema` is the one check that a container holds it.
* the batch facts in the container metadata (``se.*`` keys): producer, watermarks,
  :class:`DropNotice` runs, incidents, service, host, SDK version;
* :func:`encode_batch` / :func:`decode_batch`, a :class:`WireBatch` to bytes and back;
* :func:`write_envelopes` / :func:`read_envelopes`, the envelope encoder (also the
  queue's, which stores a commit group's envelopes encoded) and its inverse.

Encoding one event's payload is the SDK's job (:mod:`spotify_events.encoding`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, cast

import fastavro
from fastavro.schema import to_parsing_canonical_form

from .container import container, write_bytes, write_long
from .errors import BatchDecodeError
from .typecheck import INTEGER_RANGES

ENVELOPE_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Envelope",
        "namespace": "spotify_events.wire",
        "doc": "One event inside a wire batch.",
        "fields": [
            {
                "name": "seq",
                "type": "long",
                "doc": "Sequence number within (producer, event_type), from 1.",
            },
            {"name": "event_type", "type": "string", "doc": "Full name of the event's schema."},
            {
                "name": "fingerprint",
                "type": {"type": "fixed", "name": "Fingerprint", "size": 8},
                "doc": "CRC-64-AVRO of the writer schema's canonical form, little-endian.",
            },
            {
                "name": "timestamp",
                "type": {"type": "long", "logicalType": "timestamp-millis"},
                "doc": "Event time, milliseconds since the Unix epoch (UTC).",
            },
            {
                "name": "payload",
                "type": "bytes",
                "doc": "Avro binary of the event, written with that schema.",
            },
        ],
    }
)

#: The schema as written into each container's header (fastavro's own keys left out).
_ENVELOPE_SCHEMA_JSON = json.dumps(
    {
        k: v
        for k, v in cast(dict[str, Any], ENVELOPE_SCHEMA).items()
        if k not in ("__fastavro_parsed", "__named_schemas")
    }
)
#: A block is closed once its encoded records reach this size (fastavro's sync_interval).
_BLOCK_BYTES = 1 << 20
_MIN_LONG, _MAX_LONG = INTEGER_RANGES["long"]
#: A sequence number is an Avro ``long``: no producer can number an event past this, so
#: no watermark (``se.next_seq``) or drop notice may reach beyond it. JSON carries any
#: integer; unchecked, a 400-digit watermark made the collector's /metrics fail.
MAX_SEQ = _MAX_LONG

#: Media type of a wire batch body.
CONTENT_TYPE = "avro/binary"
#: Codec used for the container blocks; deflate is accepted on decode too.
WIRE_CODEC = "zstandard"
DECODABLE_CODECS = frozenset({"null", "deflate", "zstandard"})

META_PRODUCER = "se.producer_id"
META_NEXT_SEQ = "se.next_seq"
META_DROPS = "se.drops"
META_SERVICE = "se.service"
META_HOST = "se.host"
META_SDK_VERSION = "se.sdk_version"
#: Optional: JSON list of things that happened to the producer's queue itself
#: (e.g. a damaged file moved aside), so the loss report can say why.
META_INCIDENTS = "se.incidents"
#: Most incidents one batch may carry: the collector keeps the first 16 of a batch and
#: ignores the rest (README, the collector's limits), so a sender sends no more.
MAX_INCIDENTS_PER_BATCH = 16
#: The collector's answer names a rejected event by its sequence number and at most this
#: many characters of its type: a sender matches rejections to its events by as much.
ECHOED_TYPE_CHARS = 200

_AVRO_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Event times (ms since the epoch) that Avro readers can turn back into a datetime:
#: years 1 to 9999. Outside it fastavro's reader overflows and fails the whole batch.
MIN_EVENT_MILLIS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
MAX_EVENT_MILLIS = (
    datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - _EPOCH
) // timedelta(milliseconds=1)


def is_avro_full_name(name: str) -> bool:
    """True when ``name`` is a valid Avro full name (safe to use as a path component)."""
    return len(name) <= 512 and _AVRO_FULL_NAME.match(name) is not None


class Envelope(NamedTuple):
    """One event as it travels: sequence, type, writer fingerprint, time, payload."""

    seq: int
    event_type: str
    fingerprint: bytes
    timestamp: int
    payload: bytes


@dataclass(frozen=True)
class DropNotice:
    """A contiguous run of sequence numbers that was dropped on purpose, and why."""

    event_type: str
    first_seq: int
    last_seq: int
    count: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DropNotice:
        event_type, reason = data["event_type"], data["reason"]
        first, last, count = data["first_seq"], data["last_seq"], data["count"]
        # Strict: the collector's loss report adds these counts up, so a string, a float,
        # a JSON true or a count that disagrees with its range is a malformed notice.
        if not isinstance(event_type, str) or not isinstance(reason, str):
            raise ValueError("drop notice event_type and reason must be strings")
        if not all(type(n) is int for n in (first, last, count)):
            raise ValueError("drop notice first_seq, last_seq and count must be integers")
        if first < 1 or last < first or last > MAX_SEQ:
            raise ValueError(f"drop notice with bad range {first}..{last}")
        if count != last - first + 1:
            raise ValueError(f"drop notice count {count} does not match its range {first}..{last}")
        return cls(
            event_type=event_type, first_seq=first, last_seq=last, count=count, reason=reason
        )


@dataclass
class WireBatch:
    """One POST body, decoded. An empty ``envelopes`` list is a heartbeat."""

    producer_id: str
    envelopes: list[Envelope] = field(default_factory=list)
    next_seq: dict[str, int] = field(default_factory=dict)
    drops: list[DropNotice] = field(default_factory=list)
    service: str = ""
    host: str = ""
    sdk_version: str = ""
    incidents: list[dict[str, Any]] = field(default_factory=list)


#: An envelope's fields in :class:`Envelope`'s order, as a plain tuple.
EnvelopeFields = tuple[int, str, bytes, int, bytes]


def encode_batch(
    batch: WireBatch,
    codec: str = WIRE_CODEC,
    *,
    envelopes: Iterable[EnvelopeFields] | None = None,
    encoded: Iterable[tuple[int, bytes]] | None = None,
) -> bytes:
    """Write ``batch`` as an Avro object container (the HTTP body).

    ``envelopes``, when given, are written instead of ``batch.envelopes``: a shipper
    maps its queued rows to plain tuples in C rather than build an :class:`Envelope`
    per event, on a path every logged event takes. ``encoded``, when given, are the
    envelopes already in Avro binary, as container blocks (:func:`join_envelopes`)."""
    metadata = {
        META_PRODUCER: batch.producer_id,
        META_NEXT_SEQ: json.dumps(batch.next_seq, separators=(",", ":"), sort_keys=True),
        META_DROPS: json.dumps([d.to_json() for d in batch.drops], separators=(",", ":")),
        META_SERVICE: batch.service,
        META_HOST: batch.host,
        META_SDK_VERSION: batch.sdk_version,
    }
    if batch.incidents:
        metadata[META_INCIDENTS] = json.dumps(batch.incidents, separators=(",", ":"))
    if encoded is None:
        encoded = write_envelopes(batch.envelopes if envelopes is None else envelopes)
    return container(_ENVELOPE_SCHEMA_JSON, metadata, encoded, codec)


def write_envelopes(envelopes: Iterable[EnvelopeFields]) -> list[tuple[int, bytes]]:
    """``envelopes`` in Avro binary as :data:`ENVELOPE_SCHEMA` says, byte for byte what
    fastavro writes (tests/sdk/test_container.py, tests/sdk/test_envelope_codec.py), cut
    into container blocks of about ``_BLOCK_BYTES``: (record count, bytes) each.

    The one envelope encoder: a shipper encodes queued rows with it when it sends them,
    and the queue a commit group's envelopes when it stores them as a block (their
    bytes then go into a container as they are, :func:`join_envelopes`). Raises
    ValueError for an envelope no Avro reader could read back."""
    blocks: list[tuple[int, bytes]] = []
    block = bytearray()
    count = 0
    names: dict[str, bytes] = {}
    for seq, event_type, fingerprint, timestamp, payload in envelopes:
        if not MIN_EVENT_MILLIS <= timestamp <= MAX_EVENT_MILLIS:
            raise ValueError(
                f"{event_type} seq {seq}: timestamp {timestamp} ms is outside years 1-9999"
            )
        if not _MIN_LONG <= seq <= _MAX_LONG or len(fingerprint) != 8:
            raise ValueError(f"{event_type} seq {seq}: not a valid envelope")
        name = names.get(event_type)
        if name is None:
            name = names[event_type] = _string_bytes(event_type)
        write_long(block, seq)
        block += name
        block += fingerprint
        write_long(block, timestamp)
        write_bytes(block, payload)
        count += 1
        if len(block) >= _BLOCK_BYTES:
            blocks.append((count, bytes(block)))
            block, count = bytearray(), 0
    if count:
        blocks.append((count, bytes(block)))
    return blocks


def join_envelopes(pieces: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Encoded envelopes — (record count, bytes) pieces as :func:`write_envelopes` made
    them — as container blocks: pieces joined, never re-encoded, a block closed once
    it reaches ``_BLOCK_BYTES``."""
    blocks: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    count = size = 0
    for n, data in pieces:
        parts.append(data)
        count += n
        size += len(data)
        if size >= _BLOCK_BYTES:
            blocks.append((count, b"".join(parts)))
            parts, count, size = [], 0, 0
    if count:
        blocks.append((count, b"".join(parts)))
    return blocks


def read_envelopes(data: bytes) -> list[EnvelopeFields]:
    """The envelopes :func:`write_envelopes` wrote into ``data``, in order. For bytes
    this SDK stored itself (a queue block): a malformed one raises ValueError."""
    out: list[EnvelopeFields] = []
    pos, end = 0, len(data)
    while pos < end:
        seq, pos = _read_long(data, pos)
        length, pos = _read_long(data, pos)
        event_type = data[pos : pos + length].decode()
        pos += length
        fingerprint = data[pos : pos + 8]
        pos += 8
        timestamp, pos = _read_long(data, pos)
        length, pos = _read_long(data, pos)
        payload = data[pos : pos + length]
        pos += length
        if len(fingerprint) != 8 or pos > end or length < 0:
            raise ValueError("truncated envelope")
        out.append((seq, event_type, fingerprint, timestamp, payload))
    return out


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro's zigzag varint at ``pos``: (value, position after it)."""
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _string_bytes(text: str) -> bytes:
    out = bytearray()
    write_bytes(out, text.encode())
    return bytes(out)


def decode_batch(body: bytes, max_events: int | None = None) -> WireBatch:
    """Read a wire batch; any malformation becomes :class:`BatchDecodeError`.

    ``max_events`` bounds how many envelopes are materialised, so a body that
    claims millions of records cannot exhaust memory.
    """
    try:
        reader = fastavro.block_reader(io.BytesIO(body), return_record_name=False)
        codec = reader.codec
        if codec not in DECODABLE_CODECS:
            raise BatchDecodeError(f"unsupported codec {codec!r}")
        if not is_envelope_schema(reader.metadata.get("avro.schema")):
            raise BatchDecodeError("container does not hold spotify_events.wire.Envelope records")
        meta = reader.metadata
        envelopes: list[Envelope] = []
        for record in block_records(reader):
            envelopes.append(_envelope(record))
            if max_events is not None and len(envelopes) > max_events:
                raise BatchDecodeError(f"batch holds more than {max_events} events")
        return WireBatch(
            producer_id=_meta(meta, META_PRODUCER),
            envelopes=envelopes,
            next_seq=_parse_next_seq(_meta(meta, META_NEXT_SEQ, "{}")),
            drops=_parse_drops(_meta(meta, META_DROPS, "[]")),
            service=_meta(meta, META_SERVICE, ""),
            host=_meta(meta, META_HOST, ""),
            sdk_version=_meta(meta, META_SDK_VERSION, ""),
            incidents=_parse_incidents(_meta(meta, META_INCIDENTS, "[]")),
        )
    except BatchDecodeError:
        raise
    except Exception as exc:  # fastavro raises a zoo of types on corrupt input
        raise BatchDecodeError(f"undecodable batch: {type(exc).__name__}: {exc}") from exc


def block_records(blocks: Iterable[Any]) -> Iterator[Any]:
    """The records of container blocks (from ``fastavro.block_reader``), each block read
    to its end: the one record reader of wire batches, the SDK's and the collector's.

    fastavro reads as many records as a block declares and ignores what follows them,
    so a block holding more than its count would have events acknowledged that were
    never read (tests/collector/test_report_truth.py): BatchDecodeError unless each
    block ends where its last record does.
    """
    for block in blocks:
        yield from block
        data = block.bytes_  # the block's decompressed records (fastavro's Block)
        read = data.tell()
        left = data.seek(0, io.SEEK_END) - read
        if left:
            raise BatchDecodeError(
                f"a container block holds {left} bytes past its {block.num_records} records"
            )


_ENVELOPE_PCF = to_parsing_canonical_form(ENVELOPE_SCHEMA)
#: Verdicts keyed by a 32-byte digest of the schema text, never the text itself: keyed
#: by text, 64 hostile 8 MB schemas stayed in memory. A handful of spellings exist.
_envelope_verdicts: dict[bytes, bool] = {}


def is_envelope_schema(schema_json: str | bytes | None) -> bool:
    """Whether a container's ``avro.schema`` text is the envelope (same Parsing Canonical Form).

    Checking the name alone let any schema called ``spotify_events.wire.Envelope``
    through to the record reader; a recursive one (``{"name": "next", "type":
    ["null", "Envelope"]}``) with 100 KB of nesting overflowed the C stack in
    fastavro's reader and killed the collector with SIGSEGV
    (tests/faults/test_hostile_input.py). So this is decided before any record is
    read, by the SDK's :func:`decode_batch` and the collector's fast path alike.
    The canonical form ignores logical types and docs, so spellings of the
    envelope without them (the collector's raw reader) pass too.
    """
    if schema_json is None:
        return False
    text = (
        schema_json.encode("utf-8", "surrogatepass")
        if isinstance(schema_json, str)
        else schema_json
    )
    key = hashlib.blake2b(text, digest_size=32).digest()
    verdict = _envelope_verdicts.get(key)
    if verdict is None:
        try:
            parsed = fastavro.parse_schema(json.loads(text), named_schemas={})
            verdict = to_parsing_canonical_form(parsed) == _ENVELOPE_PCF
        except Exception:  # not JSON, not a schema: not the envelope
            verdict = False
        if len(_envelope_verdicts) < 64:  # never grow unbounded
            _envelope_verdicts[key] = verdict
    return verdict


def _envelope(record: Mapping[str, Any]) -> Envelope:
    """One record as an :class:`Envelope`, or BatchDecodeError for wrongly typed fields.

    The canonical form ignores logical types, so a writer schema can still turn a field
    into a ``datetime``, ``UUID`` or ``Decimal`` (``seq`` as ``timestamp-micros``).
    Before these checks, a look-alike envelope with a string ``seq`` reached the
    collector's ledger and failed there with a TypeError: a 503 for client input
    (tests/faults/test_hostile_input.py).
    """
    seq, event_type, fingerprint = record["seq"], record["event_type"], record["fingerprint"]
    timestamp, payload = record["timestamp"], record["payload"]
    if not (
        type(seq) is int
        and isinstance(event_type, str)
        and type(fingerprint) is bytes
        and len(fingerprint) == 8
        and (type(timestamp) is int or isinstance(timestamp, datetime))
        and type(payload) is bytes
    ):
        raise BatchDecodeError("envelope fields do not have the spotify_events.wire.Envelope types")
    return Envelope(seq, event_type, fingerprint, _timestamp_millis(timestamp), payload)


def _timestamp_millis(value: int | datetime) -> int:
    if isinstance(value, int):
        return value
    # fastavro turns timestamp-millis into an aware datetime on read. Convert with
    # integer arithmetic: int(value.timestamp() * 1000) goes through float seconds
    # and came back 1 ms early for ~1% of timestamps (tests/sdk/test_encoding.py).
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int((value - _EPOCH) // timedelta(milliseconds=1))


def _meta(meta: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = meta.get(key, default)
    if value is None:
        raise BatchDecodeError(f"container metadata lacks {key!r}")
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_next_seq(text: str) -> dict[str, int]:
    data = json.loads(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and type(v) is int and 1 <= v <= MAX_SEQ + 1 for k, v in data.items()
    ):
        raise BatchDecodeError(
            f"{META_NEXT_SEQ} must map event types to sequence numbers from 1 to 2**63"
        )
    return data


def _parse_incidents(text: str) -> list[dict[str, Any]]:
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise BatchDecodeError(f"{META_INCIDENTS} must be a JSON list of objects")
    return data


def _parse_drops(text: str) -> list[DropNotice]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise BatchDecodeError(f"{META_DROPS} must be a JSON list")
    try:
        return [DropNotice.from_json(item) for item in data]
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchDecodeError(f"bad drop notice in {META_DROPS}: {exc}") from exc
