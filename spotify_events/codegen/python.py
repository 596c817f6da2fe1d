"""The Python renderer of ``spotify-events codegen``.

Owns turning the event schemas of a :class:`SchemaRegistry` into one Python
module of frozen, slotted, keyword-only dataclasses (one per event type and per
nested record) and ``str``-valued enums. The output is a pure function of the
schemas: classes in sorted order, no timestamps, ASCII only, so regenerating
gives the same bytes and ``--check`` can compare files byte for byte.

The generated module imports only the standard library, passes ``ruff check``
and ``mypy --strict``, and gives each record:

* ``__avro_name__`` (full name); events also ``__event_type__``,
  ``__fingerprint__`` (8 bytes) and ``__fingerprint_hex__``;
* ``__post_init__`` with one inline ``isinstance`` test per field (``TypeError``
  naming class and field) plus range/shape checks for scalars (``ValueError``);
* ``to_avro()`` returning the dict fastavro's writers accept for the schema.

Names and the set of types come from :class:`.model.TypeModel`; this module
decides only how each looks in Python.
"""

from __future__ import annotations

import datetime
import decimal
import keyword
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from ..errors import SchemaError
from ..schemas import EventSchema, SchemaRegistry
from .model import FIELD_RESERVED, NamedType, Scope, TypeModel, logical_type, unique_name

__all__ = ["generate_python", "render_module"]

#: Soft target for generated line length: ruff's default (88), under the project's 100.
LINE = 88
INDENT = "    "

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


# -- small literal helpers ----------------------------------------------------------------
def py_str(text: str, quote: str = '"') -> str:
    """A double-quoted, ASCII-only Python string literal for ``text``."""
    return quote + _escape(text, quote) + quote


def _escape(text: str, quote: str) -> str:
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def py_bytes(data: bytes) -> str:
    out: list[str] = []
    for b in data:
        ch = chr(b)
        if ch in '\\"':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return 'b"' + "".join(out) + '"'


def docstring(text: str, indent: str, trailer: Iterable[str] = ()) -> list[str]:
    """Lines of a triple-quoted docstring, wrapped to fit :data:`LINE`."""
    width = max(40, LINE - len(indent) - 3)  # room for the opening quotes
    paragraphs: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        words = " ".join(para.split())
        if words:
            paragraphs.append(words)
    paragraphs.extend(trailer)
    lines: list[str] = []
    for i, para in enumerate(paragraphs):
        if i:
            lines.append("")
        wrapped = textwrap.wrap(
            _escape(para, ""), width=width, break_long_words=False, break_on_hyphens=False
        )
        lines.extend(wrapped)
    if not lines:
        return []
    # keep the literal well-formed: no inner triple quotes, no quote right before the end
    lines = [ln.replace('"""', '\\"\\"\\"') for ln in lines]
    if lines[-1].endswith('"'):
        lines[-1] = lines[-1][:-1] + '\\"'
    if len(lines) == 1 and len(indent) + len(lines[0]) + 6 <= LINE:
        return [f'{indent}"""{lines[0]}"""']
    body = [f'{indent}"""{lines[0]}']
    body.extend(f"{indent}{ln}" if ln else "" for ln in lines[1:])
    body.append(f'{indent}"""')
    return body


@dataclass
class _Ctx:
    """Per-field code-generation state: unique comprehension variable names."""

    depth: int = 0

    def var(self) -> str:
        self.depth += 1
        return f"e{self.depth - 1}"


