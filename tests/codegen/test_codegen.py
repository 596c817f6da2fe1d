"""``spotify-events codegen``: generated typed event classes.

The generated module is produced once per test session (module-scoped
fixtures) for the project's example schemas and for a feature schema that
exercises every Avro construct the generator supports, then imported from
``tmp_path`` and checked with the real tools: fastavro round trips, ``ruff``
and ``mypy --strict``.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import decimal
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import pytest
from click.testing import CliRunner
from support import ROOT, SCHEMAS

from spotify_events.cli import main as cli_main
from spotify_events.codegen import codegen_command, generate_python
from spotify_events.schemas import SchemaRegistry

UTC = dt.timezone.utc

#: One schema using every construct the generator maps (see the module docstring of
#: spotify_events.codegen.python): logical types, fixed, keyword and shadowing field
#: names, awkward enum symbols, nested and recursive records, containers of unions,
#: a multi-branch union, and defaults of each kind.
FEATURES = {
    "type": "record",
    "name": "Features",
    "namespace": "test.features",
    "doc": 'All the "features" \u2014 with a backslash \\ and a doc long enough that '
    "it has to be wrapped over several lines to keep the generated file within its limit.",
    "fields": [
        {"name": "class", "type": "string", "doc": "A keyword as a field name."},
        {"name": "list", "type": "int", "default": 3, "doc": "Shadows a builtin type."},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "when_us",
            "type": {"type": "long", "logicalType": "timestamp-micros"},
            "default": 1_500_000,
        },
        {
            "name": "local",
            "type": ["null", {"type": "long", "logicalType": "local-timestamp-millis"}],
            "default": None,
        },
        {"name": "day", "type": {"type": "int", "logicalType": "date"}, "default": 19000},
        {"name": "tod", "type": {"type": "int", "logicalType": "time-millis"}, "default": 3723004},
        {"name": "tod_us", "type": {"type": "long", "logicalType": "time-micros"}},
        {
            "name": "id",
            "type": {"type": "string", "logicalType": "uuid"},
            "default": "12345678-1234-5678-1234-567812345678",
        },
        {
            "name": "amount",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 8,
                "logicalType": "decimal",
                "precision": 10,
                "scale": 2,
            },
        },
        {
            "name": "small",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 1},
            "default": "\u0001",
        },
        {"name": "hash", "type": {"type": "fixed", "name": "MD5", "size": 16}},
        {"name": "raw", "type": "bytes", "default": "ab\u00ff"},
        {"name": "ratio", "type": "float", "default": 0.5},
        {
            "name": "kind",
            "type": {
                "type": "enum",
                "name": "Kind",
                "symbols": ["None", "name", "value", "upper", "_x_", "A"],
            },
            "default": "A",
        },
        {"name": "maybe_kind", "type": ["null", "Kind"], "default": None},
        {
            "name": "inner",
            "type": {
                "type": "record",
                "name": "Inner",
                "doc": "A nested record.",
                "fields": [
                    {"name": "a", "type": "int", "default": 1},
                    {
                        "name": "tags",
                        "type": {"type": "array", "items": "string"},
                        "default": ["x"],
                    },
                    {"name": "next", "type": ["null", "Inner"], "default": None},
                ],
            },
            "default": {"a": 2},
        },
        {"name": "inners", "type": {"type": "array", "items": "Inner"}, "default": []},
        {
            "name": "by_key",
            "type": {"type": "map", "values": {"type": "array", "items": ["null", "Kind"]}},
            "default": {"k": [None, "A"]},
        },
        {
            "name": "either",
            "type": [
                "string",
                "Kind",
                "Inner",
                {"type": "record", "name": "Other", "fields": [{"name": "z", "type": "double"}]},
                "long",
            ],
            "default": "s",
        },
        {"name": "plain", "type": {"type": "int"}},
        {"name": "Inner", "type": "boolean", "default": True, "doc": "Same name as a class."},
    ],
}


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


def run_codegen(*args: str) -> Any:
    return CliRunner().invoke(codegen_command, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``events.py`` (example schemas) and ``features.py`` (FEATURES)."""
    out = tmp_path_factory.mktemp("generated")
    features_dir = out / "feature_schemas"
    features_dir.mkdir()
    (features_dir / "Features.avsc").write_text(json.dumps(FEATURES, indent=2))
    for schemas, target in ((SCHEMAS, "events.py"), (features_dir, "features.py")):
        result = run_codegen(str(schemas), "-o", str(out / target))
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def events(gen_dir: Path) -> ModuleType:
    return load_module(gen_dir / "events.py", "_se_test_generated_events")


