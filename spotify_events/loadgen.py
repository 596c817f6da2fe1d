"""``spotify-events loadgen``: load a collector the way a fleet of SDKs would.

What an operator sizes a deployment with. Many simulated producers, each with its
own producer id and contiguous per-type sequence numbers, send batches the way the
SDK does: one request in flight per producer, the next batch only after the
collector's JSON acknowledgement, the same batch again after a 429/503 (honouring
``Retry-After``). Every ``drop_every``-th batch of a producer follows a short run
of numbers that were "dropped" and carries the drop notice; idle producers send
heartbeats. So the collector (and, behind ``--nats``, the workers) do all the
accounting work they do in production.

Batches are encoded before the clock starts (the generator must not be what is
measured), bounded by ``max_prepared_bytes``. Output: accepted events per second,
request latency percentiles, and errors by kind.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import requests

from .encoding import EventEncoder
from .errors import ConfigError
from .schemas import SchemaRegistry
from .wire import CONTENT_TYPE, DropNotice, Envelope, WireBatch, encode_batch

EVENT_TYPE = "spotify.events.playback.EndSong"
DROP_REASON = "loadgen: simulated queue full"


@dataclass(frozen=True)
class LoadSpec:
    """One run; validated at construction."""

    url: str
    producers: int = 16
    rate: float = 10_000.0  # events per second, all producers together
    duration: float = 10.0
    batch_events: int = 500
    drop_every: int = 20  # every Nth batch of a producer follows a dropped run; 0 = never
    heartbeat_interval: float = 1.0
    max_prepared_bytes: int = 512 << 20
    token: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.producers < 1 or self.batch_events < 1:
            raise ConfigError("producers and batch_events must be >= 1")
        if self.rate <= 0 or self.duration <= 0:
            raise ConfigError("rate and duration must be > 0")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("url must be http(s)")

    @property
    def endpoint(self) -> str:
        return (
            self.url
            if self.url.rstrip("/").endswith("/v1/batches")
            else self.url.rstrip("/") + "/v1/batches"
        )


@dataclass
class Result:
    """What the collector answered, summed over the run."""

    sent_events: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    heartbeats: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "accepted_per_s": round(self.accepted / self.elapsed, 1) if self.elapsed else 0.0,
            "batches": self.batches,
            "heartbeats": self.heartbeats,
            "elapsed_s": round(self.elapsed, 2),
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
            "errors": dict(self.errors),
        }


@dataclass
class _Batch:
    body: bytes
    events: int
    next_seq: int  # the watermark once this batch is acknowledged


class _Producer:
    """One simulated SDK: its id, its prepared batches, and when it sends next."""

    def __init__(
        self, producer_id: str, batches: list[_Batch], period: float, start: float
    ) -> None:
        self.producer_id = producer_id
        self.batches = batches
        self.period = period
        self.due = start  # the next batch
        self.last_sent = start
        self.index = 0

    def heartbeat(self) -> bytes:
        next_seq = self.batches[self.index - 1].next_seq if self.index else 1
        return encode_batch(
            WireBatch(
                self.producer_id, [], {EVENT_TYPE: next_seq}, service="loadgen", host="loadgen"
            )
        )


def prepare(
    spec: LoadSpec, registry: SchemaRegistry, seed: int = 7
) -> list[tuple[str, list[_Batch]]]:
    """Every producer's batches for the whole run, encoded now."""
    rng = random.Random(seed)
    schema = registry.get(EVENT_TYPE)
    encoder = EventEncoder(schema)
    payloads = [
        encoder.encode(
            {
                "user_id": f"user-{rng.randrange(100_000)}",
                "track_id": f"track-{rng.randrange(1_000_000)}",
                "ms_played": rng.randrange(400_000),
                "reason_start": "CLICKROW",
                "reason_end": "TRACKDONE",
                "platform": rng.choice(("ios", "android", "web")),
            }
        )
        for _ in range(1024)
    ]
    per_producer = spec.rate / spec.producers
    count = max(1, int(per_producer * spec.duration / spec.batch_events) + 1)
    out: list[tuple[str, list[_Batch]]] = []
    total = 0
    for _ in range(spec.producers):
        producer = str(uuid.uuid4())
        seq = 1
        batches = []
        for i in range(count):
            drops = []
            if spec.drop_every and i % spec.drop_every == spec.drop_every - 1:
                drops = [DropNotice(EVENT_TYPE, seq, seq + 4, 5, DROP_REASON)]
                seq += 5
            now_ms = int(time.time() * 1000)
            envelopes = [
                Envelope(
                    seq + k, EVENT_TYPE, schema.fingerprint, now_ms, payloads[(seq + k) % 1024]
                )
                for k in range(spec.batch_events)
            ]
            seq += spec.batch_events
            body = encode_batch(
                WireBatch(
                    producer, envelopes, {EVENT_TYPE: seq}, drops, service="loadgen", host="loadgen"
                )
            )
            total += len(body)
            if total > spec.max_prepared_bytes:
                raise ConfigError(
                    f"the run needs more than {spec.max_prepared_bytes >> 20} MiB of prepared batches; "
                    "lower --rate or --duration, or raise --batch-events"
                )
            batches.append(_Batch(body, len(envelopes), seq))
        out.append((producer, batches))
    return out


