"""The scaled-out tier the cluster tests run against: a real 3-node JetStream cluster
(R3 stream) on loopback, ``collector --nats`` processes and ``deliver`` workers, and what
the tests ask of it (who owns which partition, the stream leader, the report).

Kept out of conftest.py so test modules import it by a name no other test folder uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from support import SCHEMAS

from spotify_events.collector.process import ServiceProcess
from spotify_events.collector.report import load_report
from spotify_events.scaleout.connection import stream_leader
from spotify_events.scaleout.natsserver import NatsCluster

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

    def worker(self, program: list[str] | None = None) -> ServiceProcess:
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
        )
        if program is not None:
            child.program = program
        child.start()
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
        return stream_leader(self.cluster.urls, STREAM, name="cluster-tests")
