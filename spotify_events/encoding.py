"""Avro encoding of one event, in the caller's thread.

:class:`EventEncoder` turns a record into Avro binary with a schema parsed once at
registration (re-parsing per call roughly doubles the cost), and turns fastavro's
terse errors into :class:`EventValidationError` naming the field. What a batch of
such payloads looks like on the wire is :mod:`spotify_events.wire`.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Callable, Mapping
from typing import Any

import fastavro
from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from .errors import EventTooLargeError, EventValidationError
from .record_writer import RecordWriter, compile_record_writer
from .schemas import EventSchema
from .typecheck import compile_record_check, describe_mismatch


class EventEncoder:
    """Encodes records of one schema version; built once per version, reused per call.

    The fast path is a writer generated from the schema
    (:mod:`spotify_events.record_writer`) that checks and writes a well-typed
    record in one pass. Every record it does not take goes the general path, in
    two steps: a type check compiled from the schema (:mod:`spotify_events.typecheck`:
    fastavro's writer would otherwise coerce ``True`` into an int or ``"abc"`` into
    an array), then fastavro's writer in ``strict_allow_default`` mode, which reports
    missing and unknown fields; a failure there becomes an error naming the field.
    """

    __slots__ = ("_check", "_named", "_write_exact", "max_event_bytes", "schema")

    def __init__(self, schema: EventSchema, max_event_bytes: int = 1 << 20) -> None:
        self.schema = schema
        self.max_event_bytes = max_event_bytes
        self._check = compile_record_check(schema.parsed)
        self._named: dict[str, Any] = {}
        fastavro.parse_schema(schema.parsed, self._named)  # the named types, resolved once
        self._write_exact: RecordWriter | None = compile_record_writer(
            schema.parsed, self._named, self._default_bytes
        )

    def encode(self, record: Mapping[str, Any]) -> bytes:
        write = self._write_exact
        if write is not None:
            try:
                payload = write(record)  # type: ignore[arg-type]
            except Exception:  # not a record it takes: the general path decides
                pass
            else:
                if len(payload) <= self.max_event_bytes:
                    return payload
        return self._encode_general(record)

    def _encode_general(self, record: Mapping[str, Any]) -> bytes:
        if type(record) is not dict and not isinstance(record, Mapping):
            raise EventValidationError(
                self.schema.full_name, [f"record must be a mapping, got {type(record).__name__}"]
            )
        problem = self._check(record)
        if problem is not None:
            path, message = problem
            top = re.split(r"[.\[]", path, maxsplit=1)[0] or None  # the message has the path
            raise EventValidationError(self.schema.full_name, [f"{path}: {message}"], field=top)
        try:
            payload = _write_record(self.schema.parsed, self._named, record)
        except Exception as exc:
            raise self._explain(record, exc) from exc
        if len(payload) > self.max_event_bytes:
            raise EventTooLargeError(self.schema.full_name, len(payload), self.max_event_bytes)
        return payload

    def _default_bytes(self, field: Mapping[str, Any]) -> bytes:
        """How the general path writes ``field`` when a record leaves it out."""
        holder = {
            "type": "record",
            "name": f"{self.schema.full_name}.default",
            "fields": [field],
            "__fastavro_parsed": True,
            "__named_schemas": self._named,
        }
        return _write_record(holder, self._named, {})

    def _explain(self, record: Any, exc: Exception) -> EventValidationError:
        """Turn a writer failure into an error that names the field (slow path only)."""
        name = self.schema.full_name
        if not isinstance(record, Mapping):
            return EventValidationError(
                name, [f"record must be a mapping, got {type(record).__name__}"]
            )
        try:
            validate(record, self.schema.parsed, raise_errors=True)
        except ValidationError as verr:
            errors = [_strip_prefix(str(e), name) for e in verr.errors]
            errors = [e.replace(f"Field({name}.", "Field(") for e in errors]
            field = _field_of(errors[0]) if errors else None
            types = {f["name"]: f["type"] for f in self.schema.parsed["fields"]}
            if field in types and field in record:  # say it the way the compiled check does
                errors = [f"{field}: {describe_mismatch(record[field], types[field])}"]
            return EventValidationError(name, errors, field=field)
        except Exception:  # the validator itself choked; fall back to the writer's message
            pass
        message = str(exc)
        match = re.search(
            r"(?:on field|fields than the schema specifies:|missing from the record|Field) (\w+)",
            message,
        )
        return EventValidationError(name, [message], field=match.group(1) if match else None)


_WRITE_OPTIONS = {"strict": False, "strict_allow_default": True, "disable_tuple_notation": False}


def _write_record_public(parsed: Any, named: dict[str, Any], record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record, strict_allow_default=True)
    return buf.getvalue()


def _write_record(parsed: Any, named: dict[str, Any], record: Mapping[str, Any]) -> bytes:
    """fastavro's encoding of ``record``, through its compiled writer when available."""
    if _WRITE_DATA is None:
        return _write_record_public(parsed, named, record)
    out = bytearray()
    _WRITE_DATA(out, record, parsed, named, "", _WRITE_OPTIONS)
    return bytes(out)


def _probe_write_data() -> Callable[..., None] | None:
    """fastavro's ``schemaless_writer`` re-resolves the schema and copies through a
    file object on every call; its compiled ``write_data`` (what it calls inside)
    does the same work faster (benchmarks/RESULTS.md). It is not in
    fastavro's documented API, so it is used only if it answers a probe exactly
    like the public function; otherwise the public one is used."""
    try:
        private_writer = importlib.import_module("fastavro._write")
    except ImportError:
        return None
    write_data: Callable[..., None] | None = getattr(private_writer, "write_data", None)
    if write_data is None:
        return None
    named: dict[str, Any] = {}
    probe = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Probe",
            "fields": [{"name": "n", "type": "long"}, {"name": "s", "type": "string"}],
        },
        named,
    )
    record = {"n": 150, "s": "x"}
    try:
        out = bytearray()
        write_data(out, record, probe, named, "", _WRITE_OPTIONS)
        if bytes(out) == _write_record_public(probe, named, record):
            return write_data
    except Exception:  # a different internal signature: stay on the public API
        pass
    return None


_WRITE_DATA = _probe_write_data()


def decode_event(
    schema: EventSchema, payload: bytes, reader_schema: EventSchema | None = None
) -> Any:
    """Decode one payload written with ``schema`` (optionally resolved to ``reader_schema``)."""
    reader = reader_schema.parsed if reader_schema is not None else None
    return schemaless_reader(io.BytesIO(payload), schema.parsed, reader)


def _strip_prefix(message: str, full_name: str) -> str:
    return message[len(full_name) + 1 :] if message.startswith(full_name + ".") else message


def _field_of(message: str) -> str | None:
    match = re.match(r"(?:Field\((?:[\w.]+\.)?)?([\w.]+)\)? is ", message)
    return match.group(1) if match else None