class _Generator:
    def __init__(self, model: TypeModel, sources: Mapping[str, str]) -> None:
        self.model = model
        self.events = model.events
        self.types = model.types
        self.sources = sources  # EventSchema.source -> path shown in the header
        self.imports: set[str] = {"dataclasses as _dc", "typing as _t"}
        self.uses_decimal_check = False

    def annotation(self, schema: Any, scope: Scope) -> str:
        schema = self.model.resolve(schema, scope)
        if isinstance(schema, list):
            parts: list[str] = []
            for branch in schema:
                if self.model.resolve(branch, scope) == "null":
                    continue
                ann = self.annotation(branch, scope)
                if ann not in parts:
                    parts.append(ann)
            if any(self.model.resolve(b, scope) == "null" for b in schema):
                parts.append("None")
            return " | ".join(parts)
        if isinstance(schema, str):
            return {
                "null": "None",
                "boolean": "bool",
                "int": "int",
                "long": "int",
                "float": "float",
                "double": "float",
                "bytes": "bytes",
                "string": "str",
            }[schema]
        logical = logical_type(schema)
        if logical is not None:
            if "timestamp" in logical:
                self.imports.add("datetime as _dt")
                return "_dt.datetime"
            if logical == "int-date":
                self.imports.add("datetime as _dt")
                return "_dt.date"
            if "time-" in logical:
                self.imports.add("datetime as _dt")
                return "_dt.time"
            if logical == "string-uuid":
                self.imports.add("uuid as _uuid")
                return "_uuid.UUID"
            self.imports.add("decimal as _decimal")
            return "_decimal.Decimal"
        kind = schema["type"]
        if kind in ("record", "error", "enum"):
            return self.model.named(schema).class_name
        if kind == "fixed":
            return "bytes"
        if kind == "array":
            return f"list[{self.annotation(schema['items'], scope)}]"
        if kind == "map":
            return f"dict[str, {self.annotation(schema['values'], scope)}]"
        if isinstance(kind, (str, list, Mapping)):  # {"type": "string"} and the like
            return self.annotation(kind, scope)
        raise SchemaError(f"{scope.source}: unsupported Avro type {schema!r:.80}")

    def type_check(self, schema: Any, var: str, scope: Scope, ctx: _Ctx) -> str:
        """A boolean expression: ``var`` has the Python type for ``schema`` (deep)."""
        schema = self.model.resolve(schema, scope)
        if isinstance(schema, list):
            parts: list[str] = []
            classes: list[str] = []  # merged into one isinstance() (ruff SIM101)
            for branch in schema:
                part = self.type_check(branch, var, scope, ctx)
                simple = re.fullmatch(rf"isinstance\({re.escape(var)}, ([\w.]+)\)", part)
                if simple:
                    if not classes:
                        parts.append("<isinstance>")
                    if simple.group(1) not in classes:
                        classes.append(simple.group(1))
                elif part not in parts:
                    parts.append(part)
            if classes:
                merged = classes[0] if len(classes) == 1 else "(" + ", ".join(classes) + ")"
                parts[parts.index("<isinstance>")] = f"isinstance({var}, {merged})"
            return "(" + " or ".join(parts) + ")" if len(parts) > 1 else parts[0]
        if isinstance(schema, str):
            return {
                "null": f"{var} is None",
                "boolean": f"isinstance({var}, bool)",
                # type() is: bool is an int subclass but never a valid Avro int
                "int": f"type({var}) is int",
                "long": f"type({var}) is int",
                "float": f"(isinstance({var}, float) or type({var}) is int)",
                "double": f"(isinstance({var}, float) or type({var}) is int)",
                "bytes": f"isinstance({var}, bytes)",
                "string": f"isinstance({var}, str)",
            }[schema]
        logical = logical_type(schema)
        if logical == "int-date":
            self.imports.add("datetime as _dt")
            return f"(isinstance({var}, _dt.date) and not isinstance({var}, _dt.datetime))"
        if logical is not None:
            return f"isinstance({var}, {self.annotation(schema, scope)})"
        kind = schema["type"]
        if kind in ("record", "error", "enum"):
            return f"isinstance({var}, {self.model.named(schema).class_name})"
        if kind == "fixed":
            return f"isinstance({var}, bytes)"
        if kind == "array":
            e = ctx.var()
            inner = self.type_check(schema["items"], e, scope, ctx)
            return f"(isinstance({var}, list) and all({inner} for {e} in {var}))"
        if kind == "map":
            k, v = ctx.var(), ctx.var()
            inner = self.type_check(schema["values"], v, scope, ctx)
            return (
                f"(isinstance({var}, dict) and all(isinstance({k}, str) and {inner} "
                f"for {k}, {v} in {var}.items()))"
            )
        return self.type_check(kind, var, scope, ctx)

    def value_checks(self, schema: Any, var: str, scope: Scope) -> list[tuple[str, str]]:
        """(condition that is True when bad, problem) for scalar constraints.

        Only applied to a field's own value (or the non-null branch of an
        optional): values inside containers get the type check only and are
        range-checked by the Avro encoder.
        """
        schema = self.model.resolve(schema, scope)
        if isinstance(schema, list):
            branches = [self.model.resolve(b, scope) for b in schema]
            non_null = [b for b in branches if b != "null"]
            if len(non_null) != 1:
                return []
            checks = self.value_checks(non_null[0], var, scope)
            if len(non_null) == len(branches):
                return checks
            return [(f"{var} is not None and {cond}", problem) for cond, problem in checks]
        if schema == "int":
            return [(f"not {INT_MIN} <= {var} <= {INT_MAX}", "out of range for an Avro int")]
        if schema == "long":
            return [(f"not {LONG_MIN} <= {var} <= {LONG_MAX}", "out of range for an Avro long")]
        if isinstance(schema, str):
            return []
        logical = logical_type(schema)
        if logical in ("long-timestamp-millis", "long-timestamp-micros"):
            return [(f"{var}.tzinfo is None", "must be a timezone-aware datetime")]
        if logical == "decimal":
            self.uses_decimal_check = True
            precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
            return [
                (
                    f"not _se_decimal_ok({var}, {precision}, {scale})",
                    f"does not fit decimal(precision={precision}, scale={scale})",
                )
            ]
        if schema.get("type") == "fixed":
            size = int(schema["size"])
            return [(f"len({var}) != {size}", f"must be exactly {size} bytes")]
        return []

    def to_avro(self, schema: Any, var: str, scope: Scope, ctx: _Ctx) -> str:
        """Expression converting ``var`` to what fastavro writes (identity when it can)."""
        schema = self.model.resolve(schema, scope)
        if isinstance(schema, list):
            branches = [self.model.resolve(b, scope) for b in schema]
            non_null = [b for b in branches if b != "null"]
            has_null = len(non_null) != len(branches)
            convs = [(b, self.to_avro(b, var, scope, ctx)) for b in non_null]
            if len(non_null) == 1:
                conv = convs[0][1]
                if conv == var or not has_null:
                    return conv
                return f"(None if {var} is None else {conv})"
            # several branches: name named types explicitly (fastavro's tuple notation),
            # so a str-valued enum or a record is never written as the wrong branch
            out = var
            for b, conv in reversed(convs):
                if isinstance(b, Mapping) and b.get("type") in ("record", "error", "enum"):
                    named = self.model.named(b)
                    tagged = f"({py_str(named.full_name)}, {conv})"
                    out = f"{tagged} if isinstance({var}, {named.class_name}) else {out}"
            return out if out == var else f"({out})"
        if isinstance(schema, str):
            return var
        kind = schema["type"]
        if kind in ("record", "error"):
            return f"{var}.to_avro()"
        if kind == "enum":
            return f"{var}.value"
        if kind == "array":
            e = ctx.var()
            inner = self.to_avro(schema["items"], e, scope, ctx)
            return var if inner == e else f"[{inner} for {e} in {var}]"
        if kind == "map":
            k, v = ctx.var(), ctx.var()
            inner = self.to_avro(schema["values"], v, scope, ctx)
            return var if inner == v else f"{{{k}: {inner} for {k}, {v} in {var}.items()}}"
        return var  # fixed and logical types: fastavro converts them itself

    # defaults --------------------------------------------------------------------------
    def default(self, schema: Any, value: Any, scope: Scope, where: str) -> tuple[str, bool]:
        """(Python expression, is_mutable) for a JSON default of ``schema``."""
        schema = self.model.resolve(schema, scope)
        bad = SchemaError(f"{scope.source}: {where}: default {value!r:.60} does not match its type")
        if isinstance(schema, list):
            for branch in schema:  # the spec says the first branch; fastavro accepts any
                try:
                    return self.default(branch, value, scope, where)
                except SchemaError:
                    continue
            raise bad
        logical = logical_type(schema)
        base = schema if isinstance(schema, str) else schema.get("type")
        if isinstance(base, (list, Mapping)):
            return self.default(base, value, scope, where)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if logical is not None:
            self.annotation(schema, scope)  # registers the import
            if "timestamp" in logical and is_int:
                unit = 1000 if "millis" in logical else 1
                epoch = datetime.datetime(1970, 1, 1)
                ts = epoch + datetime.timedelta(microseconds=value * unit)
                args = f"{ts.year}, {ts.month}, {ts.day}, {ts.hour}, {ts.minute}, {ts.second}"
                args += f", {ts.microsecond}"
                tz = "" if "local" in logical else ", tzinfo=_dt.timezone.utc"
                return f"_dt.datetime({args}{tz})", False
            if logical == "int-date" and is_int:
                d = datetime.date(1970, 1, 1) + datetime.timedelta(days=value)
                return f"_dt.date({d.year}, {d.month}, {d.day})", False
            if "time-" in logical and is_int:
                unit = 1000 if "millis" in logical else 1
                us = value * unit
                t = datetime.time(
                    us // 3_600_000_000, us // 60_000_000 % 60, us // 1_000_000 % 60, us % 1_000_000
                )
                return f"_dt.time({t.hour}, {t.minute}, {t.second}, {t.microsecond})", False
            if logical == "string-uuid" and isinstance(value, str):
                return f"_uuid.UUID({py_str(value)})", False
            if logical == "decimal" and isinstance(value, str):
                raw = value.encode("latin-1")
                unscaled = int.from_bytes(raw, "big", signed=True) if raw else 0
                scale = int(schema.get("scale", 0))
                dec = decimal.Decimal(unscaled).scaleb(-scale)
                return f"_decimal.Decimal({py_str(str(dec))})", False
            raise bad
        if base == "null" and value is None:
            return "None", False
        if base == "boolean" and isinstance(value, bool):
            return repr(value), False
        if base in ("int", "long") and is_int:
            return repr(value), False
        if base in ("float", "double") and isinstance(value, (int, float)) and value is not True:
            if isinstance(value, bool):
                raise bad
            f = float(value)
            return (repr(f) if math.isfinite(f) else f"float({py_str(repr(f))})"), False
        if base == "string" and isinstance(value, str):
            return py_str(value), False
        if base in ("bytes", "fixed") and isinstance(value, str):
            try:
                return py_bytes(value.encode("latin-1")), False
            except UnicodeEncodeError:
                raise bad from None
        if base == "enum" and isinstance(value, str) and value in schema["symbols"]:
            named = self.model.named(schema)
            return f"{named.class_name}.{named.members[value]}", False
        if base == "array" and isinstance(value, list):
            items = [self.default(schema["items"], v, scope, where)[0] for v in value]
            return "[" + ", ".join(items) + "]", True
        if base == "map" and isinstance(value, dict):
            vals = [
                f"{py_str(k)}: {self.default(schema['values'], v, scope, where)[0]}"
                for k, v in sorted(value.items())
            ]
            return "{" + ", ".join(vals) + "}", True
        if base in ("record", "error") and isinstance(value, dict):
            named = self.model.named(schema)
            fields: list[str] = []
            for f in schema["fields"]:
                attr = self.attr_names(named)[f["name"]]
                if f["name"] in value:
                    code = self.default(f["type"], value[f["name"]], scope, where)[0]
                elif "default" in f:
                    code = self.default(f["type"], f["default"], scope, where)[0]
                else:
                    raise bad
                fields.append(f"{attr}={code}")
            return f"{named.class_name}({', '.join(fields)})", True
        raise bad

    def attr_names(self, t: NamedType) -> dict[str, str]:
        class_names = {n.class_name for n in self.types.values()}
        taken = set(FIELD_RESERVED) | class_names
        out: dict[str, str] = {}
        names = {f["name"] for f in t.definition["fields"]}
        for f in t.definition["fields"]:
            name = f["name"]
            attr = name
            if attr in taken or keyword.iskeyword(attr):
                attr = unique_name(attr + "_", taken | set(out.values()) | set(names))
            out[name] = attr
        return out

    # rendering -------------------------------------------------------------------------
    def render_enum(self, t: NamedType) -> list[str]:
        self.imports.add("enum as _enum")
        lines = [f"class {t.class_name}(str, _enum.Enum):"]
        trailer = [f"Avro enum ``{t.full_name}``; each value is the Avro symbol."]
        lines += docstring(t.definition.get("doc") or "", INDENT, trailer)
        lines.append("")
        for sym, member in t.members.items():
            lines.append(f"{INDENT}{member} = {py_str(sym)}")
        return lines

    def render_record(self, t: NamedType) -> list[str]:
        d = t.definition
        assert t.scope is not None
        scope = t.scope
        attrs = self.attr_names(t)
        cls = t.class_name
        ev = t.event
        trailer = [f"Avro record ``{t.full_name}``."]
        if ev is not None:
            trailer = [
                f"Event type ``{t.full_name}`` from ``{self.sources[ev.source]}``, "
                f"fingerprint ``{ev.fingerprint_hex}``."
            ]
        lines = ["@_dc.dataclass(frozen=True, slots=True, kw_only=True)", f"class {cls}:"]
        lines += docstring(d.get("doc") or "", INDENT, trailer)
        lines.append("")
        lines.append(f"{INDENT}__avro_name__: _t.ClassVar[str] = {py_str(t.full_name)}")
        if ev is not None:
            lines.append(f"{INDENT}__event_type__: _t.ClassVar[str] = {py_str(ev.full_name)}")
            lines.append(
                f"{INDENT}__fingerprint__: _t.ClassVar[bytes] = "
                f"bytes.fromhex({py_str(ev.fingerprint_hex)})"
            )
            lines.append(
                f"{INDENT}__fingerprint_hex__: _t.ClassVar[str] = {py_str(ev.fingerprint_hex)}"
            )
        post: list[str] = []
        to_items: list[tuple[str, str]] = []
        for f in d["fields"]:
            attr = attrs[f["name"]]
            where = f"{t.full_name}.{f['name']}"
            ann = self.annotation(f["type"], scope)
            decl, default = f"{attr}: {ann}", None
            if "default" in f:
                code, mutable = self.default(f["type"], f["default"], scope, where)
                if mutable:
                    if code == "[]":
                        code = "_dc.field(default_factory=list)"
                    elif code == "{}":
                        code = "_dc.field(default_factory=dict)"
                    else:
                        code = f"_dc.field(default_factory=lambda: {code})"
                elif code.startswith("_uuid."):  # not a known-immutable call for RUF009
                    code = f"_dc.field(default_factory=lambda: {code})"
                default = code
            lines.append("")
            if default is None:
                lines.append(INDENT + decl)
            else:
                lines += format_expr(default, INDENT, lead=f"{decl} = ")
            lines += docstring(f.get("doc") or "", INDENT)
            var = f"self.{attr}"
            check = self.type_check(f["type"], var, scope, _Ctx())
            post += self._if(
                _negate(check),
                f"_se_wrong_type({py_str(cls)}, {py_str(f['name'])}, "
                f"{py_str(_public(ann))}, {var})",
            )
            for cond, problem in self.value_checks(f["type"], var, scope):
                post += self._if(
                    cond,
                    f"_se_bad_value({py_str(cls)}, {py_str(f['name'])}, {py_str(problem)}, {var})",
                )
            conv = self.to_avro(f["type"], var, scope, _Ctx())
            to_items.append((py_str(f["name"]), conv))
        lines.append("")
        lines.append(f"{INDENT}def __post_init__(self) -> None:")
        lines += post or [f"{INDENT * 2}pass"]
        lines.append("")
        lines.append(f"{INDENT}def to_avro(self) -> dict[str, _t.Any]:")
        lines.append(f'{INDENT * 2}"""This record as the dict fastavro writes with its schema."""')
        if to_items:
            lines.append(f"{INDENT * 2}return {{")
            lines += self._wrap_items(to_items, INDENT * 3)
            lines.append(f"{INDENT * 2}}}")
        else:
            lines.append(f"{INDENT * 2}return {{}}")
        return lines

    def _wrap_items(self, items: list[tuple[str, str]], indent: str) -> list[str]:
        out: list[str] = []
        for key, value in items:
            out += format_expr(value, indent, lead=f"{key}: ", trail=",")
        return out

    def _if(self, cond: str, call: str) -> list[str]:
        ind2, ind3 = INDENT * 2, INDENT * 3
        head = f"{ind2}if {cond}:"
        lines = [head]
        if len(head) > LINE:
            lines = [f"{ind2}if (", *format_expr(cond, ind3), f"{ind2}):"]
        return lines + format_expr(call, ind3)

    def render(self, header: list[str]) -> str:
        enums = sorted((t for t in self.types.values() if t.kind == "enum"), key=_by_class)
        records = sorted((t for t in self.types.values() if t.kind == "record"), key=_by_class)
        blocks: list[list[str]] = []
        blocks += [self.render_enum(t) for t in enums]
        record_blocks = [self.render_record(t) for t in records]
        blocks += record_blocks
        registry = ["#: Generated class of each event type, by full name."]
        registry.append("EVENT_CLASSES: _t.Final[dict[str, type[_t.Any]]] = {")
        for ev in self.events:
            cls = next(t.class_name for t in records if t.event is ev)
            registry.append(f"{INDENT}{py_str(ev.full_name)}: {cls},")
        registry.append("}")
        blocks.append(registry)

        out = list(header)
        out.append("")
        out.append("from __future__ import annotations")
        out.append("")
        out += [f"import {imp}" for imp in sorted(self.imports)]
        out += ["", ""]
        out += _HELPERS_TYPE
        if any("_se_bad_value" in ln for b in record_blocks for ln in b):
            out += ["", "", *_HELPERS_VALUE]
        if self.uses_decimal_check:
            out += ["", "", *_HELPERS_DECIMAL]
        for block in blocks:
            out += ["", "", *block]
        return "\n".join(out) + "\n"


