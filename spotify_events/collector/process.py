"""``spotify-events`` subcommands as child processes: started, read until ready,
stopped with SIGTERM or killed with SIGKILL.

The demos, the end-to-end benchmarks and the tests all need "a real collector (or
delivery worker) on a loopback port that I can stop gracefully, SIGKILL, and restart
on the same port and data dir". :class:`ServiceProcess` runs any subcommand that
prints a ready line (``listening on URL``); :class:`CollectorProcess` is the
single-process collector on top of it.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from ..errors import MissingExtraError

#: Modules the collector needs beyond the core install (the ``[collector]`` extra).
COLLECTOR_MODULES = ("waitress", "prometheus_client")


def require_collector_extra(command: str, also: tuple[str, ...] = ()) -> None:
    """Fail with the install line, not a ModuleNotFoundError, when the extra is missing."""
    missing = [m for m in (*COLLECTOR_MODULES, *also) if _find(m) is None]
    if missing:
        raise MissingExtraError(
            f"'spotify-events {command}'", ", ".join(missing), extra="collector"
        )


def _find(module: str) -> object:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # sys.modules[name] = None, or a broken entry
        return None


@dataclass
class ServiceProcess:
    """``python -m spotify_events ARGS``, ready once a stdout line starts with ``ready_prefix``.

    ``program`` is what runs ``ARGS``: the package's own command unless a caller
    (the crash tests' failpoint launcher) swaps in another with the same interface.
    """

    args: list[str]
    ready_prefix: str = "listening on"
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    proc: subprocess.Popen[str] | None = None
    ready_line: str = ""
    stderr_lines: list[str] = field(default_factory=list)
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "spotify_events"])

    @property
    def url(self) -> str:
        """The URL of a ``listening on URL`` ready line."""
        return self.ready_line.split()[-1]

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [*self.program, *self.args],
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


@dataclass
class CollectorProcess:
    """A ``spotify-events collector`` child. ``port=0`` picks a free port on first
    start; restarts reuse the port it got, so clients keep their endpoint."""

    data_dir: Path
    schemas: Path
    args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    program: list[str] | None = None  # ServiceProcess.program; None: the package's own
    child: ServiceProcess | None = None

    @property
    def proc(self) -> subprocess.Popen[str] | None:
        return None if self.child is None else self.child.proc

    @property
    def url(self) -> str:
        return "" if self.child is None else self.child.url

    @property
    def stderr_lines(self) -> list[str]:
        return [] if self.child is None else self.child.stderr_lines

    @property
    def endpoint(self) -> str:
        """The batch URL clients post to (known once started)."""
        return f"{self.url}/v1/batches"

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        args = ["collector", "--host", self.host, "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir), "--schemas", str(self.schemas), *self.args]
        child = ServiceProcess(args, name="collector", env=self.env)
        if self.program is not None:
            child.program = self.program
        self.child = child.start(timeout)
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def report(self, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = requests.get(f"{self.url}/v1/report", headers=headers, timeout=30)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait: the collector finishes in-flight requests and exits."""
        return None if self.child is None else self.child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.child is not None:
            self.child.kill()

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pump(stream: IO[str], sink: Callable[[str], object]) -> None:
    """Hand every line of a child's pipe to ``sink`` until the pipe closes."""
    for line in stream:
        sink(line)
