"""Fixtures for the cluster suite: a real 3-node JetStream cluster (R3 stream) on
loopback, two ``collector --nats`` processes and two ``deliver`` workers.

The tier is module-scoped: starting it costs a few seconds, and each test uses its
own producers (their own ids and event ids), so tests only ever look at their own
events. Servers use the tests' own ports and store directories, never :4222.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_tier import PARTITIONS, Tier
from support import free_port, wait_for

from spotify_events.scaleout.natsserver import NatsCluster, NatsServerError, find_server


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
