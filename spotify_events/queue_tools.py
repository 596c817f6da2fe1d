"""``spotify-events queue``: look into a queue file, replay dead letters, drain it.

For the person on call: what is waiting in a service's queue file, what the
collector refused and why, and a way to send what is left when the service that
wrote it is gone. ``inspect`` and ``dead-letters`` only read (a copied file they
open is not re-identified); ``replay`` and ``ship`` write like a client would.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .config import ClientConfig
from .errors import SpotifyEventsError
from .queue import DurableQueue
from .shipper import Shipper
from .transport import HttpTransport


def _open(path: str, *, claim_home: bool) -> DurableQueue:
    """The queue file at ``path``, opened as the agent opens it (``upgrade=False``): no
    tool stores a block, so none lifts a file past the format its service's SDK reads."""
    if not Path(path).is_file():
        raise click.ClickException(f"no queue file at {path}")
    try:
        return DurableQueue(path, claim_home=claim_home, upgrade=False)
    except SpotifyEventsError as exc:
        raise click.ClickException(str(exc)) from exc


def describe_queue(queue: DurableQueue, now: float | None = None) -> dict[str, Any]:
    """Everything ``queue inspect`` shows, as one JSON-ready dict."""
    now = time.time() if now is None else now
    depth = queue.depth()
    dead: dict[str, dict[str, int]] = {}
    for event_type, _, reason in queue.dead_letters():
        by_reason = dead.setdefault(event_type, {})
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "path": str(queue.path),
        "producer_id": queue.producer_id,
        "events": depth.events,
        "bytes": depth.bytes,
        "types": {
            event_type: {
                "events": n,
                "oldest_age_seconds": None if oldest is None else round(now - oldest / 1000, 3),
            }
            for event_type, (n, oldest) in sorted(queue.depth_by_type().items())
        },
        "unreported_drops": [notice.to_json() for _, notice in queue.unreported_drops()],
        "dead_letters": dead,
        "held": [
            {
                "event_type": hold.event_type,
                "fingerprint": hold.fingerprint.hex(),
                "events": hold.events,
                "reason": hold.reason,
                "attempts": hold.attempts,
                "next_try_in_seconds": round(max(0.0, hold.next_try - now), 3),
            }
            for hold in queue.holds()
        ],
        "lease_holder": queue.lease_holder(),
    }


@click.group("queue")
def queue_group() -> None:
    """Look into a queue file, replay its dead letters, or ship what it holds."""


@queue_group.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect_command(path: str, as_json: bool) -> None:
    """Producer id, depth and oldest age per type, drops, dead letters, held events, lease."""
    queue = _open(path, claim_home=False)
    try:
        info = describe_queue(queue)
    finally:
        queue.close()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"queue {info['path']}  producer {info['producer_id']}")
    click.echo(f"  {info['events']} event(s) queued, {info['bytes']} bytes")
    for event_type, t in info["types"].items():
        click.echo(f"    {event_type}: {t['events']} (oldest {t['oldest_age_seconds']} s ago)")
    for drop in info["unreported_drops"]:
        click.echo(
            f"  drop not yet reported: {drop['event_type']} seq {drop['first_seq']}..."
            f"{drop['last_seq']} ({drop['count']}, {drop['reason']})"
        )
    for event_type, reasons in info["dead_letters"].items():
        for reason, n in reasons.items():
            click.echo(f"  dead letters: {event_type}: {n} ({reason})")
    for hold in info["held"]:
        click.echo(
            f"  held: {hold['event_type']}: {hold['events']} event(s); the collector lacks schema "
            f"{hold['fingerprint']} (next try in {hold['next_try_in_seconds']} s)"
        )
    click.echo(f"  shipping lease: {info['lease_holder'] or 'free'}")


@queue_group.command("dead-letters")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def dead_letters_command(path: str, as_json: bool) -> None:
    """Every event the collector refused: type, sequence number, reason."""
    queue = _open(path, claim_home=False)
    try:
        letters = queue.dead_letters()
    finally:
        queue.close()
    if as_json:
        rows = [{"event_type": t, "seq": s, "reason": r} for t, s, r in letters]
        click.echo(json.dumps(rows, indent=2))
        return
    for event_type, seq, reason in letters:
        click.echo(f"{event_type}\t{seq}\t{reason}")
    if not letters:
        click.echo("no dead letters", err=True)


@queue_group.command("replay")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--type", "event_type", default=None, help="Only this event type (full name).")
def replay_command(path: str, event_type: str | None) -> None:
    """Put dead letters back into the queue, with their sequence numbers; they ship
    with the next client on this file (or `queue ship`)."""
    queue = _open(path, claim_home=True)
    try:
        n = queue.replay_dead_letters(event_type)
        left = sum(1 for t, _, _ in queue.dead_letters() if event_type in (None, t))
    finally:
        queue.close()
    click.echo(f"{n} dead letter(s) back in the queue")
    if left:
        click.echo(
            f"{left} dead letter(s) of an earlier producer of this copied file stay: sent under "
            "its new producer, their numbers would name other events",
            err=True,
        )


@queue_group.command("ship")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--endpoint", default=None, help="Collector URL (default: SPOTIFY_EVENTS_ENDPOINT).")
@click.option(
    "--timeout", default=60.0, show_default=True, type=float, help="Give up after S seconds."
)
def ship_command(path: str, endpoint: str | None, timeout: float) -> None:
    """Send what the queue holds now, then exit (0: all acknowledged, 1: some left)."""
    try:
        config = ClientConfig.build(queue_path=path, endpoint=endpoint)
    except SpotifyEventsError as exc:
        raise click.ClickException(str(exc)) from exc
    queue = _open(path, claim_home=True)
    transport = HttpTransport(config.transport_settings())
    # a one-shot send has nothing to wait for: no linger
    shipper = Shipper(queue, transport, replace(config.shipper_settings(), linger=0.0))
    try:
        shipper.start()
        done = shipper.wait_shipped(time.monotonic() + timeout)
    finally:
        shipper.stop(5.0)
        transport.close()
        left = queue.depth().events
        queue.close()
    if not done:
        click.echo(
            f"{left} event(s) still in {path} after {timeout:g} s "
            f"({shipper.counters.last_error or 'no answer yet'})",
            err=True,
        )
        sys.exit(1)
    click.echo(f"shipped; {shipper.counters.acknowledged} event(s) acknowledged")
