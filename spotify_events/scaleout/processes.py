"""A ``spotify-events`` subcommand as a child process: started, read until ready,
stopped with SIGTERM or killed with SIGKILL.

``demo --cluster``, the cluster tests and the benchmarks all run collectors and
workers this way. Each prints a ready line on stdout (``listening on URL``);
stderr is kept (the last lines go into errors).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO


@dataclass
class ServiceProcess:
    """``python -m spotify_events ARGS``, ready once a stdout line starts with ``ready_prefix``."""

    args: list[str]
    ready_prefix: str = "listening on"
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    proc: subprocess.Popen[str] | None = None
    ready_line: str = ""
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL of a ``listening on URL`` ready line."""
        return self.ready_line.split()[-1]

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spotify_events", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, lines.put), daemon=True).start()
        threading.Thread(
            target=_pump, args=(self.proc.stderr, self.stderr_lines.append), daemon=True
        ).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"{self.name} did not start: {self.stderr_tail()}") from None
            if line.startswith(self.ready_prefix):
                self.ready_line = line.strip()
                return self

    def stderr_tail(self) -> str:
        return "".join(self.stderr_lines[-30:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL (and re-raise) if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pump(stream: IO[str], sink: Callable[[str], object]) -> None:
    for line in stream:
        sink(line)
