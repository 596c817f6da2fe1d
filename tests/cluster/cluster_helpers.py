"""Helpers for the cluster suite: producers logging numbered events, and reading
buckets back.

Every event is an EndSong whose ``track_id`` is unique (``<phase>-<producer>-<n>``);
counting ids in the bucket files is how "exactly once" is checked, independently of
the workers' ledgers.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
from support import SCHEMAS, wait_for

from spotify_events import EventClient
from spotify_events.scaleout.slices import partition_of

END_SONG = "spotify.events.playback.EndSong"


def numbered(uid: str) -> dict[str, Any]:
    return {
        "user_id": "u1",
        "track_id": uid,
        "ms_played": 31000,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "ios",
    }


def bucket_ids(data_dir: Path, prefix: str) -> Counter[str]:
    """track_id -> how many times it is in the EndSong bucket files, for ids with ``prefix``."""
    found: Counter[str] = Counter()
    for path in sorted((data_dir / END_SONG).rglob("part-*.avro")):
        with open(path, "rb") as fh:
            for record in fastavro.reader(fh):
                if record["track_id"].startswith(prefix):
                    found[record["track_id"]] += 1
    return found


class Producers:
    """SDK clients logging numbered events from threads, spread over endpoints: ``count``
    of them, more if needed until every one of ``partitions`` has a producer (producer
    ids are random; a fault aimed at one worker needs traffic on its partitions)."""

    def __init__(
        self, root: Path, phase: str, endpoints: list[str], count: int, partitions: int = 0
    ) -> None:
        self.phase = phase
        self.clients: list[EventClient] = []
        covered: set[int] = set()
        while len(self.clients) < count or (len(covered) < partitions and len(self.clients) < 64):
            i = len(self.clients)
            client = EventClient(
                endpoint=endpoints[i % len(endpoints)],
                queue_path=str(root / f"{phase}-{i}.db"),
                schemas=str(SCHEMAS),
                backoff_max=0.5,
                connect_timeout=1.0,
                read_timeout=10.0,
                batch_max_events=500,
                linger=0.02,
                heartbeat_interval=1.0,
            )
            self.clients.append(client)
            if partitions:
                covered.add(partition_of(client.producer_id, partitions))
        self.logged = [0] * len(self.clients)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def producer_ids(self) -> set[str]:
        return {c.producer_id for c in self.clients}

    @property
    def total(self) -> int:
        return sum(self.logged)

    def start(self, rate_per_producer: float) -> Producers:
        for i in range(len(self.clients)):
            t = threading.Thread(target=self._run, args=(i, rate_per_producer), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int, rate: float) -> None:
        client = self.clients[i]
        period = 0.05
        per_tick = max(1, round(rate * period))
        while not self._stop.is_set():
            for _ in range(per_tick):
                client.log(END_SONG, numbered(f"{self.phase}-{i}-{self.logged[i]}"))
                self.logged[i] += 1
            self._stop.wait(period)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def flush(self, timeout: float) -> bool:
        return all(c.flush(timeout) for c in self.clients)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def received_by(report: dict[str, Any], producers: set[str]) -> dict[str, int]:
    out = {"received": 0, "duplicates": 0, "lost": 0, "open_gaps": 0, "dropped": 0}
    for s in report["streams"]:
        if s["producer_id"] in producers and s["event_type"] == END_SONG:
            for key in out:
                out[key] += s[key]
    return out


__all__ = ["Producers", "bucket_ids", "numbered", "received_by", "wait_for"]
