"""Per-event CPU the JetStream hop adds, against the single-process collector.

    python benchmarks/scaleout_hop.py [--rounds 3] [--events 500]

The same 150,000 events in batches of ``--events`` (500: 300 batches from 16
producers) go through both shapes, 8 batches at a time (a group commit's worth, then
let go, as the processes do):

* single-process collector: ingest (decode + validate) and the delivery half's group
  commit, in this process;
* the tier: the same ingest, then ``collector --nats``'s publish (slicing, nats-py's
  publish and acknowledgement, the hand-off to its loop thread) to a local one-node
  JetStream, and a real ``deliver`` worker (:class:`~spotify_events.scaleout.worker.
  Worker`, in a child process, owning every partition before the first publish)
  draining the stream: its fetches, slice decoding, lease checks, acknowledgements
  and idle polling, that is its CPU from owning every partition to the last event
  committed, minus the CPU of its delivery half's group commits (the work the single
  collector does too).

The hop is publish + the worker's share beyond its group commits, as a percentage of
ingest + delivery of the single collector. Most of the hop is paid per message (a
publish and its acknowledgement, a fetch and an ack), so it shrinks with bigger batches:
the SDK ships up to 5,000 events a batch (``batch_max_events``) when it has them. The nats-server's own CPU for the same
span is printed beside it (``server_us``), not counted in the percentage. Each round
prints one JSON line; several rounds show the spread on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spotify_events.collector.delivery import LocalDelivery
from spotify_events.collector.ingest import Ingest, IngestedBatch
from spotify_events.encoding import EventEncoder
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import Envelope, WireBatch, encode_batch

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
TOTAL = 150_000
GROUP = 8
PARTITIONS = 4
STREAM = "HOP"


def batch_bodies(events: int) -> list[bytes]:
    registry = SchemaRegistry(SCHEMAS)
    schema = registry.get("spotify.events.playback.EndSong")
    payload = EventEncoder(schema).encode(
        {
            "user_id": "u",
            "track_id": "t",
            "ms_played": 1,
            "reason_start": "CLICKROW",
            "reason_end": "TRACKDONE",
            "platform": "ios",
        }
    )
    now_ms = int(time.time() * 1000)
    return [
        encode_batch(
            WireBatch(
                f"producer-{k % 16}",
                [
                    Envelope(k * events + i, schema.full_name, schema.fingerprint, now_ms, payload)
                    for i in range(1, events + 1)
                ],
                {schema.full_name: k * events + events + 1},
            )
        )
        for k in range(TOTAL // events)
    ]


def groups(
    ingest: Ingest, bodies: list[bytes], spent: list[float]
) -> Iterator[list[IngestedBatch]]:
    """Ingested batches, GROUP at a time; the CPU of parsing is added to ``spent[0]``."""
    for k in range(0, len(bodies), GROUP):
        started = time.process_time()
        group = [ingest.parse(b) for b in bodies[k : k + GROUP]]
        spent[0] += time.process_time() - started
        yield group


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")  # utime stime


def per_event(seconds: float) -> float:
    return round(seconds / TOTAL * 1e6, 2)


def single(bodies: list[bytes], data: Path) -> dict[str, float]:
    registry = SchemaRegistry(SCHEMAS)
    ingest, spent = Ingest(registry), [0.0]
    delivery = LocalDelivery(data, registry)
    delivered = 0.0
    for group in groups(ingest, bodies, spent):
        started = time.process_time()
        delivery.deliver_all(group)
        delivered += time.process_time() - started
    delivery.close()
    return {"ingest_us": per_event(spent[0]), "delivery_us": per_event(delivered)}


def tier(bodies: list[bytes], tmp: Path) -> dict[str, float]:
    from spotify_events.scaleout.ingest import JetStreamDelivery, prepare_stream
    from spotify_events.scaleout.natsserver import NatsCluster
    from spotify_events.scaleout.stream import StreamSettings

    cluster = NatsCluster(tmp / "nats", size=1).start()
    worker: subprocess.Popen[str] | None = None
    try:
        url = cluster.nodes[0].url
        settings = StreamSettings(name=STREAM, partitions=PARTITIONS, replicas=1)
        asyncio.run(prepare_stream([url], settings, 30))
        worker = subprocess.Popen(
            [sys.executable, __file__, "worker", url, str(tmp / "tier-data")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        ready = json.loads(worker.stdout.readline())  # owns every partition
        publisher = JetStreamDelivery([url], settings)
        registry = SchemaRegistry(SCHEMAS)
        warm = Ingest(registry).parse(encode_batch(WireBatch("warm-up", [], {})))
        publisher.deliver(warm)  # connects (a heartbeat publishes nothing) ...

        async def loop_cpu() -> float:
            return thread_cpu()

        publisher._thread.run(loop_cpu(), 10)  # ... and starts the loop thread
        server_before = proc_cpu(cluster.nodes[0].proc.pid)  # type: ignore[union-attr]
        loop_before = publisher._thread.run(loop_cpu(), 10)
        ingest, spent, published = Ingest(registry), [0.0], 0.0
        for group in groups(ingest, bodies, spent):
            started = thread_cpu()
            for batch in group:
                publisher.deliver(batch)
            published += thread_cpu() - started
        published += publisher._thread.run(loop_cpu(), 10) - loop_before
        done = json.loads(worker.stdout.readline())  # the last event committed
        server = proc_cpu(cluster.nodes[0].proc.pid) - server_before  # type: ignore[union-attr]
        publisher.close()
        worker.wait(60)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        cluster.stop()
        cluster.kill()
    worker_cpu = done["cpu"] - ready["cpu"]
    return {
        "tier_ingest_us": per_event(spent[0]),
        "publish_us": per_event(published),
        "worker_us": per_event(worker_cpu),
        "worker_delivery_us": per_event(done["delivery_cpu"]),
        "worker_hop_us": per_event(worker_cpu - done["delivery_cpu"]),
        "server_us": per_event(server),
        "worker_commits": done["commits"],
    }


def worker_main(url: str, data: str) -> None:
    """The child: a real worker whose group commits are timed; prints its process CPU
    once it owns every partition, then again (with the commits' CPU) when every event
    is committed, and stops."""
    import spotify_events.scaleout.worker as worker_module
    from spotify_events.scaleout.worker import Worker
    from spotify_events.scaleout.worker_config import WorkerConfig

    spent = {"cpu": 0.0, "events": 0, "commits": 0}

    class TimedDelivery(LocalDelivery):
        def deliver_all(self, batches: list[IngestedBatch], fence: Any = None) -> Any:
            started = time.thread_time()
            results = super().deliver_all(batches, fence)
            spent["cpu"] += time.thread_time() - started
            spent["events"] += sum(r.accepted + r.duplicates for r in results)
            spent["commits"] += 1
            return results

    worker_module.LocalDelivery = TimedDelivery  # type: ignore[misc]
    worker = Worker(WorkerConfig(urls=[url], data_dir=data, schemas=str(SCHEMAS), stream=STREAM))

    async def watch() -> None:
        while len(worker.runners) < PARTITIONS:
            await asyncio.sleep(0.1)
        print(json.dumps({"cpu": time.process_time()}), flush=True)
        while spent["events"] < TOTAL:
            await asyncio.sleep(0.1)
        line = {
            "cpu": time.process_time(),
            "delivery_cpu": spent["cpu"],
            "commits": spent["commits"],
        }
        print(json.dumps(line), flush=True)
        worker.stop_event.set()

    async def main() -> None:
        await asyncio.gather(worker.run(), watch())

    asyncio.run(main())


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--events", type=int, default=500, help="events per batch")
    args = parser.parse_args()
    if not 1 <= args.events <= 5000 or TOTAL % args.events:
        parser.error(f"--events must divide {TOTAL} and be at most 5000")
    bodies = batch_bodies(args.events)
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            out = {**single(bodies, Path(tmp) / "data"), **tier(bodies, Path(tmp))}
        hop = out["publish_us"] + out["worker_hop_us"]
        out["hop_added_pct"] = round(100 * hop / (out["ingest_us"] + out["delivery_us"]), 1)
        print(json.dumps({"events_per_batch": args.events, **out}), flush=True)


if __name__ == "__main__":
    main()
