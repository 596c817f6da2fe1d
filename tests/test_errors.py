"""The exception tree: one root, drawn in ``errors.py``'s docstring, exported where
callers need it."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import click
import pytest

import spotify_events
from spotify_events import errors
from spotify_events.collector.ingest import IngestLimits
from spotify_events.collector.seam import DeliveryConfig
from spotify_events.collector.server import CollectorConfig


def package_exceptions() -> list[type[BaseException]]:
    """Every exception class defined anywhere in the package (collector included)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(spotify_events.__path__, "spotify_events."):
        if info.name.endswith("__main__"):
            continue  # running it would start the CLI
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("spotify_events")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_exception_derives_from_the_root_and_is_in_the_drawn_tree() -> None:
    classes = package_exceptions()
    assert errors.ClientClosedError in classes and len(classes) > 10
    tree = errors.__doc__ or ""
    for cls in classes:
        if issubclass(cls, click.ClickException):
            continue  # stays inside a command: click makes it a message and an exit code
        assert issubclass(cls, errors.SpotifyEventsError), cls
        assert f" {cls.__name__}" in tree, f"{cls.__name__} is missing from errors.py's tree"


def test_no_exception_class_is_dead() -> None:
    """Each class is raised somewhere in the package, or is the parent of one that is:
    nothing in the tree that a caller could never meet."""
    package_dir = Path(spotify_events.__file__).parent
    sources = "\n".join(p.read_text() for p in package_dir.rglob("*.py") if p.name != "errors.py")
    classes = package_exceptions()
    for cls in classes:
        raised = f"raise {cls.__name__}(" in sources
        parent = any(other is not cls and issubclass(other, cls) for other in classes)
        assert raised or parent, f"{cls.__name__} is never raised"


def test_public_errors_are_exported() -> None:
    for name in ("SpotifyEventsError", "ClientClosedError", "MissingExtraError", "ConfigError"):
        assert getattr(spotify_events, name) is getattr(errors, name)
        assert name in spotify_events.__all__


@pytest.mark.parametrize(
    "build",
    [
        lambda: DeliveryConfig(grace_period=-1),
        lambda: CollectorConfig(data_dir="d", schemas="s", threads=0),
        lambda: IngestLimits(max_events=0),
    ],
)
def test_collector_settings_raise_config_error(build: object) -> None:
    with pytest.raises(errors.ConfigError):
        build()  # type: ignore[operator]
