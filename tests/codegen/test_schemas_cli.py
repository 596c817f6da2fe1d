"""``spotify-events schemas check OLD_DIR NEW_DIR``: the CI gate for schema evolution."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support import SCHEMAS

from spotify_events.cli import main as cli_main
from spotify_events.codegen import diff_schema_dirs, schemas_group
from spotify_events.errors import SpotifyEventsError
from spotify_events.schemas import SchemaRegistry, check_compatibility

END_SONG = "spotify.events.playback.EndSong"
PAGE_VIEW = "spotify.events.web.PageView"


def copy_examples(target: Path) -> Path:
    target.mkdir()
    for src in SCHEMAS.glob("*.avsc"):
        (target / src.name).write_text(src.read_text())
    return target


def edit(directory: Path, file: str, change: Any) -> None:
    path = directory / file
    definition = json.loads(path.read_text())
    change(definition)
    path.write_text(json.dumps(definition, indent=2))


def check(*args: str) -> Result:
    return CliRunner().invoke(schemas_group, ["check", *args], catch_exceptions=False)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return copy_examples(tmp_path / "old"), copy_examples(tmp_path / "new")


def row(output: str, event_type: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.startswith(event_type + " "))
    return line.split()


def test_identical_dirs_pass(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    result = check(str(old), str(new))
    assert result.exit_code == 0, result.output
    assert row(result.output, END_SONG) == [END_SONG, "unchanged", "yes", "yes", "ok"]
    assert "all compatible" in result.output


def test_compatible_change_exits_zero(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    # a new optional field with a default: readable in both directions
    edit(
        new,
        "PageView.avsc",
        lambda d: d["fields"].append(
            {"name": "locale", "type": ["null", "string"], "default": None}
        ),
    )
    result = check(str(old), str(new))
    assert result.exit_code == 0, result.output
    assert row(result.output, PAGE_VIEW) == [PAGE_VIEW, "changed", "yes", "yes", "ok"]


def test_incompatible_change_exits_nonzero_with_reason(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    # a new field without a default: new readers cannot read old data (not backward)
    edit(new, "EndSong.avsc", lambda d: d["fields"].append({"name": "device", "type": "string"}))
    result = check(str(old), str(new))
    assert result.exit_code == 1, result.output
    assert row(result.output, END_SONG) == [END_SONG, "changed", "NO", "yes", "INCOMPATIBLE"]
    assert "backward:" in result.output and "device" in result.output
    assert "1 incompatible" in result.output
    # other types are still reported as fine
    assert row(result.output, PAGE_VIEW)[-1] == "ok"


def test_type_change_is_incompatible_both_ways(dirs: tuple[Path, Path]) -> None:
    old, new = dirs

    def to_string(d: dict[str, Any]) -> None:
        next(f for f in d["fields"] if f["name"] == "ms_played")["type"] = "string"

    edit(new, "EndSong.avsc", to_string)
    result = check(str(old), str(new))
    assert result.exit_code == 1
    assert row(result.output, END_SONG)[1:4] == ["changed", "NO", "NO"]
    assert "ms_played" in result.output


def test_require_selects_the_direction(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    edit(new, "EndSong.avsc", lambda d: d["fields"].append({"name": "device", "type": "string"}))
    # forward compatible only (old readers ignore the new field)
    assert check(str(old), str(new), "--require", "forward").exit_code == 0
    assert check(str(old), str(new), "--require", "backward").exit_code == 1
    assert check(str(old), str(new), "--require", "full").exit_code == 1


def test_added_and_removed_types(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    (new / "AdImpression.avsc").unlink()
    (new / "Signup.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Signup",
                "namespace": "spotify.events.account",
                "fields": [{"name": "user_id", "type": "string"}],
            }
        )
    )
    result = check(str(old), str(new))
    assert result.exit_code == 1, result.output  # a removed type fails the gate
    removed = row(result.output, "spotify.events.ads.AdImpression")
    assert removed[1] == "removed" and removed[-1] == "INCOMPATIBLE"
    assert "removed: producers still sending" in result.output
    added = row(result.output, "spotify.events.account.Signup")
    assert added[1] == "added" and added[-1] == "ok"
    assert "1 added, 1 removed" in result.output


def test_only_added_types_pass(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    (old / "ServiceCall.avsc").unlink()
    result = check(str(old), str(new))
    assert result.exit_code == 0, result.output
    assert row(result.output, "spotify.events.ops.ServiceCall")[1] == "added"


def test_json_output(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    edit(new, "EndSong.avsc", lambda d: d["fields"].append({"name": "device", "type": "string"}))
    (new / "AdImpression.avsc").unlink()
    result = check(str(old), str(new), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["compatible"] is False and report["require"] == "full"
    by_type = {t["event_type"]: t for t in report["types"]}
    assert set(by_type) == set(SchemaRegistry(SCHEMAS).event_types)
    song = by_type[END_SONG]
    assert song["change"] == "changed" and song["ok"] is False
    assert song["backward"] is False and song["forward"] is True
    assert any("device" in reason for reason in song["reasons"])
    assert len(song["old_fingerprint"]) == 16 and song["old_fingerprint"] != song["new_fingerprint"]
    ad = by_type["spotify.events.ads.AdImpression"]
    assert ad["change"] == "removed" and ad["ok"] is False and ad["new_fingerprint"] is None
    assert by_type[PAGE_VIEW]["change"] == "unchanged" and by_type[PAGE_VIEW]["ok"] is True


def test_invalid_dir_exits_2_naming_the_file(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    (new / "Broken.avsc").write_text("{nope")
    result = CliRunner().invoke(schemas_group, ["check", str(old), str(new)])
    assert result.exit_code == 2
    assert "Broken.avsc" in result.output and "not valid JSON" in result.output


def test_through_the_main_cli(dirs: tuple[Path, Path]) -> None:
    old, new = dirs
    result = CliRunner().invoke(cli_main, ["schemas", "check", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "EVENT TYPE" in result.output


def test_diff_api_rejects_unknown_requirement() -> None:
    registry = SchemaRegistry(SCHEMAS)
    with pytest.raises(ValueError, match="require"):
        diff_schema_dirs(registry, registry, require="sideways")


def test_without_avro_the_check_names_the_extra(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apache Avro is in the ``tools`` extra, not the core install: without it the gate
    says which extra to install and exits 2, never 1 (which means incompatible)."""
    old, new = dirs
    edit(new, "PageView.avsc", lambda d: d["fields"].append({"name": "x", "type": "int"}))
    monkeypatch.setitem(sys.modules, "avro.compatibility", None)  # its import now fails
    result = check(str(old), str(new))
    assert result.exit_code == 2, result.output
    assert "pip install 'spotify-events[tools]'" in result.output
    with pytest.raises(ImportError, match=r"spotify-events\[tools\]") as raised:
        check_compatibility(SchemaRegistry(old).get(PAGE_VIEW), SchemaRegistry(new).get(PAGE_VIEW))
    assert isinstance(raised.value, SpotifyEventsError)
