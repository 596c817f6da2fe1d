"""The generated writers against the general path (type check + fastavro).

The promise of :mod:`spotify_events.record_writer`: what a generated writer
accepts, the general path accepts too and writes to the same bytes; what it
refuses, the general path decides about. Checked here on random well-typed
records of every example schema, of the nested test schema and of a schema
holding every construct the generator handles, and on the same records broken
in the ways callers break them (wrong types at any depth, subclasses, tuples for
arrays, out-of-range ints, missing and unknown fields).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotify_events.encoding import EventEncoder
from spotify_events.errors import EventValidationError
from spotify_events.schemas import SchemaRegistry, parse_event_schema
from tests.support import ROOT, SCHEMAS

KITCHEN = {
    "type": "record",
    "name": "Kitchen",
    "namespace": "tests.writer",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "flag", "type": "boolean", "default": True},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "longs", "type": {"type": "array", "items": "long"}, "default": []},
        {"name": "doubles", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "maybe_int", "type": ["null", "int"], "default": None},
        {"name": "long_first", "type": ["long", "null"], "default": 5},
        {"name": "maybe_strings", "type": ["null", {"type": "array", "items": "string"}]},
        {"name": "maybe_colour", "type": ["null", "Colour"], "default": None},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}, "default": 0},
        {
            "name": "node",
            "type": {
                "type": "record",
                "name": "Node",
                "fields": [
                    {"name": "v", "type": "int"},
                    {"name": "next", "type": ["null", "Node"], "default": None},
                ],
            },
        },
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
    ],
}


def _registry_schemas() -> list[Any]:
    schemas = list(SchemaRegistry.coerce(str(SCHEMAS)).all_versions())
    schemas += SchemaRegistry.coerce(str(ROOT / "tests" / "sdk" / "schemas_nested")).all_versions()
    return [*schemas, parse_event_schema(KITCHEN)]


SCHEMA_VERSIONS = _registry_schemas()
ENCODERS = {s.full_name: EventEncoder(s) for s in SCHEMA_VERSIONS}
#: Every schema except AdImpression (a decimal) gets a generated writer.
GENERATED = sorted(name for name, enc in ENCODERS.items() if enc._write_exact is not None)


class _Str(str):
    pass


WRONG_VALUES: list[Any] = [
    True, False, 0, 1, -1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 1.5, float("nan"),
    float("inf"), 1e39, "", "x", _Str("RED"), "RED", b"", b"abcd", bytearray(b"abcd"), None,
    [], [1], (1,), ("x",), {}, {"v": 1}, {"k": 1.0}, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
]  # fmt: skip


def _values(schema: Any, named: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Well-typed values for a parsed schema (named types looked up in ``named``)."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b == "null" or depth < 3]
        return st.one_of(*[_values(b, named, depth + 1) for b in branches])
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(schema, dict) and schema.get("name"):
        named[schema["name"]] = schema
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "string": st.text(max_size=80),
        "bytes": st.binary(max_size=80),
    }
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(_values(schema["items"], named, depth + 1), max_size=3 if depth < 3 else 0)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=5), _values(schema["values"], named, depth + 1), max_size=3
        )
    required = {f["name"]: _values(f["type"], named, depth + 1) for f in schema["fields"]}
    optional = {n: required.pop(n) for n in [f["name"] for f in schema["fields"] if "default" in f]}
    return st.fixed_dictionaries(required, optional=optional)


def _records(name: str) -> st.SearchStrategy[dict[str, Any]]:
    encoder = ENCODERS[name]
    return _values(encoder.schema.parsed, dict(encoder._named))  # type: ignore[return-value]


def _general(encoder: EventEncoder, record: Any) -> bytes | tuple[type[Exception], str]:
    try:
        return encoder._encode_general(record)
    except Exception as exc:
        return type(exc), str(exc)


def _fast(encoder: EventEncoder, record: Any) -> bytes | None:
    """The generated writer's bytes, or None where it leaves the record to the general path."""
    assert encoder._write_exact is not None
    try:
        return encoder._write_exact(record)
    except Exception:
        return None


