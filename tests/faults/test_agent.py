"""``spotify-events agent`` shipping a service's queue file from another process.

The service is this test process, logging with ``shipping="agent"`` (no shipper
thread of its own); the agent is a real ``python -m spotify_events agent`` child;
the collector is a real collector process. Exactly once is read back from the
bucket files, independently of the collector's ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fault_helpers import bucket_ids, numbered, stream_of, wait_for
from support import SCHEMAS

from spotify_events import ConfigError, EventClient
from spotify_events.agent import agent_command
from spotify_events.collector.process import CollectorProcess, ServiceProcess
from spotify_events.queue import DurableQueue

pytestmark = pytest.mark.faults


@pytest.fixture
def agents() -> Iterator[list[ServiceProcess]]:
    """Agent processes started by a test; any still running at the end are killed."""
    started: list[ServiceProcess] = []
    yield started
    for agent in started:
        agent.kill()


def start_agent(
    agents: list[ServiceProcess],
    queue_path: Path,
    endpoint: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    agent = ServiceProcess(
        ["agent", str(queue_path), "--endpoint", endpoint, *extra],
        ready_prefix="agent running",
        name="agent",
        env={"SPOTIFY_EVENTS_BACKOFF_MAX": "0.2", **(env or {})},
    )
    agents.append(agent.start())
    return agent


def service(queue_path: Path, endpoint: str) -> EventClient:
    return EventClient(
        endpoint=endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS), shipping="agent"
    )


def logged_by(agent: ServiceProcess, text: str) -> bool:
    return any(text in line for line in agent.stderr_lines)


def test_an_agent_started_before_the_file_ships_what_the_service_logs(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    queue_path = tmp_path / "queue.db"
    agent = start_agent(agents, queue_path, collector.endpoint)
    assert wait_for(lambda: logged_by(agent, "waiting for queue file"), timeout=30)
    client = service(queue_path, collector.endpoint)
    ids = [f"a:{i}" for i in range(3000)]
    for uid in ids:
        client.log("EndSong", numbered(uid))
    assert client.flush(timeout=60), agent.stderr_tail()
    stats = client.stats()
    # this process sent nothing itself; it saw its events leave the queue file
    assert stats.sent == 0 and stats.acknowledged == len(ids) and stats.queue_events == 0
    assert client.close()
    found = bucket_ids(collector.data_dir)
    assert set(found) == set(ids) and max(found.values()) == 1
    assert wait_for(lambda: logged_by(agent, "shipping"), timeout=10)
    assert agent.stop(30) == 0
    assert logged_by(agent, "stopping")
    assert DurableQueue(queue_path, claim_home=False).lease_holder() is None


def test_sigkill_of_the_agent_mid_stream_then_restart_delivers_exactly_once(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    queue_path = tmp_path / "queue.db"
    client = service(queue_path, collector.endpoint)
    client.log("EndSong", numbered("k:warmup"))
    client.flush(timeout=0)  # the file exists and has committed events
    agent = start_agent(agents, queue_path, collector.endpoint)
    ids = ["k:warmup"]
    for round_ in range(3):
        # log while the agent ships, SIGKILL it once some of this round are acknowledged
        before = client.stats().acknowledged
        i = 0
        while client.stats().acknowledged <= before + 500 and i < 200_000:
            uid = f"k:{round_}:{i}"
            client.log("EndSong", numbered(uid))
            ids.append(uid)
            i += 1
        agent.kill()
        for j in range(500):  # more arrive while no agent runs
            uid = f"k:{round_}:after:{j}"
            client.log("EndSong", numbered(uid))
            ids.append(uid)
        agent = start_agent(agents, queue_path, collector.endpoint)
    assert client.flush(timeout=120), agent.stderr_tail()
    client.close()
    found = bucket_ids(collector.data_dir)
    assert set(found) == set(ids), f"{len(set(ids) - set(found))} lost"
    assert max(found.values()) == 1, "an event is in the buckets twice"
    (stream,) = stream_of(collector.report())
    assert stream["received"] == len(ids)
    assert stream["open_gaps"] == 0 and stream["lost"] == 0


#: An agent that would hold a batch that is not full for a minute, renewing its lease
#: (and so waking on its own) only every 20 s: what a test sees shipping sooner was hurried.
LONG_LINGER = {"SPOTIFY_EVENTS_LINGER": "60", "SPOTIFY_EVENTS_LEASE_TTL": "60"}


def test_flush_and_close_hurry_the_agent_through_its_linger(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    """The service's flush() cannot wake the agent's shipper thread; it leaves a request
    in the queue file that the agent looks for. The heartbeat every second makes the idle
    agent look for events that often; the minute of linger is what the request cuts."""
    queue_path = tmp_path / "queue.db"
    client = service(queue_path, collector.endpoint)
    client.log("EndSong", numbered("h:0"))
    client.flush(timeout=0)  # the file exists and has committed events
    agent = start_agent(
        agents,
        queue_path,
        collector.endpoint,
        env={**LONG_LINGER, "SPOTIFY_EVENTS_HEARTBEAT_INTERVAL": "1"},
    )
    ids = ["h:0"] + [f"h:{i}" for i in range(1, 10)]
    for uid in ids[1:]:
        client.log("EndSong", numbered(uid))
    assert client.flush(timeout=15), agent.stderr_tail()
    ids.append("h:last")
    client.log("EndSong", numbered("h:last"))
    client.close()  # commits, asks the agent to ship, leaves at once
    assert wait_for(lambda: queue_depth(queue_path) == 0, timeout=15), agent.stderr_tail()
    found = bucket_ids(collector.data_dir)
    assert set(found) == set(ids) and max(found.values()) == 1


def test_an_agent_ships_a_batch_the_service_filled_while_it_lingered(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    """The agent has no writer to wake it: its linger notices the service's commits."""
    queue_path = tmp_path / "queue.db"
    agent = start_agent(
        agents,
        queue_path,
        collector.endpoint,
        env={**LONG_LINGER, "SPOTIFY_EVENTS_BATCH_MAX_EVENTS": "100"},
    )
    client = service(queue_path, collector.endpoint)
    for i in range(150):  # a full batch ships at once; the 50 after it linger
        client.log("EndSong", numbered(f"f:{i}"))
    assert wait_for(lambda: queue_depth(queue_path) == 50, timeout=30), agent.stderr_tail()
    for i in range(150, 200):  # no flush: these fill the batch that lingers
        client.log("EndSong", numbered(f"f:{i}"))
    assert wait_for(lambda: queue_depth(queue_path) == 0, timeout=15), agent.stderr_tail()
    client.close()
    found = bucket_ids(collector.data_dir)
    assert len(found) == 200 and max(found.values()) == 1


