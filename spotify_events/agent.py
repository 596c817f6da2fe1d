"""``spotify-events agent``: ship queue files from a process of their own.

A service built with ``EventClient(shipping="agent")`` only encodes and commits
into its queue file; reading, batch encoding, sending and acknowledging run here,
in another process with its own GIL, so they no longer take CPU time from the
service's threads (the shape of a per-host log shipper). The agent is an ordinary
lease holder: it runs the same :class:`~spotify_events.shipper.Shipper` as a
client, so the one-sender-per-file lease keeps it exact against clients, other
agents and ``queue ship``; a second agent on a file stands by until the first
one's lease lapses or its process dies, then takes over.

A queue file that does not exist yet is waited for (the agent may start before
the service). Each state change of a file (waiting, shipping, standing by) is
logged once. SIGTERM or SIGINT stops it: what is queued is shipped for up to
``--stop-timeout`` seconds, the leases are released, and anything left stays in
the file for the next agent or client.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import click

from .config import ClientConfig
from .errors import SpotifyEventsError
from .queue import DurableQueue, check_queue_path
from .shipper import Shipper
from .transport import HttpTransport

logger = logging.getLogger("spotify_events.agent")

#: How often the agent looks for a queue file that is not there yet, and at who holds a lease.
POLL_INTERVAL = 0.5


class FileAgent:
    """Ships one queue file: waits for it to appear, then runs a shipper on it."""

    def __init__(self, path: Path, config: ClientConfig) -> None:
        self.path = path
        self.config = config
        self.queue: DurableQueue | None = None
        self.shipper: Shipper | None = None
        self._transport: HttpTransport | None = None
        self._state = ""
        self._open_error = ""
        self._left_holder: str | None = None  # our lease holder id in a file we reopened

    def poll(self) -> None:
        """Open the file once it exists; log when this agent starts or stops holding its lease."""
        if self.shipper is None:
            if not self.path.exists():
                self._set_state("waiting", "waiting for queue file %s to appear", self.path)
                return
            try:
                self.open()
            except SpotifyEventsError as exc:  # e.g. created but not yet initialised
                if str(exc) != self._open_error:
                    self._open_error = str(exc)
                    logger.error("cannot open queue file %s yet: %s", self.path, exc)
                return
        assert self.shipper is not None and self.queue is not None
        moved = self.queue.file_state()
        if moved is not None:
            # The path no longer leads to the file we ship (a client puts a deleted queue
            # file back from its open connection): leave the old one, open what is there.
            logger.warning(
                "queue file %s was %s while the agent shipped it; reopening", self.path, moved
            )
            self._state = ""
            self._left_holder = self.shipper.holder
            self.stop(time.monotonic() + self.config.read_timeout, drain=False)
            self.queue = self.shipper = None
            return
        if self.shipper.holds_lease():
            self._set_state(
                "shipping",
                "shipping %s (producer %s) to %s",
                self.path,
                self.queue.producer_id,
                self.config.endpoint,
            )
            return
        holder = self.queue.lease_holder()
        if holder is not None and holder != self.shipper.holder:  # else: not decided yet
            self._set_state(
                "standby", "%s: shipping lease held by %s; standing by", self.path, holder
            )

    def open(self) -> None:
        """Open the queue and start shipping it."""
        # a service on an older SDK may still write the file: leave its format as it is
        self.queue = DurableQueue(self.path, self.config.queue_settings(), upgrade=False)
        if self._left_holder is not None:
            # A file put back from a copy still names the shipper we left as lease holder;
            # it is ours and gone, so free the lease instead of standing by for its TTL.
            self.queue.release_lease(self._left_holder)
            self._left_holder = None
        self._transport = HttpTransport(self.config.transport_settings())
        self.shipper = Shipper(self.queue, self._transport, self.config.shipper_settings())
        self.shipper.start()

    def stop(self, deadline: float, *, drain: bool = True) -> int:
        """Ship what is queued until ``deadline`` (with ``drain``, if this agent holds the
        lease), stop the shipper, release the lease and close; the events left in the file."""
        shipper, queue = self.shipper, self.queue
        if shipper is None or queue is None:
            return 0
        if drain and shipper.holds_lease():
            shipper.wait_shipped(deadline)
        shipper.stop(max(0.1, deadline - time.monotonic()))
        assert self._transport is not None
        self._transport.close()
        left = queue.depth().events
        queue.close()
        return left

    def _set_state(self, state: str, message: str, *args: object) -> None:
        if state != self._state:
            self._state = state
            logger.info(message, *args)


def agent_configs(paths: Sequence[str], endpoint: str | None) -> list[tuple[Path, ClientConfig]]:
    """One config per queue file (settings from ``SPOTIFY_EVENTS_*`` as for a client);
    raises ClickException for paths no queue can live at, or a file named twice."""
    if not paths:
        raise click.UsageError("name at least one queue file")
    seen: set[str] = set()
    configs = []
    for raw in paths:
        path = Path(raw)
        real = os.path.realpath(path)
        if real in seen:
            raise click.UsageError(f"queue file {raw} is named twice")
        seen.add(real)
        try:
            check_queue_path(path)
            config = ClientConfig.build(queue_path=str(path), endpoint=endpoint)
        except SpotifyEventsError as exc:
            raise click.ClickException(str(exc)) from exc
        configs.append((path, config))
    return configs


def run_agent(agents: Sequence[FileAgent], stop: threading.Event, stop_timeout: float) -> int:
    """Poll until ``stop`` is set, then stop every file's shipper within ``stop_timeout``;
    the number of events left behind."""
    while True:
        for agent in agents:
            agent.poll()
        if stop.wait(POLL_INTERVAL):
            break
    logger.info("stopping: shipping what is queued for up to %gs", stop_timeout)
    deadline = time.monotonic() + stop_timeout
    left = 0
    for agent in agents:
        n = agent.stop(deadline)
        if n:
            logger.warning("%d event(s) left in %s; they ship with the next agent", n, agent.path)
        left += n
    return left


@click.command("agent")
@click.argument("queue_paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--endpoint", default=None, help="Collector URL (default: SPOTIFY_EVENTS_ENDPOINT).")
@click.option(
    "--stop-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM/SIGINT, ship what is queued for up to S seconds before leaving.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def agent_command(
    queue_paths: tuple[str, ...], endpoint: str | None, stop_timeout: float, log_level: str
) -> None:
    """Ship the queue files of services logging with shipping="agent", until stopped."""
    configs = agent_configs(queue_paths, endpoint)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agents = [FileAgent(path, config) for path, config in configs]
    for agent in agents:  # a file that exists but is no queue fails now, not in the loop
        if agent.path.exists():
            try:
                agent.open()
            except SpotifyEventsError as exc:
                for opened in agents:
                    opened.stop(time.monotonic())
                raise click.ClickException(f"{agent.path}: {exc}") from exc
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # one stdout line once signals are handled: what supervisors and tests wait for
    click.echo(f"agent running for {len(agents)} queue file(s), pid {os.getpid()}")
    run_agent(agents, stop, stop_timeout)
