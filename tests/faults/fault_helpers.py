"""Helpers for the fault suite: numbered events and reading buckets back.

Every event the fault tests log is an EndSong whose ``track_id`` is a unique
id; reading the bucket files back and counting ids is how "exactly once in the
buckets" is checked, independently of the collector's own ledger.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
END_SONG = "spotify.events.playback.EndSong"


def numbered(uid: str) -> dict[str, Any]:
    """An EndSong whose track_id is ``uid``."""
    return {
        "user_id": "u1",
        "track_id": uid,
        "ms_played": 31000,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "ios",
    }


def bucket_ids(data_dir: Path) -> Counter[str]:
    """track_id -> how many times it is in the EndSong bucket files (>1 = duplicate)."""
    found: Counter[str] = Counter()
    for path in sorted((data_dir / END_SONG).rglob("part-*.avro")):
        with open(path, "rb") as fh:
            for record in fastavro.reader(fh):
                found[record["track_id"]] += 1
    return found


def stream_of(report: dict[str, Any], event_type: str = END_SONG) -> list[dict[str, Any]]:
    return [s for s in report["streams"] if s["event_type"] == event_type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_held_closed(port: int) -> Iterator[None]:
    """Keep ``port`` bound but not listening while a collector is down: connections are
    refused, and no other process on the machine can take the port and answer 200."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    try:
        yield
    finally:
        holder.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