@pytest.fixture(scope="module")
def features(gen_dir: Path) -> ModuleType:
    return load_module(gen_dir / "features.py", "_se_test_generated_features")


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)


def roundtrip(parsed_schema: Any, record: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema, record)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, parsed_schema, parsed_schema)


def untag(value: Any) -> Any:
    """Drop fastavro's (name, value) union tuple notation, as the reader returns plain values."""
    if isinstance(value, tuple):
        return untag(value[1])
    if isinstance(value, dict):
        return {k: untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


#: A sample instance per example event type; a new example schema must add one here.
SAMPLES: dict[str, Callable[[ModuleType], Any]] = {
    "spotify.events.ads.AdImpression": lambda m: m.AdImpression(
        user_id="u1",
        ad_id="ad-7",
        campaign_id="c-1",
        format=m.AdFormat.VIDEO,
        completed=True,
        price_micros=decimal.Decimal("0.012345"),
    ),
    "spotify.events.ops.ServiceCall": lambda m: m.ServiceCall(
        operation="GET /v1/tracks",
        duration_ms=12.75,
        outcome=m.Outcome.ERROR,
        exception_type="builtins.KeyError",
        status_code=500,
    ),
    "spotify.events.playback.EndSong": lambda m: m.EndSong(
        user_id="u1",
        track_id="t1",
        ms_played=31_000,
        reason_start=m.ReasonStart.CLICKROW,
        reason_end=m.ReasonEnd.TRACKDONE,
        platform="ios",
        shuffle=True,
        context_uri="spotify:playlist:x",
    ),
    "spotify.events.search.SearchQuery": lambda m: m.SearchQuery(
        user_id="u1",
        query="daft punk",
        result_count=20,
        result_types=["track", "artist"],
        latency_ms=12.5,  # exactly representable as a 32-bit float
    ),
    "spotify.events.web.PageView": lambda m: m.PageView(
        session_id="s1",
        page_uri="spotify:album:xyz",
        load_ms=250,
        viewport={"width": 1280, "height": 800},
    ),
}


def features_sample(m: ModuleType, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "class_": "c",
        "when": dt.datetime(2025, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
        "local": dt.datetime(2025, 1, 1, 12, 0, 0),
        "tod_us": dt.time(1, 2, 3, 4),
        "amount": decimal.Decimal("12.34"),
        "hash": bytes(range(16)),
        "plain": 5,
        "maybe_kind": m.Kind.value_,
        "inners": [m.Inner(a=5, next=m.Inner())],
        "either": m.Kind.None_,
    }
    kwargs.update(overrides)
    return m.Features(**kwargs)


# -- the generated file ------------------------------------------------------------------
def test_header_says_generated_from_which_files(gen_dir: Path, registry: SchemaRegistry) -> None:
    text = (gen_dir / "events.py").read_text()
    assert text.startswith("# Code generated by spotify-events codegen. DO NOT EDIT.\n")
    header = text.split('"""')[1]
    assert "Do not edit" in header
    for name in registry.event_types:
        schema = registry.get(name)
        rel = Path(schema.source).resolve().relative_to(ROOT).as_posix()
        assert rel in header  # a path relative to the generated file, not absolute
        assert f"{schema.full_name} {schema.fingerprint_hex}" in header
    assert str(gen_dir) not in text  # no absolute paths: nothing machine-specific


def test_classes_attributes_and_registry(events: ModuleType, registry: SchemaRegistry) -> None:
    assert set(events.EVENT_CLASSES) == set(registry.event_types)
    for name, cls in events.EVENT_CLASSES.items():
        schema = registry.get(name)
        assert dataclasses.is_dataclass(cls)
        params = cls.__dataclass_params__
        assert params.frozen
        assert cls.__event_type__ == name
        assert cls.__fingerprint__ == schema.fingerprint
        assert cls.__fingerprint_hex__ == schema.fingerprint_hex
        assert "__slots__" in cls.__dict__
        assert [f.name for f in dataclasses.fields(cls)] == [
            f["name"] for f in schema.raw["fields"]
        ]  # schema order preserved (kw_only makes that possible)
        assert all(f.kw_only for f in dataclasses.fields(cls))
    end_song = events.EndSong
    assert end_song.__doc__.startswith("A track stopped playing")
    assert end_song.__name__ == "EndSong"


def test_field_docs_are_attribute_docstrings(gen_dir: Path) -> None:
    tree = ast.parse((gen_dir / "events.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EndSong")
    docs = {}
    for stmt, nxt in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            assert isinstance(stmt.target, ast.Name)
            docs[stmt.target.id] = ast.literal_eval(nxt.value)
    assert docs["ms_played"] == "Milliseconds of audio actually played (seeks excluded)."
    assert docs["reason_end"] == "What ended the track."


def test_defaults_from_schema(events: ModuleType) -> None:
    song = SAMPLES["spotify.events.playback.EndSong"](events)
    assert song.offline is False and song.conn_country is None
    a = SAMPLES["spotify.events.search.SearchQuery"](events)
    b = events.SearchQuery(user_id="u", query="q", result_count=0, latency_ms=1.0)
    assert b.result_types == [] and b.clicked_position is None
    c = events.SearchQuery(user_id="u", query="q", result_count=0, latency_ms=1.0)
    assert b.result_types is not c.result_types  # default_factory, not a shared list
    assert a.result_types == ["track", "artist"]
    assert events.ServiceCall(operation="x", duration_ms=1, outcome=events.Outcome.OK).service == ""
    assert events.AdImpression.__dataclass_fields__["duration_ms"].default == 0


def test_enums_are_str_valued_with_symbol_names(events: ModuleType) -> None:
    assert issubclass(events.ReasonEnd, str)
    assert [m.name for m in events.ReasonEnd] == [m.value for m in events.ReasonEnd]
    assert events.ReasonEnd.TRACKDONE.value == "TRACKDONE"
    song = SAMPLES["spotify.events.playback.EndSong"](events)
    assert song.to_avro()["reason_end"] == "TRACKDONE"
    assert type(song.to_avro()["reason_end"]) is str


def test_instances_are_frozen_and_slotted(events: ModuleType) -> None:
    song = SAMPLES["spotify.events.playback.EndSong"](events)
    with pytest.raises(dataclasses.FrozenInstanceError):
        song.ms_played = 1
    assert not hasattr(song, "__dict__")


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_roundtrip_every_example_schema(
    events: ModuleType, registry: SchemaRegistry, event_type: str
) -> None:
    instance = SAMPLES[event_type](events)
    record = instance.to_avro()
    decoded = roundtrip(registry.get(event_type).parsed, record)
    assert decoded == record
    assert type(instance)(**_kwargs(instance, decoded, events)) == instance


def _kwargs(instance: Any, decoded: dict[str, Any], module: ModuleType) -> dict[str, Any]:
    """Rebuild constructor arguments from a decoded record (enums back to members)."""
    out = {}
    for f in dataclasses.fields(instance):
        value = decoded[f.name]
        current = getattr(instance, f.name)
        if isinstance(current, str) and type(current) is not str:
            value = type(current)(value)
        out[f.name] = value
    return out


def test_every_example_schema_has_a_sample(registry: SchemaRegistry) -> None:
    assert set(SAMPLES) == set(registry.event_types)


def test_feature_schema_roundtrip(features: ModuleType, gen_dir: Path) -> None:
    schema = SchemaRegistry(gen_dir / "feature_schemas").get("Features")
    m = features
    instance = features_sample(m)
    record = instance.to_avro()
    assert "class" in record and "list" in record and "Inner" in record  # Avro names kept
    assert record["either"] == ("test.features.Kind", "None")  # union branch named explicitly
    assert record["inner"] == {"a": 2, "tags": ["x"], "next": None}  # record default
    assert record["by_key"] == {"k": [None, "A"]}
    decoded = roundtrip(schema.parsed, record)
    assert decoded == untag(record)
    assert decoded["id"] == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert decoded["day"] == dt.date(2022, 1, 8)
    assert decoded["when_us"] == dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    assert decoded["small"] == decimal.Decimal("0.1")
    assert decoded["raw"] == b"ab\xff"
    for either in ("text", 7, m.Inner(a=9), m.Other(z=1.5), m.Kind.A):
        record = features_sample(m, either=either).to_avro()
        assert roundtrip(schema.parsed, record)["either"] == untag(record["either"])


def test_awkward_names_are_renamed_safely(features: ModuleType) -> None:
    m = features
    assert {k.name: k.value for k in m.Kind} == {
        "None_": "None",
        "name_": "name",
        "value_": "value",
        "upper_": "upper",
        "_x__": "_x_",
        "A": "A",
    }
    names = [f.name for f in dataclasses.fields(m.Features)]
    assert names[:2] == ["class_", "list_"] and names[-1] == "Inner_"


# -- construction-time checks -------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "error", "fragment"),
    [
        ({"ms_played": "31000"}, TypeError, "EndSong.ms_played: expected int, got str"),
        ({"ms_played": True}, TypeError, "EndSong.ms_played: expected int, got bool"),
        ({"ms_played": 2**63}, ValueError, "EndSong.ms_played: out of range"),
        ({"reason_end": "TRACKDONE"}, TypeError, "EndSong.reason_end: expected ReasonEnd"),
        ({"context_uri": 5}, TypeError, "EndSong.context_uri: expected str | None"),
        ({"user_id": None}, TypeError, "EndSong.user_id: expected str, got NoneType"),
    ],
)
def test_wrong_type_names_the_field(
    events: ModuleType, override: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    kwargs = {
        "user_id": "u",
        "track_id": "t",
        "ms_played": 1,
        "reason_start": events.ReasonStart.UNKNOWN,
        "reason_end": events.ReasonEnd.UNKNOWN,
        "platform": "web",
        **override,
    }
    with pytest.raises(error) as info:
        events.EndSong(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("override", "error", "fragment"),
    [
        ({"plain": 2**31}, ValueError, "Features.plain: out of range for an Avro int"),
        ({"when": dt.datetime(2025, 1, 1)}, ValueError, "Features.when: must be timezone-aware"),
        ({"amount": decimal.Decimal("1.234")}, ValueError, "Features.amount: does not fit"),
        ({"hash": b"short"}, ValueError, "Features.hash: must be exactly 16 bytes"),
        ({"inners": [1]}, TypeError, "Features.inners: expected list[Inner]"),
        ({"by_key": {"k": ["A"]}}, TypeError, "Features.by_key"),
        ({"day": dt.datetime(2025, 1, 1)}, TypeError, "Features.day: expected datetime.date"),
        ({"either": 1.5}, TypeError, "Features.either: expected str | Kind | Inner | Other | int"),
    ],
)
def test_feature_checks(
    features: ModuleType, override: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        features_sample(features, **override)
    assert fragment.replace("must be timezone", "must be a timezone") in str(info.value)


def test_numbers_accept_int_for_float(events: ModuleType) -> None:
    call = events.ServiceCall(operation="x", duration_ms=3, outcome=events.Outcome.OK)
    assert call.to_avro()["duration_ms"] == 3


# -- tools ----------------------------------------------------------------------------------
USAGE_OK = """\
from events import EndSong, ReasonEnd, ReasonStart

song = EndSong(
    user_id="u", track_id="t", ms_played=1, platform="ios",
    reason_start=ReasonStart.CLICKROW, reason_end=ReasonEnd.TRACKDONE,
)
name: str = song.__event_type__
fp: bytes = song.__fingerprint__
country: str | None = song.conn_country
record: dict[str, object] = song.to_avro()
"""

USAGE_BAD = """\
from events import EndSong, ReasonEnd, ReasonStart

EndSong(
    user_id="u", track_id="t", ms_played="1", platform="ios",
    reason_start=ReasonStart.CLICKROW, reason_end=ReasonEnd.TRACKDONE,
)
"""


@pytest.mark.slow
def test_generated_code_passes_mypy_strict(gen_dir: Path) -> None:
    (gen_dir / "usage_ok.py").write_text(USAGE_OK)
    (gen_dir / "usage_bad.py").write_text(USAGE_BAD)
    files = ["events.py", "features.py", "usage_ok.py", "usage_bad.py"]
    cache = ["--cache-dir", str(gen_dir / ".mypy_cache")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *cache, *files],
        cwd=gen_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # the generated modules and correct usage are clean; misuse is caught by the type checker
    assert all(line.startswith("usage_bad.py") for line in errors), result.stdout
    assert any('"ms_played"' in line for line in errors), result.stdout


FILES = ["events.py", "features.py"]


@pytest.mark.parametrize(
    "config",
    [
        ["--config", str(ROOT / "pyproject.toml")],  # the project's rule set, 100 columns
        ["--isolated", "--select", "E,F,W,I,B,SIM,RUF,UP", "--line-length", "88"],
    ],
    ids=["project", "strict-88"],
)
def test_generated_code_passes_ruff(gen_dir: Path, config: list[str]) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    cmd = [str(ruff)] if ruff.exists() else [sys.executable, "-m", "ruff"]
    result = subprocess.run(
        [*cmd, "check", "--no-cache", "--target-version", "py310", *config, *FILES],
        cwd=gen_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_ascii_and_compiles(gen_dir: Path) -> None:
    for name in ("events.py", "features.py"):
        data = (gen_dir / name).read_bytes()
        data.decode("ascii")
        compile(data, name, "exec")


# -- determinism and --check ----------------------------------------------------------------
def test_deterministic_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pkg" / "events.py"
    first = generate_python(SCHEMAS, out)
    assert generate_python(SCHEMAS, out) == first
    # however the directory is spelled: the header is relative to the output file
    monkeypatch.chdir(ROOT)
    assert generate_python("schemas", out) == first
    assert generate_python("./schemas/", out) == first
    result = run_codegen(str(SCHEMAS), "-o", str(out))
    assert result.exit_code == 0
    assert out.read_bytes() == first.encode("ascii")
    result = run_codegen(str(SCHEMAS), "-o", str(out))
    assert out.read_bytes() == first.encode("ascii")


def test_check_detects_stale_file(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for src in SCHEMAS.glob("*.avsc"):
        (schemas / src.name).write_text(src.read_text())
    out = tmp_path / "events.py"

    missing = run_codegen(str(schemas), "-o", str(out), "--check")
    assert missing.exit_code == 1 and "does not exist" in missing.output

    assert run_codegen(str(schemas), "-o", str(out)).exit_code == 0
    fresh = run_codegen(str(schemas), "-o", str(out), "--check")
    assert fresh.exit_code == 0, fresh.output
    assert "up to date" in fresh.output

    # a schema change makes the file stale; --check says so and writes nothing
    definition = json.loads((schemas / "PageView.avsc").read_text())
    definition["fields"].append({"name": "locale", "type": "string", "default": "en"})
    (schemas / "PageView.avsc").write_text(json.dumps(definition))
    before = out.read_bytes()
    stale = run_codegen(str(schemas), "-o", str(out), "--check")
    assert stale.exit_code == 1
    assert "stale" in stale.output and str(out) in stale.output
    assert out.read_bytes() == before

    # so does a hand edit
    assert run_codegen(str(schemas), "-o", str(out)).exit_code == 0
    out.write_text(out.read_text().replace("DO NOT EDIT", "edited"))
    assert run_codegen(str(schemas), "-o", str(out), "--check").exit_code == 1


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_generated_file_mode_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Generated source is an ordinary file of the project: 0666 less the umask."""
    out = tmp_path / "pkg" / "events.py"
    previous = os.umask(umask)
    try:
        assert run_codegen(str(SCHEMAS), "-o", str(out)).exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert [p.name for p in out.parent.iterdir()] == ["events.py"]  # no temporary left


def test_codegen_through_the_main_cli(tmp_path: Path) -> None:
    out = tmp_path / "events.py"
    result = CliRunner().invoke(cli_main, ["codegen", str(SCHEMAS), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}', "nope"),
        (
            '{"type": "record", "name": "X", "fields": '
            '[{"name": "a", "type": "int", "default": "s"}]}',
            "Default value",
        ),
        ('{"type": "enum", "name": "E", "symbols": ["A"]}', "must be an Avro record"),
    ],
    ids=["json", "unknown-type", "bad-default", "not-a-record"],
)
def test_invalid_schema_dir_names_file_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "Good.avsc").write_text((SCHEMAS / "EndSong.avsc").read_text())
    (schemas / "Broken.avsc").write_text(text)
    out = tmp_path / "events.py"
    result = CliRunner().invoke(codegen_command, [str(schemas), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Broken.avsc" in result.output and problem in result.output
    assert not out.exists()


def test_empty_schema_dir_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(codegen_command, [str(tmp_path), "-o", str(tmp_path / "e.py")])
    assert result.exit_code == 2
    assert "no .avsc files" in result.output


def test_same_short_name_in_two_namespaces(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for ns in ("a.web", "b.app"):
        schema = {
            "type": "record",
            "name": "Click",
            "namespace": ns,
            "fields": [{"name": "x", "type": "int"}],
        }
        (schemas / f"{ns}.avsc").write_text(json.dumps(schema))
    out = tmp_path / "clicks.py"
    assert run_codegen(str(schemas), "-o", str(out)).exit_code == 0
    module = load_module(out, "_se_test_generated_clicks")
    assert module.AWebClick.__event_type__ == "a.web.Click"
    assert module.BAppClick.__event_type__ == "b.app.Click"
    assert module.AWebClick(x=1).to_avro() == {"x": 1}
