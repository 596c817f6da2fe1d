"""Compiled type checks for records, run before fastavro's writer.

fastavro's writer is fast because it trusts its input: it writes ``True`` into
an ``int`` field as 1, ``1.5`` as 1, ``"yes"`` into a ``boolean`` as true and
``"abc"`` into an ``array<string>`` as three strings, so a wrong-typed record
would enter the queue looking valid. fastavro's validator catches more but
costs about as much as encoding again, and it too accepts ``True`` for ints.

So each schema gets one Python function, generated once from the schema's
source text and compiled with ``exec``: straight-line ``type(v) is int``
style checks, range checks for 32/64-bit ints, set membership for enums,
loops for arrays and maps, nested functions for records. A check returns
``None`` when the record is fine or ``(field path, message)`` for the first
problem; it does not look at missing or unknown fields (the writer's
``strict_allow_default`` mode reports those), nor at strings, enums and their
nullable unions, which the writer itself refuses wrong values for.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import Any

Problem = tuple[str, str]
RecordCheck = Callable[[Mapping[str, Any]], "Problem | None"]

_MISSING = object()
#: What Avro's ``int`` and ``long`` hold (the generated writers check the same ranges).
INTEGER_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_LOGICAL_TYPES: dict[str, tuple[type, ...]] = {
    "timestamp-millis": (_dt.datetime,),
    "timestamp-micros": (_dt.datetime,),
    "local-timestamp-millis": (_dt.datetime,),
    "local-timestamp-micros": (_dt.datetime,),
    "date": (_dt.date,),
    "time-millis": (_dt.time,),
    "time-micros": (_dt.time,),
    "decimal": (decimal.Decimal,),
    "uuid": (uuid.UUID,),
}


class _Compiler:
    """Turns one parsed (fastavro) schema into the source of a check function."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.records: dict[str, str] = {}  # record full name -> function name
        self.named: dict[str, Any] = {}
        self.counter = 0

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def record_function(self, schema: Mapping[str, Any]) -> str:
        """Define (once) a function checking a record; returns its name."""
        full_name = schema["name"]
        if full_name in self.records:
            return self.records[full_name]
        fn = f"_record{len(self.records)}"
        self.records[full_name] = fn
        self.named[full_name] = schema
        body = [f"def {fn}(r, path=''):"]
        body.append("    get = r.get")
        for field in schema["fields"]:
            if self.strict_in_writer(field["type"]):
                continue  # fastavro's writer refuses wrong values of this type by itself
            name = field["name"]
            label = repr(name)
            body.append(f"    v = get({label}, _MISSING)")
            body.append("    if v is not _MISSING:")
            body.append(f"        if not ({self.predicate(field['type'], 'v')}):")
            expected = self.constant(_describe(field["type"]))
            body.append(f"            return (path + {label}, _wrong(v, {expected}))")
            nested = self.nested_check(field["type"], "v", f"path + {label}")
            if nested:
                body.append(f"        p = {nested}")
                body.append("        if p is not None:")
                body.append("            return p")
        body.append("    return None")
        self.lines.extend(body)
        return fn

    def strict_in_writer(self, schema: Any) -> bool:
        """Types fastavro's writer already refuses wrong values for (strings, enums,
        null, and unions of those): checking them again would only cost time."""
        if isinstance(schema, list):
            return all(self.strict_in_writer(branch) for branch in schema)
        if isinstance(schema, str):
            named = self.named.get(schema)
            return schema in ("string", "null") or (named is not None and named["type"] == "enum")
        if schema.get("type") == "enum":
            self.named[schema["name"]] = schema
            return True
        return False

    def predicate(self, schema: Any, var: str) -> str:
        """A boolean expression: does ``var`` have the right Python type (shallow)?"""
        if isinstance(schema, list):
            return " or ".join(f"({self.predicate(branch, var)})" for branch in schema)
        if isinstance(schema, str):
            if schema in self.named:
                return self.predicate(self.named[schema], var)
            return self.primitive(schema, var)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _LOGICAL_TYPES and not isinstance(kind, dict):
            classes = self.constant(_LOGICAL_TYPES[logical])
            return f"isinstance({var}, {classes}) or ({self.primitive(kind, var)})"
        if kind == "enum":
            self.named[schema["name"]] = schema
            symbols = self.constant(frozenset(schema["symbols"]))
            return f"isinstance({var}, str) and {var} in {symbols}"
        if kind == "fixed":
            self.named[schema["name"]] = schema
            return f"isinstance({var}, bytes) and len({var}) == {int(schema['size'])}"
        if kind == "array":
            return f"isinstance({var}, (list, tuple))"
        if kind == "map":
            return f"isinstance({var}, dict)"
        if kind in ("record", "error"):
            self.named[schema["name"]] = schema
            return f"isinstance({var}, dict)"
        return self.primitive(kind, var)

    @staticmethod
    def primitive(kind: str, var: str) -> str:
        if kind == "null":
            return f"{var} is None"
        if kind == "boolean":
            return f"{var} is True or {var} is False"
        if kind in INTEGER_RANGES:
            low, high = INTEGER_RANGES[kind]
            return f"type({var}) is int and {low} <= {var} <= {high}"
        if kind in ("float", "double"):
            return f"type({var}) is float or type({var}) is int"
        if kind == "string":
            return f"isinstance({var}, str)"
        if kind == "bytes":
            return f"isinstance({var}, (bytes, bytearray))"
        return "True"  # an unknown name: leave it to fastavro

    def nested_check(self, schema: Any, var: str, path: str) -> str | None:
        """An expression returning a problem inside containers/records, or None."""
        schema = self.named.get(schema, schema) if isinstance(schema, str) else schema
        if isinstance(schema, list):
            parts = []
            for branch in schema:
                inner = self.nested_check(branch, var, path)
                if inner:
                    parts.append((self.predicate(branch, var), inner))
            if not parts:
                return None
            expr = "None"
            for pred, inner in reversed(parts):
                expr = f"({inner}) if ({pred}) else ({expr})"
            return expr
        if not isinstance(schema, dict):
            return None
        kind = schema["type"]
        if kind in ("record", "error"):
            return f"{self.record_function(schema)}({var}, {path} + '.')"
        if kind == "array":
            if self.strict_in_writer(schema["items"]):
                return None
            return self.element_check(schema["items"], f"enumerate({var})", path, "i")
        if kind == "map":
            return self.element_check(schema["values"], f"{var}.items()", path, "k")
        return None

    def element_check(self, item_schema: Any, iterable: str, path: str, key: str) -> str:
        self.counter += 1
        fn = f"_elements{self.counter}"
        expected = self.constant(_describe(item_schema))
        body = [f"def {fn}(items, path):", f"    for {key}, x in items:"]
        if key == "k":
            body.append("        if not isinstance(k, str):")
            body.append(
                "            return (path + '[' + repr(k) + ']', 'map keys must be strings')"
            )
        body.append(f"        if not ({self.predicate(item_schema, 'x')}):")
        body.append(f"            return (path + '[' + repr({key}) + ']', _wrong(x, {expected}))")
        inner = self.nested_check(item_schema, "x", f"path + '[' + repr({key}) + ']'")
        if inner:
            body.append(f"        p = {inner}")
            body.append("        if p is not None:")
            body.append("            return p")
        body.append("    return None")
        self.lines.extend(body)
        return f"{fn}({iterable}, {path})"


