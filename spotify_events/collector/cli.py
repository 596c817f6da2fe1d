"""``spotify-events collector`` and ``spotify-events report``.

Imported lazily by :mod:`spotify_events.cli`, so a core install never needs the
server dependencies. ``collector`` prints exactly one line,
``listening on http://HOST:PORT``, flushed, once the socket is bound, so a test
or the demo can start it with ``--port 0`` and read the port it got.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import click

from ..errors import SpotifyEventsError
from ..scaleout.cli import jetstream_options, run_ingest
from .cli_options import delivery_options, log_level_option, schemas_option
from .config import CollectorConfig, collector_default


@click.command("collector")
@click.option(
    "--host", default=collector_default("host"), show_default=True, help="Address to listen on."
)
@click.option(
    "--port",
    default=collector_default("port"),
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where buckets and the ledger live (required unless --nats).",
)
@schemas_option("Directory (or file) of .avsc event schemas the collector accepts.")
@delivery_options
@click.option(
    "--token",
    envvar="SPOTIFY_EVENTS_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' (env SPOTIFY_EVENTS_TOKEN).",
)
@click.option(
    "--max-body-bytes",
    default=collector_default("max_body_bytes"),
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest accepted request body (413 above).",
)
@click.option(
    "--threads",
    default=collector_default("threads"),
    show_default=True,
    type=click.IntRange(min=1),
    help="HTTP worker threads.",
)
@click.option(
    "--metrics-token",
    envvar="SPOTIFY_EVENTS_METRICS_TOKEN",
    default=None,
    help="A second token accepted on /metrics only, for scrapers (env "
    "SPOTIFY_EVENTS_METRICS_TOKEN). With --token or this set, /metrics needs one of them.",
)
@click.option(
    "--connection-limit",
    default=collector_default("connection_limit"),
    show_default=True,
    type=click.IntRange(min=1),
    help="Most simultaneous client connections (each SDK client keeps one open).",
)
@click.option(
    "--channel-timeout",
    default=collector_default("channel_timeout"),
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds an idle connection is kept open.",
)
@click.option(
    "--max-open-files",
    default=collector_default("max_open_files"),
    show_default=True,
    type=click.IntRange(min=1),
    help="Part files kept open at once; the least recently used is closed.",
)
@click.option(
    "--max-hours-per-batch",
    default=collector_default("max_hours_per_batch"),
    show_default=True,
    type=click.IntRange(min=1),
    help="Hourly buckets one batch may write to; further events are rejected "
    "(code too_many_hours).",
)
@click.option(
    "--max-ranges-per-stream",
    default=collector_default("max_ranges_per_stream"),
    show_default=True,
    type=click.IntRange(min=1),
    help="Ranges of sequence numbers one (producer, event type) may need; events that "
    "would open another are rejected (code too_many_ranges).",
)
@click.option(
    "--max-future",
    "max_future_seconds",
    default=collector_default("max_future_seconds"),
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds an event time may be ahead of this clock; later ones are rejected "
    "(code too_far_in_future).",
)
@click.option(
    "--group-readable",
    is_flag=True,
    help="Create files 0640 and directories 0750 instead of owner-only 0600/0700.",
)
@click.option(
    "--adopt-data-dir",
    is_flag=True,
    help="Start a new ledger in a data directory that has files but no ledger; part files "
    "it does not know are moved to DATA_DIR/_quarantine (nothing is deleted).",
)
@log_level_option
@jetstream_options
def collector_command(
    host: str,
    port: int,
    data_dir: str,
    schemas_dir: str,
    token: str | None,
    grace_period: float,
    lateness: float,
    max_body_bytes: int,
    threads: int,
    close_interval: float,
    metrics_token: str | None,
    connection_limit: int,
    channel_timeout: float,
    max_open_files: int,
    max_hours_per_batch: int,
    max_ranges_per_stream: int,
    max_future_seconds: float,
    group_readable: bool,
    adopt_data_dir: bool,
    log_level: str,
    nats_urls: str | None,
    **jetstream: Any,
) -> None:
    """Run the reference collector in the foreground until SIGTERM/SIGINT."""
    from .process import require_collector_extra

    try:
        require_collector_extra("collector")
    except SpotifyEventsError as exc:
        raise click.ClickException(str(exc)) from exc
    if nats_urls:
        ctx = click.get_current_context()
        for name in ("data_dir", "grace_period", "lateness", "close_interval"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} belongs to the delivery workers with --nats")
        run_ingest(
            nats_urls=nats_urls,
            host=host,
            port=port,
            schemas_dir=schemas_dir,
            token=token,
            max_body_bytes=max_body_bytes,
            threads=threads,
            log_level=log_level,
            **jetstream,
        )
        return
    if data_dir is None:
        raise click.UsageError("--data-dir is required (or --nats URL for the scaled-out shape)")
    from .server import serve

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = CollectorConfig(
            data_dir=data_dir,
            schemas=schemas_dir,
            host=host,
            port=port,
            token=token or None,
            grace_period=grace_period,
            lateness=lateness,
            max_body_bytes=max_body_bytes,
            threads=threads,
            close_interval=close_interval,
            metrics_token=metrics_token or None,
            connection_limit=connection_limit,
            channel_timeout=channel_timeout,
            max_open_files=max_open_files,
            max_hours_per_batch=max_hours_per_batch,
            max_ranges_per_stream=max_ranges_per_stream,
            max_future_seconds=max_future_seconds,
            group_readable=group_readable,
            adopt_data_dir=adopt_data_dir,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def ready(url: str) -> None:
        click.echo(f"listening on {url}")
        sys.stdout.flush()

    try:
        serve(config, ready=ready)
    except (SpotifyEventsError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("report")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A collector's data directory (the collector may be stopped).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable keys).")
@click.option(
    "--grace-period",
    default=None,
    type=click.FloatRange(min=0),
    help="Override the grace period the collector recorded.",
)
def report_command(data_dir: str, as_json: bool, grace_period: float | None) -> None:
    """Print the delivery and loss report of a collector's data directory."""
    from .datadir import DataDirError
    from .report import format_table, load_report

    try:
        report = load_report(data_dir, now=time.time(), grace=grace_period)
    except (FileNotFoundError, DataDirError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(format_table(report))
