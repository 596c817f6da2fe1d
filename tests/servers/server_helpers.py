"""Helpers for the server tests: numbered events, a collector that is down until the
test starts it, server processes on loopback, and reading the buckets back.

Every event these tests log carries a unique id (an EndSong ``track_id`` or a
ServiceCall ``operation``); counting ids in the collector's bucket files is how
"each one exactly once" is checked, independently of the collector's ledger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import requests
from support import wait_for

END_SONG = "spotify.events.playback.EndSong"
SERVICE_CALL = "spotify.events.ops.ServiceCall"
BIN = Path(sys.executable).parent


def end_song(uid: str) -> dict[str, Any]:
    """An EndSong whose track_id is ``uid``."""
    return {
        "user_id": "u1",
        "track_id": uid,
        "ms_played": 1,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "web",
    }


def bucket_records(data_dir: Path, event_type: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted((data_dir / event_type).rglob("part-*.avro")):
        with open(path, "rb") as fh:
            records.extend(fastavro.reader(fh))
    return records


def bucket_ids(data_dir: Path, event_type: str = END_SONG, key: str = "track_id") -> Counter[str]:
    """id -> how many times it is in the bucket files (>1 = duplicate)."""
    return Counter(str(r[key]) for r in bucket_records(data_dir, event_type))


@contextlib.contextmanager
def port_held_closed(port: int) -> Iterator[None]:
    """Keep ``port`` bound but not listening: connections are refused, and no other
    process can take the port and answer while the collector is down."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    try:
        yield
    finally:
        holder.close()


class Server:
    """A web server child process (gunicorn, uvicorn ...) on a loopback port."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log_path = cwd / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_up(self, url: str) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            try:
                return requests.get(url, timeout=1).status_code < 500
            except requests.RequestException:
                return False

        assert wait_for(up, timeout=60, interval=0.05), f"server did not come up:\n{self.output()}"

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a supervisor (systemd, Kubernetes) stops a server; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
