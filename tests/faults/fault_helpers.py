"""Helpers for the fault suite: numbered events and reading buckets back.

Every event the fault tests log is an EndSong whose ``track_id`` is a unique
id; reading the bucket files back and counting ids is how "exactly once in the
buckets" is checked, independently of the collector's own ledger.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import support

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


#: Fault tests restart processes and drain large queues: 60 s by default.
wait_for = functools.partial(support.wait_for, timeout=60.0, interval=0.02)