def test_two_agents_on_one_file_one_ships_the_other_takes_over_when_it_stops(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    queue_path = tmp_path / "queue.db"
    client = service(queue_path, collector.endpoint)
    client.log("EndSong", numbered("t:0"))
    client.flush(timeout=0)
    first = start_agent(agents, queue_path, collector.endpoint)
    second = start_agent(agents, queue_path, collector.endpoint)
    assert client.flush(timeout=30)

    def holder_pid() -> int | None:
        holder = DurableQueue(queue_path, claim_home=False).lease_holder()
        return None if holder is None else int(holder.rsplit(":", 2)[1])

    pids = {first.proc.pid: first, second.proc.pid: second}  # type: ignore[union-attr]
    shipping = pids[holder_pid()]  # type: ignore[index]
    standing_by = second if shipping is first else first
    assert wait_for(lambda: logged_by(standing_by, "standing by"), timeout=10)
    assert not logged_by(standing_by, f"shipping {queue_path} ")
    assert shipping.stop(30) == 0  # SIGTERM: ships what is queued, releases the lease
    for i in range(1, 1000):
        client.log("EndSong", numbered(f"t:{i}"))
    assert client.flush(timeout=60), standing_by.stderr_tail()
    assert holder_pid() == standing_by.proc.pid  # type: ignore[union-attr]
    client.close()
    found = bucket_ids(collector.data_dir)
    assert len(found) == 1000 and max(found.values()) == 1


def test_without_an_agent_events_stay_queued_and_flush_says_so_in_time(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    queue_path = tmp_path / "queue.db"
    client = service(queue_path, collector.endpoint)
    for i in range(200):
        client.log("EndSong", numbered(f"n:{i}"))
    assert not client.flush(timeout=1.0)
    assert not client.close(timeout=60.0)  # commits and leaves: no lease taken, nothing sent
    stats = client.stats()
    assert stats.committed == 200 and stats.queue_events == 200 and stats.acknowledged == 0
    assert not bucket_ids(collector.data_dir)
    queue = DurableQueue(queue_path, claim_home=False)
    assert queue.lease_holder() is None  # the service never took the lease
    queue.close()
    agent = start_agent(agents, queue_path, collector.endpoint)
    assert wait_for(lambda: queue_depth(queue_path) == 0, timeout=60), agent.stderr_tail()
    found = bucket_ids(collector.data_dir)  # acknowledged: the buckets are written
    assert len(found) == 200 and max(found.values()) == 1
    assert not logged_by(agent, "standing by")


def queue_depth(queue_path: Path) -> int:
    queue = DurableQueue(queue_path, claim_home=False)
    try:
        return queue.depth().events
    finally:
        queue.close()


def test_the_shipping_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="shipping must be in-process or agent"):
        EventClient(queue_path=str(tmp_path / "q.db"), schemas=str(SCHEMAS), shipping="sidecar")
    monkeypatch.setenv("SPOTIFY_EVENTS_SHIPPING", "agent")
    client = EventClient(queue_path=str(tmp_path / "q.db"), schemas=str(SCHEMAS))
    assert client.config.shipping.value == "agent"
    client.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name at least one queue file"),
        (["{tmp}"], "is a directory"),
        (["{tmp}/missing/q.db"], "does not exist"),
        (["{tmp}/q.db", "{tmp}/./q.db"], "named twice"),
        (["{tmp}/not-a-queue.db"], "not-a-queue.db"),
        (["{tmp}/q.db", "--endpoint", "ftp://x"], "endpoint must be an http(s) URL"),
        (["{tmp}/q.db", "--stop-timeout", "-1"], "stop-timeout"),
    ],
)
def test_the_agent_refuses_nonsense_with_a_clear_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "not-a-queue.db").write_text("this is not a queue\n" * 100)
    result = CliRunner().invoke(agent_command, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    assert message in result.output


def test_a_queue_file_deleted_and_put_back_by_the_service_keeps_shipping(
    collector: CollectorProcess, tmp_path: Path, agents: list[ServiceProcess]
) -> None:
    queue_path = tmp_path / "queue.db"
    client = service(queue_path, collector.endpoint)
    client.log("EndSong", numbered("d:0"))
    client.flush(timeout=0)
    agent = start_agent(agents, queue_path, collector.endpoint)
    assert client.flush(timeout=30)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{queue_path}{suffix}").unlink(missing_ok=True)
    # the service's writer puts the file back from its open connection
    assert wait_for(queue_path.exists, timeout=30)
    assert wait_for(lambda: logged_by(agent, "reopening"), timeout=30), agent.stderr_tail()
    for i in range(1, 1000):
        client.log("EndSong", numbered(f"d:{i}"))
    assert client.flush(timeout=30), agent.stderr_tail()
    client.close()
    found = bucket_ids(collector.data_dir)
    assert len(found) == 1000 and max(found.values()) == 1