def compile_record_check(parsed_schema: Mapping[str, Any]) -> RecordCheck:
    """Build the check function for a parsed record schema (once per schema)."""
    compiler = _Compiler()
    entry = compiler.record_function(parsed_schema)
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_wrong": _wrong, **compiler.constants}
    exec(
        "\n".join(compiler.lines), namespace
    )  # the source is generated above, from the schema only
    check: RecordCheck = namespace[entry]  # enum tests run only on str values: nothing raises
    return check


def describe_mismatch(value: Any, schema: Any) -> str:
    """ "expected <type>, got <value>" for a value that does not fit ``schema``."""
    return _wrong(value, _describe(schema))


def _wrong(value: Any, expected: str) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"expected {expected}, got {type(value).__name__} {shown}"


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_describe(s) for s in schema)
    if isinstance(schema, str):
        return {"int": "int (32-bit)", "long": "int (64-bit)"}.get(schema, schema)
    kind = schema["type"]
    if schema.get("logicalType") in _LOGICAL_TYPES:
        return f"{schema['logicalType']} ({_describe(kind)})"
    if kind == "enum":
        return f"one of {', '.join(schema['symbols'])}"
    if kind == "array":
        return f"array of {_describe(schema['items'])}"
    if kind == "map":
        return f"map of {_describe(schema['values'])}"
    if kind in ("record", "error", "fixed"):
        return f"{kind} {schema['name']}"
    return _describe(kind)
