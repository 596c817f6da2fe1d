"""Ingest: turn one HTTP body into validated events plus per-event rejections.

This is the half of the collector that stays stateless when the tier scales out
(docs/architecture.md, "Scaling out"): limits, bomb guard, container decode, and per-event
validation against the collector's own schema registry. It knows nothing of the
ledger or of files; its output, :class:`IngestedBatch`, is what it hands to
*delivery* (see :mod:`.delivery`).

Validation is per event so that one bad event never fails the batch: an unknown
fingerprint, a payload that does not decode (exactly, to its last byte) with the
schema, or an ``event_type`` that is not that schema's full name rejects only that
event, with a machine-readable ``code`` and a reason. Only a body that is not a
decodable batch at all is a 400. Batch facts (``se.next_seq``, ``se.drops``) about
types that are not registered are left out, so no client can make the collector
keep state for made-up types.
"""

from __future__ import annotations

import functools
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
from fastavro import schemaless_reader
from fastavro.read import LOGICAL_READERS

from ..errors import BatchDecodeError, CollectorError, ConfigError
from ..schemas import EventSchema, SchemaRegistry
from ..wire import (
    ECHOED_TYPE_CHARS,
    MAX_INCIDENTS_PER_BATCH,
    DropNotice,
    Envelope,
    decode_batch,
    is_avro_full_name,
    is_envelope_schema,
)
from .envelopes import decode_envelopes
from .guard import GuardError, scan_container
from .ledger import COLLECTOR_SOURCE

#: Largest timestamp (ms) an hourly bucket path can be built from: 9999-12-31T23:59:59.999Z.
MAX_TIMESTAMP_MS = 253_402_300_799_999
_MAX_PRODUCER_ID = 200


#: Payloads are validated with a copy of each schema whose ``bytes`` decimals carry this
#: logical type instead of ``decimal`` (same bytes on the wire), read by
#: :func:`_bounded_decimal`. fastavro turns a decimal's bytes into an int and then a
#: ``Decimal`` with no size limit, which is quadratic: a 1 MB decimal (a few hundred
#: bytes of zstd) held a worker for 100 s of CPU (tests/faults/test_hostile_input.py).
_BOUNDED_DECIMAL = "spotify-events-bounded-decimal"
_FASTAVRO_DECIMAL = LOGICAL_READERS["bytes-decimal"]


@functools.lru_cache(maxsize=64)
def _decimal_max_bytes(precision: int) -> int:
    """Most bytes a decimal of ``precision`` digits needs, plus one for a padding sign byte."""
    return (int(10**precision - 1).bit_length() + 8) // 8 + 1


def _bounded_decimal(data: bytes, writer_schema: Any, reader_schema: Any = None) -> Any:
    precision = writer_schema["precision"]
    if len(data) > _decimal_max_bytes(precision):
        raise ValueError(f"a decimal of {len(data)} bytes exceeds precision {precision}")
    return _FASTAVRO_DECIMAL(data, writer_schema, reader_schema)


LOGICAL_READERS["bytes-" + _BOUNDED_DECIMAL] = _bounded_decimal  # fastavro's documented hook


