"""What the shipping half costs per event, and how fast it drains a full queue.

Flat out, ``benchmarks/e2e_delivery.py`` measures logging and shipping at once, on two
cores they share with the sink; this takes the shipping half apart. It fills a queue
file with ``--events`` EndSong events (``shipping="agent"``, so nothing ships while it
fills), then:

* **read + encode**: ``read_shipment`` and the shipper's own ``_encode`` over the whole
  queue in batches of ``--batch`` events, ``--rounds`` times, in this thread
  (``time.thread_time()``): the work the prefetch thread does for every event;
* **drain**: a ``spotify-events agent``'s shipper (the same ``FileAgent``) in this
  process ships the queue to the comparison's sink (``--parse ids``: it reads every
  envelope and dedupes by sequence number, as the e2e runs do); events/s until the
  queue is empty, this process's CPU and the sink's CPU per event.

    python benchmarks/ship_cost.py                      # 100,000 events, 5 rounds
    python benchmarks/ship_cost.py --events 300000 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.* like -m does
    sys.path.insert(0, str(ROOT))

from benchmarks.e2e_delivery import END_SONG, SCHEMAS, cpu_seconds, sink_process  # noqa: E402
from spotify_events import EventClient  # noqa: E402
from spotify_events.agent import FileAgent, agent_configs  # noqa: E402
from spotify_events.queue import DurableQueue  # noqa: E402
from spotify_events.shipper import Shipper  # noqa: E402
from spotify_events.transport import HttpTransport  # noqa: E402

UNUSED_ENDPOINT = "http://127.0.0.1:9/v1/batches"


def fill(queue_path: Path, events: int) -> None:
    """Log ``events`` EndSong events into a queue file nobody ships."""
    with EventClient(
        endpoint=UNUSED_ENDPOINT, queue_path=str(queue_path), schemas=str(SCHEMAS), shipping="agent"
    ) as client:
        record = dict(END_SONG)
        for i in range(events):
            record["ms_played"] = i
            client.log("EndSong", record)


def read_and_encode(queue_path: Path, events: int, batch: int, rounds: int) -> tuple[float, float]:
    """Median thread-CPU µs per event of ``read_shipment`` and of ``Shipper._encode``."""
    ((path, config),) = agent_configs([str(queue_path)], UNUSED_ENDPOINT)
    queue = DurableQueue(path, config.queue_settings())
    shipper = Shipper(queue, HttpTransport(config.transport_settings()), config.shipper_settings())
    reads, encodes = [], []
    try:
        for _ in range(rounds):
            after, read, encode = 0, 0.0, 0.0
            while True:
                started = time.thread_time()
                part = queue.read_shipment(after_id=after, max_events=batch, max_bytes=1 << 30)
                read += time.thread_time() - started
                if not part:
                    break
                started = time.thread_time()
                shipper._encode(part, [], [])
                encode += time.thread_time() - started
                after = part.last_id
            reads.append(read / events * 1e6)
            encodes.append(encode / events * 1e6)
    finally:
        queue.close()
    return statistics.median(reads), statistics.median(encodes)


def drain(queue_path: Path, events: int, base: str) -> dict[str, float]:
    """Ship the whole queue with an agent's shipper in this process; rates and CPU."""
    ((path, config),) = agent_configs([str(queue_path)], f"{base}/v1/batches")
    agent = FileAgent(path, config)
    sink_cpu = requests.get(f"{base}/stats", timeout=5).json()["cpu_seconds"]
    cpu, started = cpu_seconds(), time.perf_counter()
    agent.open()
    assert agent.queue is not None
    deadline = started + 600
    while agent.queue.depth().events and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    sink_cpu = requests.get(f"{base}/stats", timeout=5).json()["cpu_seconds"] - sink_cpu
    left = agent.stop(time.monotonic() + 10)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    return {
        "events_per_second": events / elapsed,
        "process_cpu_us": cpu / events * 1e6,
        "sink_cpu_us": sink_cpu / events * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--batch", type=int, default=5000, help="events per read (batch_max_events)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        queue_path = workdir / "queue.db"
        fill(queue_path, args.events)
        read, encode = read_and_encode(queue_path, args.events, args.batch, args.rounds)
        print(f"{args.events:,} queued events, batches of {args.batch:,}, medians of {args.rounds}")
        print(f"  read_shipment     : {read:6.2f} us an event (thread CPU)")
        print(f"  Shipper._encode   : {encode:6.2f} us an event")
        with sink_process(False, workdir, "ids") as base:
            drained = drain(queue_path, args.events, base)
        print(
            f"  drain to the sink : {drained['events_per_second']:>9,.0f} events/s; "
            f"CPU {drained['process_cpu_us']:.2f} us an event here, "
            f"{drained['sink_cpu_us']:.2f} in the sink"
        )


if __name__ == "__main__":
    main()
