"""The one check that a container holds wire envelopes (wire.is_envelope_schema), called
with the ``avro.schema`` text of every body the collector receives, before any record
is read: what it takes, what it refuses without raising, and its bounded memo."""

from __future__ import annotations

import json

import pytest

from spotify_events import wire
from spotify_events.wire import is_avro_full_name, is_envelope_schema

ENVELOPE_JSON = wire._ENVELOPE_SCHEMA_JSON
#: The envelope as a reader without logical types or docs spells it (same canonical form).
PLAIN_ENVELOPE = json.dumps(
    {
        "type": "record",
        "name": "spotify_events.wire.Envelope",
        "fields": [
            {"name": "seq", "type": "long"},
            {"name": "event_type", "type": "string"},
            {"name": "fingerprint", "type": {"type": "fixed", "name": "Fingerprint", "size": 8}},
            {"name": "timestamp", "type": "long"},
            {"name": "payload", "type": "bytes"},
        ],
    }
)
#: Same name, other fields: not the envelope.
IMPOSTOR = json.dumps(
    {
        "type": "record",
        "name": "spotify_events.wire.Envelope",
        "fields": [{"name": "seq", "type": "string"}],
    }
)


@pytest.fixture
def verdicts(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bool]:
    """An empty memo for this test, so no earlier test's verdicts answer for it."""
    memo: dict[bytes, bool] = {}
    monkeypatch.setattr(wire, "_envelope_verdicts", memo)
    return memo


def test_the_envelope_is_recognised_as_text_or_bytes_with_or_without_logical_types(
    verdicts: dict[bytes, bool],
) -> None:
    assert is_envelope_schema(ENVELOPE_JSON) is True
    assert is_envelope_schema(ENVELOPE_JSON.encode()) is True
    assert is_envelope_schema(PLAIN_ENVELOPE) is True


@pytest.mark.parametrize(
    "text",
    [None, "", "not json", "[1, 2", "{}", '"long"', "\ud800", IMPOSTOR, b"\xff\xfe"],
    ids=[
        "none",
        "empty",
        "not-json",
        "cut-json",
        "empty-object",
        "primitive",
        "lone-surrogate",
        "same-name-other-fields",
        "not-utf8",
    ],
)
def test_anything_else_is_refused_without_raising(
    verdicts: dict[bytes, bool], text: str | bytes | None
) -> None:
    assert is_envelope_schema(text) is False
    assert is_envelope_schema(text) is False  # the remembered verdict too


def test_each_spelling_keeps_its_own_verdict(verdicts: dict[bytes, bool]) -> None:
    """Verdicts are remembered per schema text: an envelope seen first must not let a
    different schema through afterwards, nor the reverse."""
    assert is_envelope_schema(ENVELOPE_JSON) is True
    assert is_envelope_schema(IMPOSTOR) is False
    assert is_envelope_schema("not json") is False
    assert is_envelope_schema(ENVELOPE_JSON) is True
    assert sorted(verdicts.values()) == [False, False, True]


def test_the_memo_stops_growing_at_64_spellings(verdicts: dict[bytes, bool]) -> None:
    for i in range(100):
        other = json.dumps({"type": "record", "name": f"R{i}", "fields": []})
        assert is_envelope_schema(other) is False
    assert len(verdicts) == 64
    assert is_envelope_schema(ENVELOPE_JSON) is True  # still decided, only not remembered
    assert len(verdicts) == 64


def test_an_avro_full_name_may_be_512_characters_long() -> None:
    assert is_avro_full_name("a" * 512)
    assert is_avro_full_name("a." * 255 + "bc")
    assert not is_avro_full_name("a" * 513)


def test_a_spelling_seen_before_is_not_parsed_again(
    verdicts: dict[bytes, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector checks the schema text of every body; parsing it each time is the
    cost the memo exists to save."""
    parsed: list[object] = []
    parse = wire.fastavro.parse_schema

    def counting(schema: object, **kwargs: object) -> object:
        parsed.append(schema)
        return parse(schema, **kwargs)

    monkeypatch.setattr(wire.fastavro, "parse_schema", counting)
    for _ in range(3):
        assert is_envelope_schema(ENVELOPE_JSON) is True
        assert is_envelope_schema(IMPOSTOR) is False
    assert len(parsed) == 2
