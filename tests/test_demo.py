"""``spotify-events demo`` from a directory that holds nothing of the project.

The demo's default schemas are the ones shipped inside the package, so it runs
wherever a wheel was installed (``.ci/run`` repeats this from a built wheel).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import spotify_events
from spotify_events.cli import main as cli_main
from spotify_events.demo import EXAMPLE_SCHEMAS
from spotify_events.schemas import SchemaRegistry


def test_example_schemas_are_package_data() -> None:
    package_dir = Path(spotify_events.__file__).resolve().parent
    assert EXAMPLE_SCHEMAS.parent == package_dir
    assert "spotify.events.playback.EndSong" in SchemaRegistry(EXAMPLE_SCHEMAS).event_types


@pytest.mark.slow
def test_demo_runs_from_an_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "empty"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(cli_main, ["demo", "-n", "300", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "logged 300 events" in result.output
    assert list(data_dir.glob("*/*/*/part-*.avro"))  # hourly buckets were written
    assert list(workdir.iterdir()) == []  # nothing left in the working directory


def test_without_the_collector_extra_help_works_and_demo_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as on a core install: import fails
    monkeypatch.delitem(sys.modules, "spotify_events.demo", raising=False)
    listing = CliRunner().invoke(cli_main, ["--help"])
    assert listing.exit_code == 0, listing.output
    assert "demo" in listing.output and "codegen" in listing.output
    result = CliRunner().invoke(cli_main, ["demo", "-n", "1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "pip install 'spotify-events[collector]'" in result.output
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
