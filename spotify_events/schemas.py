"""SchemaRegistry: the typed half of "typed events".

Owns loading ``.avsc`` files, parsing each schema exactly once (fastavro's
``parse_schema`` is the expensive part of encoding when repeated per call),
fingerprinting (CRC-64-AVRO of the Parsing Canonical Form, little-endian, the
same 8 bytes Avro single-object encoding puts on the wire) and answering
compatibility questions with Apache Avro's own reader/writer checker.

Several versions of one event type may be registered; the one registered last
is the *writer* schema (new events are encoded with it), and every version stays
resolvable by fingerprint so data written with an older one can still be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .errors import MissingExtraError, SchemaError, UnknownEventTypeError

SchemaSource = Union[str, os.PathLike[str], Mapping[str, Any], "SchemaRegistry", Iterable[Any]]


@dataclass(frozen=True)
class EventSchema:
    """One registered version of an event type, parsed once and ready to encode with."""

    full_name: str
    name: str
    parsed: Any = field(repr=False, compare=False)
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    canonical: str = field(repr=False)
    fingerprint: bytes
    source: str

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


@dataclass(frozen=True)
class CompatibilityResult:
    """Answer of :func:`check_compatibility` for one old/new pair.

    ``backward``: readers using the *new* schema can read data written with the old.
    ``forward``: readers using the *old* schema can read data written with the new.
    """

    backward: bool
    forward: bool
    reasons: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return self.backward and self.forward


def schema_fingerprint(parsed: Any) -> tuple[str, bytes]:
    """Return (parsing canonical form, 8-byte CRC-64-AVRO fingerprint)."""
    canonical = to_parsing_canonical_form(parsed)
    return canonical, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def parse_event_schema(definition: Mapping[str, Any], source: str = "<dict>") -> EventSchema:
    """Parse one event schema; event types must be named records."""
    if not isinstance(definition, Mapping) or definition.get("type") != "record":
        raise SchemaError(
            f"{source}: an event schema must be an Avro record, got {definition!r:.80}"
        )
    try:
        parsed: Any = fastavro.parse_schema(dict(definition), named_schemas={})
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"{source}: invalid Avro schema: {exc}") from exc
    canonical, fp = schema_fingerprint(parsed)
    full_name = parsed["name"]
    return EventSchema(
        full_name=full_name,
        name=full_name.rsplit(".", 1)[-1],
        parsed=parsed,
        raw=definition,
        canonical=canonical,
        fingerprint=fp,
        source=source,
    )


def load_schema_file(path: str | os.PathLike[str]) -> EventSchema:
    """Read and parse one ``.avsc`` file; errors name the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read schema file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not valid UTF-8: {exc}") from exc
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
    return parse_event_schema(definition, source=str(path))


