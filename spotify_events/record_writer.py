"""Per-schema Avro writers generated as Python source: the fast path of ``log()``.

The general path checks a record's types (:mod:`spotify_events.typecheck`), then
lets fastavro's writer walk the schema a second time, resolving each union by
trying its branches. For a record whose every value has exactly the type its
field declares, which is nearly every record a service logs, one generated
function can check and write in a single pass: straight-line code per field,
enum symbols and field defaults turned into bytes once, no union search. It
halves the cost of an encode (benchmarks/RESULTS.md, "Figures behind choices").

The promise that makes it safe: **a generated writer accepts only records the
general path accepts, and writes the same bytes.** Anything else — a missing
field without a default, an unknown field, a value of another Python type (a
subclass, a tuple for an array, a datetime for a timestamp), a float that does
not fit 32 bits — raises (TypeError for a value it does not take, whatever a
library call raises otherwise), and the caller falls back to the general path,
which encodes the record or explains what is wrong with it. Schemas with constructs
whose fastavro encoding depends on more than the value's Python type (unions
with more than one non-null branch, logical types other than the integer-based
ones) get no generated writer at all: the generator raises NotImplementedError
for them internally. tests/sdk/test_record_writer.py compares
both paths on random records of every example schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from .container import write_long
from .typecheck import INTEGER_RANGES

RecordWriter = Callable[[dict[str, Any]], bytes]

#: Logical types that fastavro writes as their underlying int or long when the
#: value is a plain int (it converts only date/time objects, which fall back here).
_INTEGER_LOGICAL_TYPES = frozenset(
    {
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    }
)
_MISSING = object()


class _Generator:
    """Turns one parsed (fastavro) record schema into the source of a writer."""

    def __init__(self, named: Mapping[str, Any], default_bytes: Callable[[Any], bytes]) -> None:
        self.named = dict(named)
        self.default_bytes = default_bytes
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.records: dict[str, str] = {}  # record full name -> function name

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema in self.named:
            return self.named[schema]
        return schema

    def record_function(self, schema: Mapping[str, Any]) -> str:
        """Define (once) a function ``(record, out)`` writing a record; returns its name."""
        full_name = schema["name"]
        if full_name not in self.records:
            fn = f"_record{len(self.records)}"
            self.records[full_name] = fn
            self.named[full_name] = schema
            self.lines += [f"def {fn}(r, out):", *self.record_body(schema)]
        return self.records[full_name]

    def entry_function(self, schema: Mapping[str, Any]) -> str:
        """The writer itself: the top record's body inlined between creating the buffer
        and returning its bytes (a call layer costs as much as a field)."""
        self.record_function(schema)  # for references to the top record from inside it
        self.lines += ["def _write(r):", "    out = bytearray()", *self.record_body(schema)]
        self.lines.append("    return bytes(out)")
        return "_write"

    def record_body(self, schema: Mapping[str, Any]) -> list[str]:
        body = ["    if type(r) is not dict: raise TypeError", "    get = r.get", "    n = 0"]
        for field in schema["fields"]:
            body.append(f"    v = get({field['name']!r}, _MISSING)")
            encoded = self.encoded_default(field)
            if encoded is None:
                body.append("    if v is _MISSING: raise TypeError")
            else:
                body.append(f"    if v is _MISSING: out += {self.constant(encoded)}")
            body.append("    else:")
            body.append("        n += 1")
            body.extend(self.write(field["type"], "v", "        "))
        body.append("    if n != len(r): raise TypeError  # an unknown field")
        return body

    def encoded_default(self, field: Mapping[str, Any]) -> bytes | None:
        """The bytes the general path writes for ``field`` left out of a record, or None
        when it has no default or the general path cannot write it (fastavro refuses a
        ``fixed`` default given as a JSON string, say): such a record falls back."""
        if "default" not in field:
            return None
        try:
            return self.default_bytes(field)
        except Exception:
            return None

    def write(self, schema: Any, var: str, indent: str) -> list[str]:
        """Lines that check ``var`` against ``schema`` and append its encoding to ``out``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return self.union(schema, var, indent)
        if isinstance(schema, str):
            return self.primitive(schema, var, indent)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            if logical not in _INTEGER_LOGICAL_TYPES or kind not in ("int", "long"):
                raise NotImplementedError(f"logical type {logical} on {kind}")
            return self.primitive(kind, var, indent)
        if kind == "enum":
            self.named[schema["name"]] = schema
            codes = self.constant({s: _long_bytes(i) for i, s in enumerate(schema["symbols"])})
            return [
                f"{indent}if type({var}) is not str: raise TypeError",
                f"{indent}out += {codes}[{var}]",
            ]
        if kind == "fixed":
            self.named[schema["name"]] = schema
            size = int(schema["size"])
            return [
                f"{indent}if type({var}) is not bytes or len({var}) != {size}: raise TypeError",
                f"{indent}out += {var}",
            ]
        if kind in ("record", "error"):
            return [f"{indent}{self.record_function(schema)}({var}, out)"]
        if kind == "array":
            item = f"x{len(indent)}"
            return [
                f"{indent}if type({var}) is not list: raise TypeError",
                f"{indent}if {var}:",
                f"{indent}    write_long(out, len({var}))",
                f"{indent}    for {item} in {var}:",
                *self.write(schema["items"], item, indent + "        "),
                f"{indent}out.append(0)",
            ]
        if kind == "map":
            key, value = f"k{len(indent)}", f"x{len(indent)}"
            return [
                f"{indent}if type({var}) is not dict: raise TypeError",
                f"{indent}if {var}:",
                f"{indent}    write_long(out, len({var}))",
                f"{indent}    for {key}, {value} in {var}.items():",
                *self.primitive("string", key, indent + "        "),
                *self.write(schema["values"], value, indent + "        "),
                f"{indent}out.append(0)",
            ]
        return self.primitive(kind, var, indent)

    def union(self, branches: list[Any], var: str, indent: str) -> list[str]:
        """Only ``null`` plus one other branch: which one fastavro picks then depends
        on nothing but ``var is None``."""
        others = [i for i, b in enumerate(branches) if b != "null"]
        nulls = [i for i, b in enumerate(branches) if b == "null"]
        if len(others) != 1 or len(nulls) != 1:
            raise NotImplementedError(f"union {branches!r}")
        other = others[0]
        return [
            f"{indent}if {var} is None: out += {_long_bytes(nulls[0])!r}",
            f"{indent}else:",
            f"{indent}    out += {_long_bytes(other)!r}",
            *self.write(branches[other], var, indent + "    "),
        ]

    def primitive(self, kind: str, var: str, indent: str) -> list[str]:
        if kind == "null":
            return [f"{indent}if {var} is not None: raise TypeError"]
        if kind == "boolean":
            return [
                f"{indent}if {var} is True: out.append(1)",
                f"{indent}elif {var} is False: out.append(0)",
                f"{indent}else: raise TypeError",
            ]
        if kind in INTEGER_RANGES:
            low, high = INTEGER_RANGES[kind]
            return [
                f"{indent}if type({var}) is not int or not {low} <= {var} <= {high}: raise TypeError",
                f"{indent}write_long(out, {var})",
            ]
        if kind in ("float", "double"):
            pack = "_pack_float" if kind == "float" else "_pack_double"
            return [
                f"{indent}if type({var}) is not float: raise TypeError",
                f"{indent}out += {pack}({var})",
            ]
        if kind in ("string", "bytes"):
            data = f"b{len(indent)}"
            encoded = f"{var}.encode()" if kind == "string" else var
            return [
                f"{indent}if type({var}) is not {'str' if kind == 'string' else 'bytes'}: raise TypeError",
                f"{indent}{data} = {encoded}",
                f"{indent}if len({data}) < 64: out.append(len({data}) << 1)",
                f"{indent}else: write_long(out, len({data}))",
                f"{indent}out += {data}",
            ]
        raise NotImplementedError(f"type {kind!r}")


def _long_bytes(value: int) -> bytes:
    out = bytearray()
    write_long(out, value)
    return bytes(out)


def compile_record_writer(
    parsed_schema: Mapping[str, Any],
    named: Mapping[str, Any],
    default_bytes: Callable[[Any], bytes],
) -> RecordWriter | None:
    """A writer for ``parsed_schema`` (fastavro-parsed, its named types in ``named``),
    or None when the schema uses a construct this module leaves to fastavro.

    ``default_bytes(field)`` returns the encoding of a field's default, computed by
    the general path so that a missing field is written exactly as fastavro writes it.
    The writer raises (any exception) for a record it does not handle."""
    generator = _Generator(named, default_bytes)
    try:
        entry = generator.entry_function(parsed_schema)
    except NotImplementedError:  # a construct left to fastavro
        return None
    namespace: dict[str, Any] = {
        "_MISSING": _MISSING,
        "write_long": write_long,
        "_pack_float": struct.Struct("<f").pack,
        "_pack_double": struct.Struct("<d").pack,
        **generator.constants,
    }
    exec("\n".join(generator.lines), namespace)  # generated above from the schema alone
    writer: RecordWriter = namespace[entry]
    return writer
