"""Fixtures for the cluster suite: a real 3-node JetStream cluster (R3 stream) on
loopback, two ``collector --nats`` processes and two ``deliver`` workers.

The tier is module-scoped: starting it costs a few seconds, and each test uses its
own producers (their own ids and event ids), so tests only ever look at their own
events. Servers use the tests' own ports and store directories, never :4222.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cluster_helpers import SCHEMAS
from support import free_port, wait_for

from spotify_events.collector.report import load_report
from spotify_events.scaleout.connection import close, connect
from spotify_events.scaleout.natsserver import NatsCluster, NatsServerError, find_server
from spotify_events.scaleout.processes import ServiceProcess

STREAM = "SE_TEST"
PARTITIONS = 4
LEASE_TTL = 3.0


@dataclass
class Tier:
    root: Path
    cluster: NatsCluster
    data_dir: Path
    collectors: list[ServiceProcess] = field(default_factory=list)
    collector_ports: list[int] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)
    fault_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/v1/batches" for p in self.collector_ports]

    def collector(self, port: int) -> ServiceProcess:
        return ServiceProcess(
            [
                "collector",
                "--port",
                str(port),
                "--schemas",
                str(SCHEMAS),
                "--nats",
                self.cluster.urls,
                "--stream",
                STREAM,
                "--replicas",
                "3",
                "--partitions",
                str(PARTITIONS),
                "--publish-timeout",
                "2",
                "--threads",
                "4",
            ],
            ready_prefix="listening on",
            name=f"collector:{port}",
        ).start()

    def worker(self, env: dict[str, str] | None = None) -> ServiceProcess:
        child = ServiceProcess(
            [
                "deliver",
                "--nats",
                self.cluster.urls,
                "--data-dir",
                str(self.data_dir),
                "--schemas",
                str(SCHEMAS),
                "--stream",
                STREAM,
                "--port",
                "0",
                "--lease-ttl",
                str(LEASE_TTL),
                "--ack-wait",
                "6",
                "--close-interval",
                "1",
                "--log-level",
                "INFO",
            ],
            ready_prefix="listening on",
            name="worker",
            env=env or {},
        ).start()
        self.workers.append(child)
        return child

    def health(self, worker: ServiceProcess) -> dict[str, Any] | None:
        try:
            response = requests.get(worker.url + "/healthz", timeout=2)
            data: dict[str, Any] = response.json()
            return data
        except (requests.RequestException, ValueError):
            return None

    def owned(self) -> dict[int, list[int]]:
        """Alive worker index -> partitions it reports owning."""
        out = {}
        for i, w in enumerate(self.workers):
            if w.proc is not None and w.proc.poll() is None:
                h = self.health(w)
                out[i] = h["partitions"] if h else []
        return out

    def report(self) -> dict[str, Any]:
        return load_report(self.data_dir, now=time.time())

    def stream_leader(self) -> str:
        """The stream leader's server name; "" while there is none (an election)."""

        async def leader() -> str:
            nc = await connect(self.cluster.urls.split(","), name="cluster-tests")
            try:
                info = await nc.jetstream(timeout=5).stream_info(STREAM)
                return str(info.cluster.leader)
            finally:
                await close(nc)

        try:
            return asyncio.run(asyncio.wait_for(leader(), 10))
        except Exception:
            return ""


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    try:
        find_server()
    except NatsServerError as exc:
        pytest.skip(f"no usable nats-server: {exc}")
    root = tmp_path_factory.mktemp("cluster")
    cluster = NatsCluster(root / "nats", size=3).start()
    t = Tier(root=root, cluster=cluster, data_dir=root / "data")
    try:
        t.collector_ports = [free_port(), free_port()]
        t.collectors = [t.collector(p) for p in t.collector_ports]
        t.worker()
        t.worker()
        assert wait_for(
            lambda: (
                sorted(p for ps in t.owned().values() for p in ps) == list(range(PARTITIONS))
                and all(t.owned().values())
            ),
            timeout=60,
        ), t.owned()
        yield t
    finally:
        for child in t.collectors + t.workers:
            try:
                child.stop(30)
            except Exception:
                child.kill()
        cluster.stop()
        cluster.kill()
        _print_fault_table(t.fault_rows)


def _print_fault_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    lines = ["", "fault | events | delivered | duplicated | lost | redelivered (deduped) | note"]
    lines += [
        f"{r['fault']} | {r['events']} | {r['delivered']} | {r['duplicated']} | {r['lost']} | "
        f"{r['report_duplicates_deduped']} | {r.get('note', '')}"
        for r in rows
    ]
    print("\n".join(lines))
    target = os.environ.get("SPOTIFY_EVENTS_FAULT_TABLE")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
