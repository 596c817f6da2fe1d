"""End-to-end latency, ``log()`` → an event readable in its hourly bucket, at a steady rate.

    python -m benchmarks.scaleout_latency --rate 2000 --duration 30        # both shapes
    python -m benchmarks.scaleout_latency --shapes tier --rate 5000

One SDK client in this process logs ``EndSong`` events at a paced, steady rate to
either shape, in the same run:

* ``single``: ``spotify-events collector --data-dir`` (one process);
* ``tier``: ``collector --nats`` on a local 3-node JetStream cluster (R3, 4
  partitions) and two ``deliver`` workers writing the same bucket layout.

Each event carries its index in ``ms_played``; the time it was logged is kept here.
A poller reads the part files as they grow (whole container blocks only, the way a
downstream reader would) every ``--poll`` seconds and notes when each index first
appears. Latency = first seen - logged, so it includes up to one poll interval of
the poller's own delay (stated in the output). Printed: p50/p90/p99/max per shape,
events logged/seen/duplicated, as one JSON line per shape.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import fastavro

from benchmarks.scaleout import ROOT, start_process, start_tier, stop_all
from spotify_events import EventClient
from spotify_events.scaleout.natsserver import NatsCluster

RECORD = {
    "user_id": "u",
    "track_id": "latency",
    "reason_start": "CLICKROW",
    "reason_end": "TRACKDONE",
    "platform": "ios",
}


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """An Avro zig-zag long at ``pos`` and the position after it; None if cut off."""
    shift = n = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
    return None


class PartTail:
    """Reads the complete container blocks appended to one part file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = b""
        self.offset = 0

    def _read_header(self, data: bytes) -> bool:
        pos = 4  # magic
        while True:
            got = _varint(data, pos)
            if got is None:
                return False
            count, pos = got
            if count == 0:
                break
            for _ in range(abs(count) * 2):  # key and value strings
                got = _varint(data, pos)
                if got is None:
                    return False
                length, pos = got
                pos += length
        if pos + 16 > len(data):
            return False
        self.header, self.offset = data[: pos + 16], pos + 16
        return True

    def new_records(self) -> list[dict[str, object]]:
        if not self.header and not self._read_header(self.path.read_bytes()):
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        sync = self.header[-16:]
        pos = end = 0
        while True:  # find the last complete block
            got = _varint(data, pos)
            got = got and _varint(data, got[1])
            if not got:
                break
            size, after = got
            if after + size + 16 > len(data) or data[after + size : after + size + 16] != sync:
                break
            pos = end = after + size + 16
        if end == 0:
            return []
        blocks = data[:end]
        self.offset += end
        return list(fastavro.reader(io.BytesIO(self.header + blocks)))  # type: ignore[arg-type]


def measure(
    endpoint: str, data_dir: Path, rate: float, duration: float, poll: float
) -> dict[str, object]:
    tails: dict[Path, PartTail] = {}
    seen: dict[int, float] = {}
    duplicates = 0

    def poll_once() -> None:
        nonlocal duplicates
        for path in data_dir.glob("spotify.events.playback.EndSong/*/*/part-*.avro"):
            tail = tails.setdefault(path, PartTail(path))
            now = time.time()
            for rec in tail.new_records():
                index = int(rec["ms_played"])  # type: ignore[call-overload]
                if index in seen:
                    duplicates += 1
                else:
                    seen[index] = now

    total = int(rate * duration)
    logged_at: list[float] = []
    with tempfile.TemporaryDirectory() as qdir:
        client = EventClient(
            endpoint=endpoint,
            queue_path=str(Path(qdir) / "queue.db"),
            schemas=str(ROOT / "schemas"),
        )
        try:
            started = time.perf_counter()
            next_poll = started
            for i in range(total):
                due = started + i / rate
                while (now := time.perf_counter()) < due:
                    if now >= next_poll:
                        poll_once()
                        next_poll = now + poll
                    else:
                        time.sleep(min(due - now, 0.0005))
                logged_at.append(time.time())
                client.log("spotify.events.playback.EndSong", {**RECORD, "ms_played": i})
            deadline = time.monotonic() + 120
            while len(seen) < total and time.monotonic() < deadline:
                poll_once()
                time.sleep(poll)
        finally:
            client.close()
    latencies = sorted((seen[i] - logged_at[i]) * 1000 for i in seen)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "rate": rate,
        "duration_s": duration,
        "logged": total,
        "seen_in_buckets": len(seen),
        "duplicated": duplicates,
        "latency_ms_p50": round(q[49], 1),
        "latency_ms_p90": round(q[89], 1),
        "latency_ms_p99": round(q[98], 1),
        "latency_ms_max": round(latencies[-1], 1) if latencies else None,
        "poll_interval_ms": poll * 1000,
    }


def run_single(tmp: Path, args: argparse.Namespace) -> dict[str, object]:
    data = tmp / "single"
    proc, line = start_process(
        ["collector", "--port", "0", "--schemas", str(ROOT / "schemas"), "--data-dir", str(data)]
    )
    try:
        return measure(line.split()[-1] + "/v1/batches", data, args.rate, args.duration, args.poll)
    finally:
        proc.terminate()
        proc.wait(60)


def run_tier(tmp: Path, args: argparse.Namespace) -> dict[str, object]:
    cluster = NatsCluster(tmp / "nats", size=3).start()
    data = tmp / "tier"
    procs, url = start_tier(cluster.urls, data)
    try:
        return measure(url + "/v1/batches", data, args.rate, args.duration, args.poll)
    finally:
        stop_all(procs)
        cluster.stop()
        cluster.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="single,tier")
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--poll", type=float, default=0.01)
    args = parser.parse_args()
    runners = {"single": run_single, "tier": run_tier}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            print(json.dumps({"shape": shape, **runners[shape](Path(tmp), args)}), flush=True)


if __name__ == "__main__":
    main()