class SchemaRegistry:
    """Event schemas by full name, unambiguous short name, and fingerprint."""

    def __init__(self, sources: SchemaSource | None = None) -> None:
        self._versions: dict[str, list[EventSchema]] = {}
        self._by_fingerprint: dict[bytes, EventSchema] = {}
        self._short: dict[str, set[str]] = {}
        if sources is not None:
            self.load(sources)

    @classmethod
    def coerce(cls, sources: SchemaSource) -> SchemaRegistry:
        """Accept a registry as-is, or build one from a directory, files or dicts."""
        return sources if isinstance(sources, SchemaRegistry) else cls(sources)

    # -- loading --------------------------------------------------------------
    def load(self, sources: SchemaSource) -> None:
        """Load a directory, an ``.avsc`` path, a schema dict, or an iterable of those."""
        if isinstance(sources, SchemaRegistry):
            for schema in sources.all_versions():
                self.add(schema)
        elif isinstance(sources, Mapping):
            self.register(sources)
        elif isinstance(sources, (str, os.PathLike)):
            path = Path(sources)
            if path.is_dir():
                self.load_directory(path)
            elif path.exists():
                self.add(load_schema_file(path))
            else:
                raise SchemaError(f"{path}: no such schema file or directory")
        else:
            for item in sources:
                self.load(item)

    def load_directory(self, directory: str | os.PathLike[str]) -> None:
        """Load every ``*.avsc`` below ``directory`` in sorted path order.

        Sorted order makes "the last registered version writes" deterministic:
        name versioned files so they sort oldest first (``EndSong.v1.avsc``, ``EndSong.v2.avsc``).
        """
        files = sorted(Path(directory).rglob("*.avsc"))
        if not files:
            raise SchemaError(f"{directory}: no .avsc files found")
        for path in files:
            self.add(load_schema_file(path))

    def register(self, definition: Mapping[str, Any], source: str = "<dict>") -> EventSchema:
        """Parse and register a schema given as a dict; returns the registered version."""
        return self.add(parse_event_schema(definition, source))

    def add(self, schema: EventSchema) -> EventSchema:
        existing = self._by_fingerprint.get(schema.fingerprint)
        if existing is not None and existing.full_name == schema.full_name:
            # Re-registering an identical version makes it the writer again.
            versions = self._versions[schema.full_name]
            versions.remove(existing)
            versions.append(existing)
            return existing
        self._versions.setdefault(schema.full_name, []).append(schema)
        self._by_fingerprint[schema.fingerprint] = schema
        self._short.setdefault(schema.name, set()).add(schema.full_name)
        return schema

    # -- lookup ---------------------------------------------------------------
    def resolve_name(self, name: str) -> str:
        """Full name for ``name`` (a full name, or a short name that is unambiguous)."""
        if name in self._versions:
            return name
        candidates = self._short.get(name, set())
        if len(candidates) == 1:
            return next(iter(candidates))
        if len(candidates) > 1:
            raise UnknownEventTypeError(
                f"{name} (ambiguous: {', '.join(sorted(candidates))}; use the full name)",
                list(self._versions),
            )
        raise UnknownEventTypeError(name, list(self._versions))

    def get(self, name: str) -> EventSchema:
        """The writer (newest) version of an event type."""
        return self._versions[self.resolve_name(name)][-1]

    def by_fingerprint(self, fp: bytes) -> EventSchema | None:
        return self._by_fingerprint.get(fp)

    def versions(self, name: str) -> list[EventSchema]:
        return list(self._versions[self.resolve_name(name)])

    def all_versions(self) -> Iterator[EventSchema]:
        for versions in self._versions.values():
            yield from versions

    @property
    def event_types(self) -> list[str]:
        return sorted(self._versions)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.resolve_name(name)
        except UnknownEventTypeError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._versions)

    def __repr__(self) -> str:
        return f"<SchemaRegistry {len(self)} types: {', '.join(self.event_types)}>"


def check_compatibility(
    old: EventSchema | Mapping[str, Any], new: EventSchema | Mapping[str, Any]
) -> CompatibilityResult:
    """Whether data can cross between ``old`` and ``new`` in each direction.

    Uses Apache Avro's ``ReaderWriterCompatibilityChecker`` (the port of the Java
    checker Schema Registry uses) rather than a hand-written approximation.
    """
    try:
        from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
        from avro.schema import parse as avro_parse
    except ImportError as exc:
        raise MissingExtraError("check_compatibility", "avro", extra="tools") from exc

    def to_avro(schema: EventSchema | Mapping[str, Any]) -> Any:
        raw = schema.raw if isinstance(schema, EventSchema) else schema
        source = schema.source if isinstance(schema, EventSchema) else "<dict>"
        try:
            return avro_parse(json.dumps(raw))
        except Exception as exc:  # avro's SchemaParseException, TypeError from json ...
            raise SchemaError(f"{source}: invalid Avro schema: {exc}") from exc

    old_schema, new_schema = to_avro(old), to_avro(new)
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    backward = checker.get_compatibility(reader=new_schema, writer=old_schema)
    forward = checker.get_compatibility(reader=old_schema, writer=new_schema)
    compatible = SchemaCompatibilityType.compatible
    reasons: list[str] = []
    for direction, result in (("backward", backward), ("forward", forward)):
        if result.compatibility is not compatible:
            kinds = ", ".join(sorted({i.name for i in result.incompatibilities})) or "incompatible"
            where = ", ".join(sorted(result.locations))
            detail = "; ".join(sorted(result.messages))
            reasons.append(f"{direction}: {kinds} ({detail}) at {where}")
            if not result.messages:
                reasons.append(f"{direction}: incompatible")
    return CompatibilityResult(
        backward=backward.compatibility is compatible,
        forward=forward.compatibility is compatible,
        reasons=tuple(reasons),
    )
