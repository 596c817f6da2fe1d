"""EventEncoder's two paths and their agreement: the compiled writer takes every
well-typed record of the example schemas, fields left to their defaults included, and
writes fastavro's bytes; when fastavro's private writer is missing, the public one
keeps the same strictness; records that are not plain dicts, or not mappings at all."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

import fastavro
import pytest
from sdk_helpers import VALID_RECORDS

from spotify_events import encoding
from spotify_events.encoding import EventEncoder, decode_event
from spotify_events.errors import EventTooLargeError, EventValidationError
from spotify_events.schemas import SchemaRegistry, parse_event_schema

#: The example schemas the compiled writer takes (AdImpression's ``decimal`` logical
#: type is left to fastavro: its encoder has no compiled writer).
COMPILED = ["EndSong", "PageView", "SearchQuery", "ServiceCall"]


def fastavro_bytes(raw: Mapping[str, Any], record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(dict(raw)), record)
    return buf.getvalue()


@pytest.mark.parametrize("name", COMPILED)
def test_a_record_leaving_fields_to_their_defaults_takes_the_compiled_writer(
    registry: SchemaRegistry, name: str
) -> None:
    """Defaults are written by the compiled writer as fastavro writes them; if it could
    not, every such record would silently take the slower general path."""
    schema = registry.get(name)
    encoder = EventEncoder(schema)
    assert encoder._write_exact is not None
    record = VALID_RECORDS[name]
    expected = fastavro_bytes(schema.raw, record)
    assert encoder._write_exact(record) == expected  # raises if it had to fall back
    assert encoder.encode(record) == expected


class Reading(Mapping[str, Any]):
    """A record that is a Mapping but not a dict (a view over some other object)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_a_mapping_that_is_not_a_dict_is_encoded_like_the_dict(registry: SchemaRegistry) -> None:
    schema = registry.get("EndSong")
    record = VALID_RECORDS["EndSong"]
    assert EventEncoder(schema).encode(Reading(record)) == EventEncoder(schema).encode(record)
    with pytest.raises(EventValidationError) as err:
        EventEncoder(schema).encode(Reading({**record, "ms_played": "long"}))
    assert err.value.field == "ms_played"


@pytest.mark.parametrize(
    ("record", "kind"), [(["user_id"], "list"), ("u1", "str"), (None, "NoneType")]
)
def test_something_that_is_not_a_mapping_is_refused_naming_its_type(
    registry: SchemaRegistry, record: Any, kind: str
) -> None:
    schema = registry.get("EndSong")
    with pytest.raises(EventValidationError) as err:
        EventEncoder(schema).encode(record)
    assert err.value.errors == [f"record must be a mapping, got {kind}"]
    assert err.value.field is None
    assert err.value.event_type == schema.full_name


@pytest.fixture
def public_writer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a fastavro whose private ``write_data`` failed the probe."""
    monkeypatch.setattr(encoding, "_WRITE_DATA", None)


@pytest.mark.usefixtures("public_writer_only")
@pytest.mark.parametrize("name", VALID_RECORDS)
def test_the_public_writer_writes_the_same_bytes(registry: SchemaRegistry, name: str) -> None:
    schema = registry.get(name)
    record = VALID_RECORDS[name]
    encoder = EventEncoder(schema)
    if name in COMPILED:  # its defaults now come from the public writer
        assert encoder._write_exact is not None
        assert encoder._write_exact(record) == fastavro_bytes(schema.raw, record)
    assert decode_event(schema, encoder._encode_general(record)) == decode_event(
        schema, fastavro_bytes(schema.raw, record)
    )


@pytest.mark.usefixtures("public_writer_only")
@pytest.mark.parametrize(
    ("change", "field"),
    [({"skipped": True}, "skipped"), ({"track_id": None}, "track_id")],
    ids=["unknown-field", "missing-field"],
)
def test_the_public_writer_refuses_unknown_and_missing_fields(
    registry: SchemaRegistry, change: dict[str, Any], field: str
) -> None:
    """Without ``strict_allow_default`` fastavro would drop an unknown field silently."""
    record = {**VALID_RECORDS["EndSong"], **change}
    record = {k: v for k, v in record.items() if v is not None}
    with pytest.raises(EventValidationError) as err:
        EventEncoder(registry.get("EndSong"))._encode_general(record)
    assert err.value.field == field


def test_a_fastavro_without_write_data_keeps_the_public_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "fastavro._write", types.ModuleType("fastavro._write"))
    assert encoding._probe_write_data() is None


@pytest.mark.parametrize("name", COMPILED)
def test_a_well_typed_record_never_takes_the_general_path(
    registry: SchemaRegistry, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled writer is the fast path (benchmarks/RESULTS.md); an event at exactly
    ``max_event_bytes`` is still its to write."""
    schema = registry.get(name)
    record = VALID_RECORDS[name]
    size = len(fastavro_bytes(schema.raw, record))

    def general(self: EventEncoder, record: Mapping[str, Any]) -> bytes:
        raise AssertionError("took the general path")

    encoder = EventEncoder(schema, max_event_bytes=size)
    monkeypatch.setattr(EventEncoder, "_encode_general", general)
    assert encoder.encode(record) == fastavro_bytes(schema.raw, record)


def test_the_general_path_takes_an_event_of_exactly_max_event_bytes(
    registry: SchemaRegistry,
) -> None:
    schema = registry.get("AdImpression")  # no compiled writer: the general path
    record = VALID_RECORDS["AdImpression"]
    size = len(fastavro_bytes(schema.raw, record))
    assert EventEncoder(schema, max_event_bytes=size).encode(record) == fastavro_bytes(
        schema.raw, record
    )
    with pytest.raises(EventTooLargeError) as err:
        EventEncoder(schema, max_event_bytes=size - 1).encode(record)
    assert (err.value.size, err.value.limit) == (size, size - 1)


#: A field whose default is of a type named earlier in the record.
SHIFT = {
    "type": "record",
    "name": "Shift",
    "namespace": "test.events",
    "fields": [
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["DAY", "NIGHT"]}},
        {"name": "previous", "type": "Kind", "default": "DAY"},
    ],
}


@pytest.mark.parametrize("private_writer", [True, False], ids=["write_data", "public-writer"])
def test_a_default_of_a_named_type_is_written_by_the_compiled_writer(
    monkeypatch: pytest.MonkeyPatch, private_writer: bool
) -> None:
    if not private_writer:
        monkeypatch.setattr(encoding, "_WRITE_DATA", None)
    encoder = EventEncoder(parse_event_schema(SHIFT))
    assert encoder._write_exact is not None
    record = {"kind": "NIGHT"}
    assert encoder._write_exact(record) == fastavro_bytes(SHIFT, record)