def _scan(expr: str) -> list[tuple[int, int]]:
    """(index, bracket depth) of each character outside string literals."""
    out: list[tuple[int, int]] = []
    depth, quote, esc = 0, "", False
    for i, ch in enumerate(expr):
        if quote:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
            continue
        if ch in ")]}":
            depth -= 1
        out.append((i, depth))
        if ch in "([{":
            depth += 1
    return out


def _top_level_split(expr: str, sep: str) -> list[str]:
    """Split at ``sep`` where it is outside brackets and strings."""
    starts = [i for i, d in _scan(expr) if d == 0 and expr.startswith(sep, i)]
    if not starts:
        return [expr]
    parts, prev = [], 0
    for i in starts:
        parts.append(expr[prev:i])
        prev = i + len(sep)
    parts.append(expr[prev:])
    return parts


def _closing(expr: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index``."""
    depth_at_open = next(d for i, d in _scan(expr) if i == open_index)
    for i, d in _scan(expr):
        if i > open_index and d == depth_at_open and expr[i] in ")]}":
            return i
    return -1


def format_expr(expr: str, indent: str, lead: str = "", trail: str = "") -> list[str]:
    """Lines for ``lead + expr + trail`` at ``indent``, broken black-style when too long.

    Only breaks inside brackets (where a newline changes nothing), at the
    places the generator's own expressions have: conditional expressions,
    boolean chains, call arguments, comprehension clauses. What cannot be
    broken stays on one line.
    """
    if len(indent) + len(lead) + len(expr) + len(trail) <= LINE:
        return [f"{indent}{lead}{expr}{trail}"]
    if lead in ("", "else ", "if ", "or ", "and ") and trail in ("", ","):
        for op in (" else ", " if ", " or ", " and "):  # inside brackets: safe to break
            parts = _top_level_split(expr, op)
            if len(parts) > 1:
                lines = format_expr(parts[0], indent, lead=lead)
                for part in parts[1:]:
                    lines += format_expr(part, indent, lead=op.strip() + " ")
                lines[-1] += trail
                return lines
    head, body = "", expr
    if body.startswith("not "):
        head, body = "not ", body[4:]
    opens = [i for i, d in _scan(body) if d == 0 and body[i] in "([{"]
    if not opens or _closing(body, opens[0]) != len(body) - 1:
        return [f"{indent}{lead}{expr}{trail}"]
    open_index = opens[0]
    inner, closer = body[open_index + 1 : -1], body[-1]
    inner_indent = indent + INDENT
    lines = [f"{indent}{lead}{head}{body[: open_index + 1]}"]
    pieces = _top_level_split(inner, " for ")
    args = _top_level_split(inner, ", ")
    if len(pieces) == 2:  # a comprehension: element, then its for-clause
        lines += format_expr(pieces[0], inner_indent)
        lines += format_expr("for " + pieces[1], inner_indent)
    elif len(args) > 1 or re.fullmatch(r"[\w.]+", body[:open_index]):
        for arg in args:  # call arguments or display items, one per line, trailing comma
            lines += format_expr(arg, inner_indent, trail=",")
    else:
        lines += format_expr(inner, inner_indent)
    lines.append(f"{indent}{closer}{trail}")
    return lines


def _public(annotation: str) -> str:
    """An annotation as error messages show it: ``datetime.date``, not ``_dt.date``."""
    for alias, module in (("_dt.", "datetime."), ("_decimal.", "decimal."), ("_uuid.", "uuid.")):
        annotation = annotation.replace(alias, module)
    return annotation


def _negate(check: str) -> str:
    """``not check``, spelled ``x is not y`` where ruff (E714) wants that."""
    if not check.startswith("(") and len(_top_level_split(check, " is ")) == 2:
        left, right = _top_level_split(check, " is ")
        return f"{left} is not {right}"
    return f"not {check}"


def _by_class(t: NamedType) -> str:
    return t.class_name


_HELPERS_TYPE = [
    "def _se_wrong_type(cls: str, name: str, expected: str, value: object) -> _t.NoReturn:",
    '    """Raise the TypeError a wrong field type gets: it names the class and the field."""',
    "    shown = repr(value)",
    "    if len(shown) > 60:",
    '        shown = shown[:57] + "..."',
    '    msg = f"{cls}.{name}: expected {expected}, got {type(value).__name__} {shown}"',
    "    raise TypeError(msg)",
]
_HELPERS_VALUE = [
    "def _se_bad_value(cls: str, name: str, problem: str, value: object) -> _t.NoReturn:",
    '    """Raise the ValueError a right-typed but unusable value gets."""',
    "    shown = repr(value)",
    "    if len(shown) > 60:",
    '        shown = shown[:57] + "..."',
    '    msg = f"{cls}.{name}: {problem}, got {shown}"',
    "    raise ValueError(msg)",
]
_HELPERS_DECIMAL = [
    "def _se_decimal_ok(value: _decimal.Decimal, precision: int, scale: int) -> bool:",
    '    """Whether ``value`` can be written as an Avro decimal(precision, scale)."""',
    "    if not value.is_finite():",
    "        return False",
    "    parts = value.as_tuple()",
    "    if not isinstance(parts.exponent, int):",
    "        return False",
    "    return len(parts.digits) <= precision and parts.exponent >= -scale",
]


def _display_paths(
    events: Iterable[EventSchema], schemas_dir: str | PurePath, output: str | PurePath | None
) -> dict[str, str]:
    """Header path of each schema file, the same however the directory was spelled.

    Relative to the generated file's directory when there is one (so
    ``schemas``, ``./schemas`` and an absolute path all give the same header and
    ``--check`` compares like with like), else relative to the schema directory.
    """
    root = Path(schemas_dir).resolve()
    base = Path(output).resolve().parent if output is not None else root
    out: dict[str, str] = {}
    for ev in events:
        src = Path(ev.source).resolve()
        try:
            rel = os.path.relpath(src, base)
        except ValueError:  # another drive on Windows
            rel = os.path.relpath(src, root)
        out[ev.source] = PurePath(rel).as_posix()
    return out


def render_module(
    registry: SchemaRegistry,
    schemas_dir: str | PurePath,
    output: str | PurePath | None = None,
) -> str:
    """Python source for every event type in ``registry`` (each type's writer version).

    ``output`` is where the module will be written; the header's schema paths are
    relative to it.
    """
    events = [registry.get(name) for name in registry.event_types]
    older = sorted(v.source for name in registry.event_types for v in registry.versions(name)[:-1])
    paths = _display_paths([*events, *registry.all_versions()], schemas_dir, output)
    where = "this file" if output is not None else "the schema directory"
    header = ["# Code generated by spotify-events codegen. DO NOT EDIT."]
    doc = [
        '"""Typed event classes generated from Avro schemas by ``spotify-events codegen``.',
        "",
        "Do not edit this file: change the schemas and regenerate it with",
        "``spotify-events codegen SCHEMAS_DIR -o FILE`` (``--check`` tells CI when it is stale).",
        "",
        f"Generated from (schema file relative to {where}, event type, fingerprint):",
        "",
    ]
    for ev in sorted(events, key=lambda e: paths[e.source]):
        doc.append(f"- {_escape(paths[ev.source], '')}")
        doc.append(f"  {ev.full_name} {ev.fingerprint_hex}")
    if older:
        doc += ["", "Older versions present but not generated (a newer file sorts after them):", ""]
        doc += [f"- {_escape(src, '')}" for src in sorted(paths[s] for s in older)]
    doc.append('"""')
    gen = _Generator(TypeModel(events), paths)
    return gen.render(header + doc)


def generate_python(schemas_dir: str | PurePath, output: str | PurePath | None = None) -> str:
    """Load ``schemas_dir`` and return the source of the module to write at ``output``.

    Raises :class:`SchemaError` naming the file and the problem.
    """
    return render_module(SchemaRegistry(str(schemas_dir)), schemas_dir, output)
