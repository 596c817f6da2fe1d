"""Command-line options that ``collector`` and ``deliver`` share, written once.

Both commands run the same delivery half (grace period, lateness, bucket closing)
over the same schemas, so they take these options with the same names, defaults
(from :class:`~spotify_events.collector.config.CollectorConfig`), ranges and help.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .config import collector_default

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ("debug", "info", "warning", "error")


def schemas_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--schemas",
        "schemas_dir",
        required=True,
        type=click.Path(exists=True),
        help=help_text,
    )


def delivery_options(func: F) -> F:
    """--grace-period, --lateness and --close-interval: how the buckets are judged and closed."""
    for option in reversed(
        (
            click.option(
                "--grace-period",
                default=collector_default("grace_period"),
                show_default=True,
                type=click.FloatRange(min=0),
                help="Seconds a missing sequence number stays an open gap before it is lost.",
            ),
            click.option(
                "--lateness",
                default=collector_default("lateness"),
                show_default=True,
                type=click.FloatRange(min=0),
                help="Seconds after an hour ends before its bucket closes.",
            ),
            click.option(
                "--close-interval",
                default=collector_default("close_interval"),
                show_default=True,
                type=click.FloatRange(min=0.01),
                help="Seconds between checks for buckets to close.",
            ),
        )
    ):
        func = option(func)
    return func


def log_level_option(func: F) -> F:
    return click.option(
        "--log-level",
        default="warning",
        show_default=True,
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        help="Least severe log level written to stderr.",
    )(func)