def _with_bounded_decimals(node: Any) -> Any:
    """A copy of a raw schema with each bytes ``decimal`` read by :func:`_bounded_decimal`."""
    if isinstance(node, list):
        return [_with_bounded_decimals(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_bounded_decimals(v) for k, v in node.items()}
    if out.get("type") == "bytes" and out.get("logicalType") == "decimal":
        out["logicalType"] = _BOUNDED_DECIMAL
    return out


def validation_schema(schema: EventSchema) -> Any:
    """The parsed schema ingest decodes payloads with (wire-identical to ``schema``)."""
    raw = _with_bounded_decimals(dict(schema.raw))
    if raw == schema.raw:
        return schema.parsed
    return fastavro.parse_schema(raw, named_schemas={})


class IngestError(CollectorError):
    """The whole body is refused: ``status`` (400/413) and ``kind`` (a metric label)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one request may cost; validated at construction."""

    max_body_bytes: int = 16 << 20
    max_events: int = 100_000
    max_decoded_bytes: int = 64 << 20
    max_blocks: int = 8192  # container blocks per body (each costs a decompress call)
    max_schema_bytes: int = 64 << 10  # the container header's avro.schema text
    max_future_seconds: float = 86_400.0  # how far past the collector's clock an event may be

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_events",
            "max_decoded_bytes",
            "max_blocks",
            "max_schema_bytes",
            "max_future_seconds",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


@dataclass(frozen=True)
class Rejection:
    """One event refused by ingest (or delivery), reported in the 200 body.

    ``code`` is for programs (``unknown_schema``: the producer holds the event
    until the collector learns its schema; anything else is final), ``reason``
    for people.
    """

    event_type: str
    seq: int
    code: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "event_type": self.event_type,
            "seq": self.seq,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass
class BatchFacts:
    """Batch-level facts from the container metadata, plus when the batch arrived."""

    producer_id: str
    next_seq: dict[str, int]
    drops: list[DropNotice]
    service: str = ""
    host: str = ""
    sdk_version: str = ""
    received_at: float = 0.0
    body_bytes: int = 0
    incidents: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IngestedBatch:
    """What ingest hands to delivery: facts, valid events, and rejected events."""

    facts: BatchFacts
    events: list[Envelope] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Ingest:
    """Stateless validator: body bytes in, :class:`IngestedBatch` out (or IngestError)."""

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        limits: IngestLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.limits = limits or IngestLimits()
        self._clock = clock
        self._readers: dict[bytes, Any] = {}  # fingerprint -> validation schema
        self._types = frozenset(registry.event_types)

    def parse(self, body: bytes) -> IngestedBatch:
        limits = self.limits
        if len(body) > limits.max_body_bytes:
            raise IngestError(413, "too_large", f"body exceeds {limits.max_body_bytes} bytes")
        try:
            scan = scan_container(
                body,
                max_events=limits.max_events,
                max_decoded_bytes=limits.max_decoded_bytes,
                max_blocks=limits.max_blocks,
                max_schema_bytes=limits.max_schema_bytes,
            )
        except GuardError as exc:
            kind = "too_large" if exc.status == 413 else "decode"
            raise IngestError(exc.status, kind, str(exc)) from exc
        try:
            if is_envelope_schema(scan.schema_json):
                # metadata through the shared codec (header only), envelopes the fast way
                batch = decode_batch(body[: scan.header_len])
                batch.envelopes = decode_envelopes(scan.blocks)
            else:
                batch = decode_batch(body, max_events=limits.max_events)
        except BatchDecodeError as exc:
            raise IngestError(400, "decode", str(exc)) from exc
        producer = batch.producer_id
        if not producer or len(producer) > _MAX_PRODUCER_ID or not producer.isprintable():
            raise IngestError(400, "metadata", "se.producer_id must be 1-200 printable characters")
        if producer == COLLECTOR_SOURCE:  # the report's name for the collector's own incidents
            raise IngestError(400, "metadata", f"se.producer_id {producer!r} is reserved")
        for name in batch.next_seq:
            if not is_avro_full_name(name):
                raise IngestError(
                    400, "metadata", f"se.next_seq names an invalid event type {name[:100]!r}"
                )
        for drop in batch.drops:
            if not is_avro_full_name(drop.event_type):
                raise IngestError(
                    400,
                    "metadata",
                    f"se.drops names an invalid event type {drop.event_type[:100]!r}",
                )
        known = self._types
        facts = BatchFacts(
            producer_id=producer,
            next_seq={t: n for t, n in batch.next_seq.items() if t in known},
            drops=[d for d in batch.drops if d.event_type in known],
            service=batch.service[:200],
            host=batch.host[:200],
            sdk_version=batch.sdk_version[:100],
            received_at=float(self._clock()),
            body_bytes=len(body),
            incidents=_incidents(batch.incidents),
        )
        events, rejections = self.validate(batch.envelopes)
        return IngestedBatch(facts=facts, events=events, rejections=rejections)

    def validate(self, envelopes: list[Envelope]) -> tuple[list[Envelope], list[Rejection]]:
        """Split envelopes into valid events and rejections (one code and reason each)."""
        by_fp = self.registry.by_fingerprint
        good: list[Envelope] = []
        bad: list[Rejection] = []
        schema_cache: dict[bytes, EventSchema | None] = {}
        latest_ms = min(
            MAX_TIMESTAMP_MS, int((self._clock() + self.limits.max_future_seconds) * 1000)
        )
        for env in envelopes:
            fp = env.fingerprint
            if fp in schema_cache:
                schema = schema_cache[fp]
            else:
                schema = schema_cache[fp] = by_fp(fp)
            problem = None
            if schema is None or schema.full_name != env.event_type:
                problem = self._type_problem(env, schema)
            elif env.seq < 1:
                problem = "invalid_seq", "seq must be >= 1"
            elif not 0 <= env.timestamp <= MAX_TIMESTAMP_MS:
                problem = "invalid_timestamp", f"timestamp {env.timestamp} out of range"
            elif env.timestamp > latest_ms:
                problem = (
                    "too_far_in_future",
                    f"timestamp {env.timestamp} is more than "
                    f"{self.limits.max_future_seconds:g} s ahead of the collector's clock",
                )
            else:
                payload = env.payload
                buf = io.BytesIO(payload)
                reader = self._readers.get(fp)
                if reader is None:
                    reader = self._readers[fp] = validation_schema(schema)
                try:
                    schemaless_reader(buf, reader, None)
                except Exception as exc:  # fastavro raises many types on bad bytes
                    problem = (
                        "invalid_payload",
                        f"payload does not decode with {schema.full_name}: {type(exc).__name__}",
                    )
                else:
                    if buf.tell() != len(payload):
                        problem = (
                            "invalid_payload",
                            f"payload does not decode with {schema.full_name}: "
                            f"{len(payload) - buf.tell()} trailing bytes",
                        )
            if problem is None:
                good.append(env)
            else:
                bad.append(Rejection(_printable(env.event_type), env.seq, *problem))
        return good, bad

    @staticmethod
    def _type_problem(env: Envelope, schema: EventSchema | None) -> tuple[str, str]:
        if not is_avro_full_name(env.event_type):
            return "invalid_type", "invalid event type name"
        if schema is None:
            return "unknown_schema", f"unknown schema fingerprint {env.fingerprint.hex()}"
        return (
            "invalid_type",
            f"event_type does not match its schema fingerprint (schema is {schema.full_name})",
        )


def _incidents(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a producer says happened to its own queue, bounded: a few short strings."""
    return [
        {
            "kind": str(i.get("kind", ""))[:64],
            "detail": str(i.get("detail", ""))[:500],
            "at": i.get("at"),
        }
        for i in raw[:MAX_INCIDENTS_PER_BATCH]
        if _finite_number(i.get("at"))
    ]


def _finite_number(value: object) -> bool:
    """A number JSON can carry (no NaN or infinity, which the report could not print)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int)


def _printable(name: str) -> str:
    """A bounded, printable echo of a client-supplied name for the response body."""
    short = name[:ECHOED_TYPE_CHARS]
    return short if short.isprintable() else short.encode("unicode_escape").decode("ascii")
