"""``spotify-events demo`` from a directory that holds nothing of the project.

The demo's default schemas are the ones shipped inside the package, so it runs
wherever a wheel was installed (``.ci/run`` repeats this from a built wheel).
"""

from __future__ import annotations

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