def _dicts_in(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for inner in value.values():
            found += _dicts_in(inner)
    elif isinstance(value, list):
        for inner in value:
            found += _dicts_in(inner)
    return found


@st.composite
def _broken(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A well-typed record with one thing wrong somewhere inside it."""
    record = draw(_records(name))
    target = draw(st.sampled_from(_dicts_in(record)))
    how = draw(st.sampled_from(["replace", "delete", "add", "tuple"]))
    if how == "add" or not target:
        target[draw(st.sampled_from(["unknown", "v", "n", "-type"]))] = draw(
            st.sampled_from(WRONG_VALUES)
        )
    else:
        key = draw(st.sampled_from(sorted(target)))
        if how == "delete":
            del target[key]
        elif how == "tuple" and isinstance(target[key], list):
            target[key] = tuple(target[key])
        else:
            target[key] = draw(st.sampled_from(WRONG_VALUES))
    return record


@pytest.mark.parametrize("name", GENERATED)
@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_well_typed_records_take_the_fast_path_and_match_fastavro(
    name: str, data: st.DataObject
) -> None:
    encoder = ENCODERS[name]
    record = data.draw(_records(name))
    general = _general(encoder, record)
    if isinstance(general, tuple):
        # the general path itself refuses it (a fixed default fastavro cannot write, a
        # 32-bit float overflow): the writer must refuse it too
        assert _fast(encoder, record) is None
        return
    assert _fast(encoder, record) == general
    assert encoder.encode(record) == general


@pytest.mark.parametrize("name", GENERATED)
@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_what_the_writer_accepts_the_general_path_writes_the_same(
    name: str, data: st.DataObject
) -> None:
    encoder = ENCODERS[name]
    record = data.draw(_broken(name))
    general = _general(encoder, record)
    fast = _fast(encoder, record)
    if fast is not None:
        assert fast == general, f"the writer took {record!r}; the general path: {general!r}"
    try:
        through_encode: bytes | tuple[type[Exception], str] = encoder.encode(record)
    except Exception as exc:
        through_encode = type(exc), str(exc)
    assert through_encode == general


def test_every_example_schema_but_the_decimal_one_gets_a_writer() -> None:
    assert "spotify.events.ads.AdImpression" not in GENERATED  # decimal: fastavro's job
    assert {"spotify.events.playback.EndSong", "tests.nested.Order", "tests.writer.Kitchen"} <= set(
        GENERATED
    )
    record = {
        "user_id": "u", "ad_id": "a", "campaign_id": "c", "format": "AUDIO",
        "completed": True, "price_micros": __import__("decimal").Decimal("1.250000"),
    }  # fmt: skip
    encoder = ENCODERS["spotify.events.ads.AdImpression"]
    assert encoder.encode(record) == encoder._encode_general(record)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (["null", "int", "string"], "two non-null branches: fastavro's choice depends on more"),
        (["int", "long"], "no null branch"),
        ({"type": "string", "logicalType": "uuid"}, "a logical type fastavro converts from str"),
    ],
)
def test_constructs_left_to_fastavro_get_no_writer(schema: Any, reason: str) -> None:
    definition = {"type": "record", "name": "Left", "fields": [{"name": "x", "type": schema}]}
    encoder = EventEncoder(parse_event_schema(definition))
    assert encoder._write_exact is None, reason


def test_a_missing_field_whose_default_fastavro_cannot_write_is_still_an_error() -> None:
    """Order's ``code`` default is the JSON string "AA" for a fixed: fastavro refuses to
    write it, so leaving ``code`` out must fail the same way on both paths."""
    encoder = ENCODERS["tests.nested.Order"]
    record = {
        "id": "o1", "placed_at": 1, "qty": 1, "inner": {"n": 1, "d": 1.0},
    }  # fmt: skip
    with pytest.raises(EventValidationError) as fast_error:
        encoder.encode(record)
    general = _general(encoder, record)
    assert isinstance(general, tuple)
    assert (EventValidationError, str(fast_error.value)) == general


def test_a_record_bigger_than_the_limit_is_refused_on_the_fast_path_too() -> None:
    encoder = EventEncoder(ENCODERS["spotify.events.playback.EndSong"].schema, max_event_bytes=64)
    record: Mapping[str, Any] = {
        "user_id": "u" * 80, "track_id": "t", "ms_played": 1, "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE", "platform": "web",
    }  # fmt: skip
    with pytest.raises(ValueError, match="64"):
        encoder.encode(record)
