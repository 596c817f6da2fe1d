"""The model codegen renders: every named type the event schemas reach, and its name.

Walks each event schema once, collects its records and enums (the same
definition reached from two files is one type), and gives each a Python class
name that is unique, not a keyword, and does not shadow anything the generated
module uses; enum symbols get member names the same way. Renderers
(:mod:`.python`) read the model and never name things themselves, so two
renderers would agree on every name.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..schemas import EventSchema

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

#: Module-level names the generated code uses itself; schema names must not shadow them.
MODULE_RESERVED = {
    "_abc",
    "_dc",
    "_decimal",
    "_dt",
    "_enum",
    "_t",
    "_uuid",
    "_se_wrong_type",
    "_se_bad_value",
    "_se_decimal_ok",
    "EVENT_CLASSES",
}
#: Field names that would shadow a name the class body or methods use.
FIELD_RESERVED = MODULE_RESERVED | {
    "to_avro",
    "int",
    "str",
    "float",
    "bool",
    "bytes",
    "list",
    "dict",
    "object",
    "self",
}


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[._]+", name) if part)


def unique_name(name: str, taken: set[str]) -> str:
    while keyword.iskeyword(name) or name in taken:
        name += "_"
    return name


@dataclass
class Scope:
    """Named types visible while walking one schema file (full name -> definition)."""

    named: dict[str, Mapping[str, Any]]
    source: str


@dataclass
class NamedType:
    """A record or enum of the schemas, and the Python class name it gets."""

    full_name: str
    kind: str  # "record" | "enum"
    definition: Mapping[str, Any]
    source: str
    class_name: str = ""
    event: EventSchema | None = None
    scope: Scope | None = None
    #: enum: symbol -> member name
    members: dict[str, str] = field(default_factory=dict)


class TypeModel:
    """The named types of ``events`` (sorted by full name), named, ready to render."""

    def __init__(self, events: list[EventSchema]) -> None:
        self.events = sorted(events, key=lambda e: e.full_name)
        self.types: dict[str, NamedType] = {}  # key "full_name\0json" -> type
        self.keys_by_def: dict[int, str] = {}
        self._collect()

    def _collect(self) -> None:
        for event in self.events:
            scope = Scope({}, event.source)
            key = self._visit(event.parsed, scope)
            assert key is not None
            self.types[key].event = event
        self._name_classes()

    def _key(self, definition: Mapping[str, Any]) -> str:
        clean = {k: v for k, v in definition.items() if not k.startswith("__")}
        return str(definition["name"]) + "\0" + json.dumps(clean, sort_keys=True)

    def _visit(self, schema: Any, scope: Scope) -> str | None:
        """Register named types reachable from ``schema``; the key of ``schema`` if named."""
        if isinstance(schema, str):
            return None
        if isinstance(schema, list):
            for branch in schema:
                self._visit(branch, scope)
            return None
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            scope.named[schema["name"]] = schema
            if kind == "fixed":
                return None
            key = self._key(schema)
            self.keys_by_def[id(schema)] = key
            if key not in self.types:
                self.types[key] = NamedType(
                    schema["name"],
                    "enum" if kind == "enum" else "record",
                    schema,
                    scope.source,
                    scope=scope,
                )
            if kind != "enum":  # always: fills this file's scope with every named type
                for f in schema["fields"]:
                    self._visit(f["type"], scope)
            return key
        if kind == "array":
            self._visit(schema["items"], scope)
        elif kind == "map":
            self._visit(schema["values"], scope)
        return None

    def _name_classes(self) -> None:
        by_short: dict[str, set[str]] = {}
        by_full: dict[str, list[str]] = {}
        for key, t in self.types.items():
            by_short.setdefault(t.full_name.rsplit(".", 1)[-1], set()).add(t.full_name)
            by_full.setdefault(t.full_name, []).append(key)
        # a class must not shadow a builtin the generated code names either
        taken: set[str] = FIELD_RESERVED | {
            "type",
            "isinstance",
            "all",
            "len",
            "repr",
            "TypeError",
            "ValueError",
        }
        for full_name in sorted(by_full):
            short = full_name.rsplit(".", 1)[-1]
            base = short if len(by_short[short]) == 1 else camel(full_name)
            for i, key in enumerate(by_full[full_name]):  # walk order is deterministic
                name = unique_name(base if i == 0 else f"{base}{i + 1}", taken)
                taken.add(name)
                self.types[key].class_name = name
        for t in self.types.values():
            if t.kind == "enum":
                used: set[str] = set()
                for sym in t.definition["symbols"]:
                    member = sym
                    if (
                        keyword.iskeyword(member)
                        or hasattr(str, member)
                        or member in ("name", "value", "mro")
                        or (member.startswith("_") and member.endswith("_"))
                    ):
                        member += "_"
                    member = unique_name(member, used)
                    used.add(member)
                    t.members[sym] = member

    def resolve(self, schema: Any, scope: Scope) -> Any:
        """Follow a name reference; reduce ``{"type": "int"}`` (no usable logicalType) to
        ``"int"`` so the rest of the generator sees one spelling per type."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return scope.named[schema]
        if (
            isinstance(schema, Mapping)
            and schema.get("type") in PRIMITIVES
            and logical_type(schema) is None
        ):
            return schema["type"]
        return schema

    def named(self, schema: Mapping[str, Any]) -> NamedType:
        return self.types[self.keys_by_def[id(schema)]]


def logical_type(schema: Any) -> str | None:
    """The logical type a generated class represents (``long-timestamp-millis``,
    ``decimal`` ...), or None where the base type is used as it is."""
    if isinstance(schema, Mapping):
        base, logical = schema.get("type"), schema.get("logicalType")
        if isinstance(base, str) and isinstance(logical, str):
            combo = f"{base}-{logical}"
            if combo in (
                "long-timestamp-millis",
                "long-timestamp-micros",
                "long-local-timestamp-millis",
                "long-local-timestamp-micros",
                "int-date",
                "int-time-millis",
                "long-time-micros",
                "string-uuid",
            ):
                return combo
            if logical == "decimal" and base in ("bytes", "fixed"):
                return "decimal"
    return None
