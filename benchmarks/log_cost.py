"""What one ``log()`` call and one encode cost in the caller's thread, flat out and paced.

Flat out, the code and data a call touches stay in the CPU's caches; at the rates
services log (a call every millisecond or so) each call finds them colder, and on a
shared VM it costs several times more (benchmarks/RESULTS.md). This times each call
with ``time.thread_time()`` — the caller's own CPU, not the shipper's or the writer's —
for ``EventEncoder.encode`` and ``EventClient.log`` (``shipping="agent"``, so no shipper
thread runs; nothing is delivered), on the comparison's EndSong records, first back to
back, then with a sleep of ``1 / --rate`` seconds before each call.

    python benchmarks/log_cost.py                  # 3,000 calls each, paced at 1,000/s
    python benchmarks/log_cost.py --calls 10000 --rate 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.compare like -m does
    sys.path.insert(0, str(ROOT))

from benchmarks.compare.workload import EVENT_NAME, SCHEMAS, make_pool  # noqa: E402
from spotify_events import EventClient  # noqa: E402
from spotify_events.encoding import EventEncoder  # noqa: E402
from spotify_events.schemas import SchemaRegistry  # noqa: E402


def per_call(call: Callable[[dict[str, Any]], object], calls: int, pause: float) -> list[float]:
    """CPU seconds of each of ``calls`` calls, sleeping ``pause`` before each (0: none)."""
    pool = make_pool()
    clock = time.thread_time
    costs = []
    for i in range(calls):
        record = dict(pool[i % len(pool)])
        if pause:
            time.sleep(pause)
        start = clock()
        call(record)
        costs.append(clock() - start)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced calls per second")
    args = parser.parse_args()
    encoder = EventEncoder(SchemaRegistry.coerce(str(SCHEMAS)).get(EVENT_NAME))
    with tempfile.TemporaryDirectory() as work:
        client = EventClient(
            endpoint="http://127.0.0.1:9/v1/batches",  # never contacted: no shipper runs
            queue_path=str(Path(work) / "events.db"),
            schemas=str(SCHEMAS),
            shipping="agent",
        )
        try:
            calls: dict[str, Callable[[dict[str, Any]], object]] = {
                "encode": encoder.encode,
                "log()": lambda record: client.log(EVENT_NAME, record),
            }
            print(f"CPU µs per call in the caller's thread, {args.calls:,} calls each")
            print(f"| call | flat out p50 / mean | paced at {args.rate:,.0f}/s p50 / mean |")
            print("| --- | --- | --- |")
            for name, call in calls.items():
                cells = []
                for pause in (0.0, 1.0 / args.rate):
                    costs = sorted(per_call(call, args.calls, pause))
                    p50, mean = costs[len(costs) // 2], sum(costs) / len(costs)
                    cells.append(f"{p50 * 1e6:.1f} / {mean * 1e6:.1f}")
                print(f"| {name} | {cells[0]} | {cells[1]} |")
        finally:
            client.close(timeout=1)


if __name__ == "__main__":
    main()
