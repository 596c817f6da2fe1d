"""The scaled-out tier under faults, on a real 3-node JetStream cluster (R3).

Each test runs SDK producers against the two collectors while one fault happens,
then checks, from the bucket files themselves, that every event logged is there
exactly once, and that the report (every partition's ledger added up) counts the
same events with nothing lost and no gap left open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cluster_helpers import Producers, bucket_ids, received_by
from cluster_tier import LEASE_TTL, PARTITIONS, STREAM, Tier
from failpoints import failpoint_program
from support import wait_for

from spotify_events.collector.process import ServiceProcess
from spotify_events.scaleout.connection import close, connect, split_urls

pytest.importorskip("nats", reason="needs the nats extra: pip install 'spotify-events[nats]'")

pytestmark = [pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(300)]


def run_phase(
    tier: Tier, phase: str, fault: Callable[[Producers], str | None], *, producers: int = 4
) -> dict[str, Any]:
    """Producers log through ``fault``; then every event must be in the buckets once."""
    (tier.root / "queues").mkdir(exist_ok=True)
    p = Producers(tier.root / "queues", phase, tier.endpoints, producers, PARTITIONS)
    p.start(rate_per_producer=150)
    try:
        assert wait_for(lambda: p.total >= 300, timeout=30)
        note = fault(p) or ""
        more = p.total + 300
        assert wait_for(lambda: p.total >= more, timeout=30)
    finally:
        p.stop()
    try:
        assert p.flush(120), [c.stats() for c in p.clients]
        ids = p.producer_ids
        assert wait_for(
            lambda: received_by(tier.report(), ids)["received"] >= p.total, timeout=120
        ), received_by(tier.report(), ids)
        assert wait_for(lambda: received_by(tier.report(), ids)["open_gaps"] == 0, timeout=60)
        counts = bucket_ids(tier.data_dir, f"{phase}-")
        totals = received_by(tier.report(), ids)
    finally:
        p.close()
    expected = {f"{phase}-{i}-{n}" for i, logged in enumerate(p.logged) for n in range(logged)}
    row = {
        "fault": phase,
        "events": p.total,
        "delivered": len(set(counts) & expected),
        "duplicated": sum(c - 1 for c in counts.values() if c > 1),
        "lost": len(expected - set(counts)),
        "report_lost": totals["lost"],
        "report_duplicates_deduped": totals["duplicates"],
        "note": note,
    }
    tier.fault_rows.append(row)
    assert set(counts) == expected, row
    assert row["duplicated"] == 0, row
    assert totals["received"] == p.total and totals["lost"] == 0 and totals["dropped"] == 0, totals
    return row


def test_stream_leader_sigkill(tier: Tier) -> None:
    def fault(p: Producers) -> str:
        leader = tier.stream_leader()
        assert leader
        node = tier.cluster.node_named(leader)
        node.kill()
        before = p.total
        started = time.monotonic()
        # the survivors elect a new leader; producers keep being acknowledged
        assert wait_for(lambda: tier.stream_leader() not in ("", leader), timeout=60)
        elected = time.monotonic() - started
        assert wait_for(lambda: p.total > before + 300, timeout=60)
        node.start()
        return f"killed leader {leader}; new leader after {elected:.1f}s"

    run_phase(tier, "leader-kill", fault)


def test_collector_sigkill_and_restart(tier: Tier) -> None:
    def fault(p: Producers) -> str:
        victim = tier.collectors[0]
        retried = sum(c.stats().retried for c in p.clients)
        victim.kill()
        # its producers' sends fail and are retried before it is back
        assert wait_for(lambda: sum(c.stats().retried for c in p.clients) > retried, timeout=30)
        tier.collectors[0] = tier.collector(tier.collector_ports[0])
        return "collector SIGKILLed, restarted on its port"

    run_phase(tier, "collector-kill", fault)


def test_worker_sigkill_partitions_taken_over(tier: Tier) -> None:
    def fault(p: Producers) -> str:
        alive = tier.owned()
        victim_index = next(i for i, parts in alive.items() if parts)
        victim = tier.workers[victim_index]
        victim.kill()
        started = time.monotonic()
        survivors = [i for i in alive if i != victim_index]

        def taken_over() -> bool:
            owned = tier.owned()
            return sorted(q for i in survivors for q in owned.get(i, [])) == list(range(PARTITIONS))

        assert wait_for(taken_over, timeout=60), tier.owned()
        took = time.monotonic() - started
        # bounded and documented: a lease lasts LEASE_TTL, others look every LEASE_TTL / 3
        tier.worker()  # a replacement, so later tests run with two workers again
        return f"partitions taken over after {took:.1f}s (lease ttl {LEASE_TTL:g}s)"

    run_phase(tier, "worker-kill", fault)


def test_jetstream_fully_down(tier: Tier) -> None:
    def unavailable_answers() -> float:
        total = 0.0
        for port in tier.collector_ports:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith("spotify_events_collector_requests_total{") and (
                    'status="503"' in line and 'path="/v1/batches"' in line
                ):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def fault(p: Producers) -> str:
        before = unavailable_answers()
        for node in tier.cluster.nodes:
            node.kill()
        down_at = time.monotonic()
        # collectors answer 503 (with Retry-After); the SDKs keep the events queued
        assert wait_for(lambda: unavailable_answers() > before + 5, timeout=60)
        logged = p.total
        assert wait_for(lambda: p.total > logged + 600, timeout=60)  # logging goes on
        wait_for(lambda: time.monotonic() - down_at >= 10, timeout=15, interval=0.2)
        tier.cluster.start()
        return f"all 3 nodes down {time.monotonic() - down_at:.0f}s; 503s answered"

    run_phase(tier, "jetstream-down", fault)


def test_rolling_restart_of_all_servers(tier: Tier) -> None:
    def fault(p: Producers) -> str:
        for node in tier.cluster.nodes:
            node.stop()
            node.start()
            before = p.total
            assert wait_for(lambda: p.total > before + 150, timeout=60)  # noqa: B023
        return "each node stopped (SIGINT) and restarted in turn"

    run_phase(tier, "rolling-restart", fault)


def test_deleted_consumers_are_created_again(tier: Tier) -> None:
    """An operator deletes the partitions' consumers (``nats consumer rm``): the server
    answers the workers' pull requests with 409 Consumer Deleted, then 503 (nobody
    serves that consumer). Each worker creates its consumers again and delivery goes
    on; the new consumers start from the stream's first message, and the ledgers count
    what was delivered before as duplicates instead of writing it twice."""

    async def delete_consumers() -> None:
        nc = await connect(split_urls(tier.cluster.urls), name="cluster-tests")
        try:
            js = nc.jetstream(timeout=60)  # a loaded cluster may take long to answer
            for p in range(PARTITIONS):
                await js.delete_consumer(STREAM, f"deliver_p{p}")
        finally:
            await close(nc)

    def fault(p: Producers) -> str:
        asyncio.run(delete_consumers())
        return f"the {PARTITIONS} consumers deleted while delivering"

    run_phase(tier, "consumers-deleted", fault)


def test_worker_sigterm_commits_releases_and_exits_0(tier: Tier) -> None:
    codes: list[int | None] = []

    def fault(p: Producers) -> str:
        alive = tier.owned()
        index = next(i for i, parts in alive.items() if parts)
        metrics = requests.get(tier.workers[index].url + "/metrics", timeout=5).text
        assert "spotify_events_deliver_partitions_owned" in metrics
        codes.append(tier.workers[index].stop())
        survivors = [i for i in alive if i != index]
        assert wait_for(
            lambda: (
                sorted(q for i in survivors for q in tier.owned().get(i, []))
                == list(range(PARTITIONS))
            ),
            timeout=60,
        )
        tier.worker()
        return "worker stopped with SIGTERM: exit 0, leases released"

    run_phase(tier, "worker-sigterm", fault)
    assert codes == [0]


@pytest.mark.parametrize("failpoint", ["crash-after-commit:3", "crash-after-write:3"])
def test_worker_dies_between_its_commit_and_the_ack(tier: Tier, failpoint: str) -> None:
    """The windows that make redelivery real. After the commit, before the ack: the
    messages come back and the next owner's ledger counts their events as duplicates
    (none when that commit held only heartbeats), never writing them twice. After
    the bucket write, before the ledger commit: the next owner cuts the uncommitted
    bytes and writes the redelivered events once (an ack sent before the commit
    would lose them here)."""
    crashing: list[ServiceProcess] = []

    def fault(p: Producers) -> str:
        alive = tier.owned()
        index = next(i for i, parts in alive.items() if parts)
        stopped = tier.workers[index]
        assert stopped.stop() == 0, stopped.stderr_tail()  # its partitions go to the crashing one
        crashing.append(tier.worker(program=failpoint_program(failpoint)))
        assert wait_for(
            lambda: crashing[0].proc is not None and crashing[0].proc.poll() == 137, timeout=60
        ), (tier.owned(), crashing[0].stderr_tail())
        survivors = [i for i, w in enumerate(tier.workers) if w.alive()]
        assert wait_for(
            lambda: (
                sorted(q for i in survivors for q in tier.owned().get(i, []))
                == list(range(PARTITIONS))
            ),
            timeout=60,
        ), (tier.owned(), [tier.workers[i].stderr_tail() for i in survivors])
        tier.worker()
        return f"worker died at {failpoint.split(':')[0]}"

    run_phase(tier, failpoint.split(":")[0], fault)  # exactly once either way
