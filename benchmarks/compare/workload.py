"""The one workload every contestant gets: an 8-field EndSong-like event.

A fixed-seed pool of distinct records (so compression sees realistic variety,
not one record repeated), cycled by every caller thread. Each call gets its own
shallow copy, because some SDKs add keys to the properties dict they are given.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
EVENT_NAME = "EndSong"
POOL_SIZE = 4096

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_REASON_START = ["CLICKROW", "TRACKDONE", "FWDBTN", "BACKBTN", "PLAYBTN", "REMOTE", "APPLOAD"]
_REASON_END = ["TRACKDONE", "FWDBTN", "BACKBTN", "ENDPLAY", "LOGOUT", "REMOTE"]
_PLATFORMS = ["ios", "android", "web", "desktop"]


def make_pool(size: int = POOL_SIZE, seed: int = 6) -> list[dict[str, Any]]:
    """``size`` distinct EndSong records: ~1,000 users, ~2,000 tracks, random play times."""
    rng = random.Random(seed)
    users = [f"u{rng.randrange(10**9):09d}" for _ in range(1000)]
    tracks = [
        "spotify:track:" + "".join(rng.choice(_BASE62) for _ in range(22)) for _ in range(2000)
    ]
    return [
        {
            "user_id": rng.choice(users),
            "track_id": rng.choice(tracks),
            "ms_played": rng.randrange(0, 400_000),
            "reason_start": rng.choice(_REASON_START),
            "reason_end": rng.choice(_REASON_END),
            "platform": rng.choice(_PLATFORMS),
            "shuffle": rng.random() < 0.3,
            "offline": rng.random() < 0.1,
        }
        for _ in range(size)
    ]