def run(spec: LoadSpec, registry: SchemaRegistry, *, threads: int = 16) -> Result:
    """Send the prepared batches on schedule for ``spec.duration`` seconds."""
    prepared = prepare(spec, registry)
    period = spec.batch_events / (spec.rate / spec.producers)
    start = time.monotonic() + 0.1
    producers = [
        _Producer(producer_id, batches, period, start + period * i / spec.producers)
        for i, (producer_id, batches) in enumerate(prepared)
    ]
    end = start + spec.duration
    result = Result()
    lock = threading.Lock()
    groups = [producers[i :: max(1, threads)] for i in range(min(threads, len(producers)))]
    workers = [
        threading.Thread(target=_drive, args=(spec, group, end, result, lock), daemon=True)
        for group in groups
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result.elapsed = max(time.monotonic() - start, 1e-9)
    return result


def _drive(
    spec: LoadSpec, producers: list[_Producer], end: float, result: Result, lock: threading.Lock
) -> None:
    session = requests.Session()
    headers = {"Content-Type": CONTENT_TYPE}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    while True:
        now = time.monotonic()
        if now >= end:
            return

        def next_time(q: _Producer) -> float:
            batch_due = q.due if q.index < len(q.batches) else float("inf")
            return min(batch_due, q.last_sent + spec.heartbeat_interval)

        p = min(producers, key=next_time)
        when = next_time(p)
        if when > now:
            time.sleep(min(when - now, end - now))
            continue
        if p.index < len(p.batches) and p.due <= now:
            batch = p.batches[p.index]
            ok, delay = _send(session, spec, headers, batch.body, batch.events, result, lock)
            if ok:
                p.index += 1
                p.due += p.period
            else:
                p.due = time.monotonic() + delay
        else:  # idle for a heartbeat interval: say where the sequence is
            _send(session, spec, headers, p.heartbeat(), 0, result, lock)
        p.last_sent = time.monotonic()


def _send(
    session: requests.Session,
    spec: LoadSpec,
    headers: dict[str, str],
    body: bytes,
    events: int,
    result: Result,
    lock: threading.Lock,
) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        response = session.post(spec.endpoint, data=body, headers=headers, timeout=spec.timeout)
    except requests.RequestException as exc:
        with lock:
            result.errors[type(exc).__name__] += 1
        return False, 1.0
    elapsed = time.perf_counter() - started
    with lock:
        result.latencies.append(elapsed)
        if response.status_code != 200:
            result.errors[f"HTTP {response.status_code}"] += 1
            retry = response.headers.get("Retry-After", "1")
            return False, float(retry) if retry.replace(".", "", 1).isdigit() else 1.0
        try:
            answer = response.json()
            accepted, duplicates = int(answer["accepted"]), int(answer["duplicates"])
            rejected = len(answer["rejected"])
        except (ValueError, KeyError, TypeError):
            result.errors["not a collector answer"] += 1
            return False, 1.0
        if accepted + duplicates + rejected != events:
            result.errors["counts do not add up"] += 1
        result.sent_events += events
        result.accepted += accepted
        result.duplicates += duplicates
        result.rejected += rejected
        if events:
            result.batches += 1
        else:
            result.heartbeats += 1
    return True, 0.0


def _lines(summary: dict[str, Any]) -> Iterator[str]:
    lat = summary["latency_ms"]
    yield (
        f"accepted {summary['accepted']} events in {summary['elapsed_s']} s: "
        f"{summary['accepted_per_s']:.0f} events/s ({summary['batches']} batches, "
        f"{summary['duplicates']} duplicates, {summary['rejected']} rejected)"
    )
    yield f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}"
    errors = summary["errors"]
    yield "errors: " + (", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "none")


@click.command("loadgen")
@click.argument("url")
@click.option("--producers", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--rate",
    default=10_000.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Events/s in total.",
)
@click.option(
    "--duration", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds."
)
@click.option("--batch-events", default=500, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--threads", default=16, show_default=True, type=click.IntRange(min=1), help="Sending threads."
)
@click.option(
    "--schemas",
    default="schemas",
    show_default=True,
    type=click.Path(exists=True, path_type=Path),
    help="Where the EndSong schema is (the collector's set).",
)
@click.option(
    "--drop-every",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Every Nth batch of a producer follows 5 dropped numbers and their drop notice; 0 = none.",
)
@click.option("--token", envvar="SPOTIFY_EVENTS_TOKEN", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def loadgen_command(
    url: str,
    producers: int,
    rate: float,
    duration: float,
    batch_events: int,
    threads: int,
    schemas: Path,
    drop_every: int,
    token: str | None,
    as_json: bool,
) -> None:
    """Send EndSong batches from many simulated producers to URL at a steady rate."""
    try:
        spec = LoadSpec(
            url=url,
            producers=producers,
            rate=rate,
            duration=duration,
            batch_events=batch_events,
            drop_every=drop_every,
            token=token,
        )
        result = run(spec, SchemaRegistry(schemas), threads=threads)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for line in _lines(summary):
            click.echo(line)
