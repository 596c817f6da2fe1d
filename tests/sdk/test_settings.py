"""One source of settings: a component built on its own behaves like the one a client builds,
and the collector's command line, config and parts agree on every default."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import click

from spotify_events.collector.cli import collector_command
from spotify_events.collector.config import CollectorConfig
from spotify_events.collector.ingest import IngestLimits
from spotify_events.collector.seam import DeliveryConfig
from spotify_events.config import ClientConfig
from spotify_events.queue import DurableQueue
from spotify_events.settings import ClientSettings
from spotify_events.transport import HttpTransport
from spotify_events.writer import QueueWriter


def test_components_built_directly_take_the_client_defaults(tmp_path: Path) -> None:
    config = ClientConfig()
    queue = DurableQueue(tmp_path / "q.db")
    try:
        writer = QueueWriter(queue)
        assert writer.max_buffer_bytes == config.max_buffer_bytes
        assert writer.block_timeout == config.block_timeout
        assert writer.commit_interval == config.commit_interval
        assert queue.max_queue_bytes == config.max_queue_bytes
        assert queue.drop_policy is config.drop_policy
    finally:
        queue.close()
    transport = HttpTransport(config.transport_settings())
    try:
        assert transport.timeout == (config.connect_timeout, config.read_timeout)
    finally:
        transport.close()
    assert config.shipper_settings().backoff_max == config.backoff_max


def test_config_does_not_import_the_components() -> None:
    """The components depend on the config for their defaults, never the reverse."""
    source = Path(sys.modules[ClientConfig.__module__].__file__ or "").read_text()
    for component in ("queue", "writer", "shipper", "transport"):
        assert f"from .{component} import" not in source, component


def test_collector_command_line_defaults_come_from_collector_config() -> None:
    defaults = {
        p.name: p.default
        for p in collector_command.params
        if isinstance(p, click.Option) and not p.required and not p.is_flag
    }
    config = CollectorConfig(data_dir="d", schemas="s")
    compared = {name for name in defaults if hasattr(config, name) and defaults[name] is not None}
    assert {"host", "port", "grace_period", "max_body_bytes", "max_future_seconds"} <= compared
    for name in compared:
        assert defaults[name] == getattr(config, name), name
    assert config.grace_period == DeliveryConfig.grace_period
    assert config.lateness == DeliveryConfig.lateness
    assert config.max_open_files == DeliveryConfig.max_open_files
    assert config.max_body_bytes == IngestLimits.max_body_bytes
    assert config.max_future_seconds == IngestLimits.max_future_seconds


def test_typed_keywords_name_every_client_setting() -> None:
    """ClientSettings (what editors and mypy see) lists exactly ClientConfig's fields."""
    assert set(ClientSettings.__annotations__) == {f.name for f in fields(ClientConfig)}
