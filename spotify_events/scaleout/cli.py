"""Command-line pieces of the scaled-out tier.

``collector --nats`` keeps the collector command (its options are added here by
:func:`jetstream_options`, and :func:`run_ingest` runs it); ``deliver`` is a command
of its own. Like every subcommand, imported only when used.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..collector.cli_options import delivery_options, log_level_option, schemas_option
from ..errors import SpotifyEventsError
from .worker_config import WorkerConfig

F = TypeVar("F", bound=Callable[..., Any])

_STREAM_HELP = "JetStream stream name (created when absent)."


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            "the scaled-out tier needs the NATS client: pip install 'spotify-events[nats]'"
        ) from exc


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _ready(url: str) -> None:
    click.echo(f"listening on {url}")
    sys.stdout.flush()


def jetstream_options(command: F) -> F:
    """The collector's ``--nats`` options (the scaled-out shape: no ``--data-dir``)."""
    options = [
        click.option(
            "--nats",
            "nats_urls",
            default=None,
            help="NATS server URL(s), comma-separated: publish to JetStream instead of "
            "writing buckets (no --data-dir; run 'spotify-events deliver' workers).",
        ),
        click.option("--stream", default="SPOTIFY_EVENTS", show_default=True, help=_STREAM_HELP),
        click.option(
            "--replicas",
            default=3,
            show_default=True,
            type=click.Choice(["1", "3", "5"]),
            help="Stream replicas when the stream is created.",
        ),
        click.option(
            "--partitions",
            default=8,
            show_default=True,
            type=click.IntRange(1, 1024),
            help="Stream partitions; must match an existing stream.",
        ),
        click.option(
            "--workers",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Processes serving the port (with --nats).",
        ),
        click.option(
            "--publish-timeout",
            default=5.0,
            show_default=True,
            type=click.FloatRange(min=0.1),
            help="Seconds to wait for JetStream's acks of a batch's messages before answering 503.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_ingest(
    *,
    nats_urls: str,
    host: str,
    port: int,
    schemas_dir: str,
    token: str | None,
    max_body_bytes: int,
    threads: int,
    log_level: str,
    stream: str,
    replicas: str,
    partitions: int,
    workers: int,
    publish_timeout: float,
) -> None:
    """``collector --nats``: validate, publish, answer; no local state."""
    _require_nats()
    from .connection import split_urls
    from .serve import IngestConfig, serve
    from .stream import StreamSettings

    _setup_logging(log_level)
    try:
        config = IngestConfig(
            urls=split_urls(nats_urls),
            schemas=schemas_dir,
            stream=StreamSettings(name=stream, partitions=partitions, replicas=int(replicas)),
            host=host,
            port=port,
            token=token or None,
            max_body_bytes=max_body_bytes,
            threads=threads,
            workers=workers,
            publish_timeout=publish_timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        serve(config, ready=_ready)
    except (SpotifyEventsError, OSError, TimeoutError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # nats-py's connection errors have no common base
        raise click.ClickException(f"cannot reach JetStream: {type(exc).__name__}: {exc}") from exc


@click.command("deliver")
@click.option("--nats", "nats_urls", required=True, help="NATS server URL(s), comma-separated.")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where buckets and the partition ledgers live (shared by all workers).",
)
@schemas_option("Directory (or file) of .avsc event schemas (the collectors' set).")
@delivery_options
@click.option("--stream", default="SPOTIFY_EVENTS", show_default=True, help="JetStream stream.")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve /healthz, /metrics and the completeness page (/) on this port (0 picks one).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for --port.")
@click.option(
    "--token",
    envvar="SPOTIFY_EVENTS_TOKEN",
    default=None,
    help="Token / and /metrics need (bearer, or a browser's basic-auth password); "
    "env SPOTIFY_EVENTS_TOKEN.",
)
@click.option(
    "--lease-ttl",
    default=WorkerConfig.lease_ttl,
    show_default=True,
    type=click.FloatRange(min=0.3),
    help="Seconds a partition lease lasts unrenewed; a dead worker's partitions move "
    "within 4/3 of it.",
)
@click.option(
    "--ack-wait",
    default=WorkerConfig.ack_wait,
    show_default=True,
    type=click.FloatRange(min=0.3),
    help="Seconds before JetStream redelivers a message fetched but not acknowledged.",
)
@log_level_option
def deliver_command(
    nats_urls: str,
    data_dir: str,
    schemas_dir: str,
    stream: str,
    lateness: float,
    grace_period: float,
    port: int | None,
    host: str,
    token: str | None,
    lease_ttl: float,
    ack_wait: float,
    close_interval: float,
    log_level: str,
) -> None:
    """Run a delivery worker: stream partitions -> dedupe ledger -> hourly buckets."""
    _require_nats()
    from .connection import split_urls
    from .worker import run_worker

    _setup_logging(log_level)
    try:
        config = WorkerConfig(
            urls=split_urls(nats_urls),
            data_dir=data_dir,
            schemas=schemas_dir,
            stream=stream,
            grace_period=grace_period,
            lateness=lateness,
            host=host,
            port=port,
            token=token or None,
            lease_ttl=lease_ttl,
            ack_wait=ack_wait,
            close_interval=close_interval,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def ready(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    try:
        run_worker(config, ready)
    except (SpotifyEventsError, OSError, TimeoutError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
