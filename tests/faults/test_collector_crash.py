"""Collector crashes: SIGKILL the collector mid-request, again and again, while real
EventClients keep logging; nothing is lost and nothing is written twice.

Two clients (two producers, so a group commit can hold several batches) log numbered
streams (EndSong and PageView, each event's id in a string field) for the whole test.
The collector is killed ``FAULTS_ITERATIONS`` times (50 by default; ``FAULTS_SEED``
picks the schedule, fixed by default so CI runs are reproducible) and restarted on the
same port and data dir. Each incarnation dies one
of three ways, chosen by the seeded RNG:

``sigkill``       plain SIGKILL after a random delay, wherever the collector is;
``after-write``   the collector's failpoint: dies on its Nth batch after the bucket bytes
                  are fsynced but before the ledger commit (recovery must cut them off);
``after-commit``  the failpoint after the ledger commit but before the 200: the client
                  retries events that are already durable, so they come back as
                  duplicates and must be counted, not written again.

After every fifth kill, before the restart truncates anything, the committed prefix of
every part file must already be a complete Avro container. At the end the client
flushes and the collector is stopped cleanly; then every logged id is in the buckets
exactly once, every part file is exactly its committed length and reads completely,
and the report shows received == logged, open_gaps == 0 and lost == 0.

Runs in about 25-35 s on two cores (50 iterations; collector start is ~0.25 s).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_faults_helpers import (
    END_SONG,
    PAGE_VIEW,
    UID_FIELD,
    check_committed_prefixes,
    check_data_dir,
    read_uids,
    record_for,
)
from failpoints import failpoint_program
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess
from spotify_events.collector.report import load_report

pytestmark = pytest.mark.faults

ITERATIONS = int(os.environ.get("FAULTS_ITERATIONS", "50"))
SEED = int(os.environ.get("FAULTS_SEED", "20261126"))
MODES = ("sigkill", "after-write", "after-commit")
#: Two producers, so that a failpoint can fire in a group commit of several batches.
PRODUCERS = 2
TYPES = (END_SONG, PAGE_VIEW)


class NumberedLogger:
    """A thread that logs numbered events of ``TYPES`` in turn until stopped.

    Ids are ``<prefix>-<type short name>-<n>``; ``logged`` counts per type the events
    whose ``log()`` returned. ``log()`` must never raise while the collector is down.
    """

    def __init__(
        self, client: EventClient, prefix: str, per_tick: int = 2, tick: float = 0.004
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.per_tick = per_tick
        self.tick = tick
        self.logged: Counter[str] = Counter()
        self.ids: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logger-{prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)
            assert not self._thread.is_alive()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                for _ in range(self.per_tick):
                    etype = TYPES[n % len(TYPES)]
                    uid = f"{self.prefix}-{etype.rsplit('.', 1)[1]}-{n}"
                    self.client.log(etype, record_for(etype, uid))
                    self.logged[etype] += 1
                    self.ids[f"{etype}/{uid}"] += 1
                    n += 1
                self._stop.wait(self.tick)
        except BaseException as exc:  # surfaced by the test, never swallowed
            self.error = exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def crashing_collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A collector (not yet started) on a fixed port and data dir; the test starts,
    kills and restarts it."""
    process = CollectorProcess(
        tmp_path / "data", SCHEMAS, ["--grace-period", "1"], port=_free_port()
    )
    yield process
    try:
        process.stop()
    finally:
        process.kill()


def _wait_exit(process: CollectorProcess, timeout: float) -> int | None:
    """The exit code if the process dies within ``timeout``, else None (still running)."""
    assert process.proc is not None
    try:
        return process.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_collector_sigkill_mid_request_exactly_once(
    crashing_collector: CollectorProcess, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    cp = crashing_collector
    started = time.monotonic()
    clients = [
        EventClient(
            endpoint=f"http://{cp.host}:{cp.port}/v1/batches",
            queue_path=str(tmp_path / f"queue-{n}.db"),
            schemas=str(SCHEMAS),
            backoff_max=0.2,
            read_timeout=5.0,
            connect_timeout=1.0,
            batch_max_events=300,
            linger=0.01,
            heartbeat_interval=0.5,
        )
        for n in range(PRODUCERS)
    ]
    loggers = [NumberedLogger(c, prefix=f"p{n}") for n, c in enumerate(clients)]
    modes: Counter[str] = Counter()
    failpoint_fired: Counter[str] = Counter()
    prefix_checks = 0
    try:
        for i in range(ITERATIONS):
            mode = rng.choice(MODES)
            modes[mode] += 1
            if mode == "sigkill":
                cp.program = None
            else:
                cp.program = failpoint_program(f"crash-{mode}:{rng.randint(1, 3)}")
            cp.start()
            if i == 0:
                for lg in loggers:  # logging starts once the first collector is listening
                    lg.start()
            if mode == "sigkill":
                time.sleep(rng.uniform(0.05, 0.5))
                assert cp.alive(), "the collector died on its own: " + "".join(
                    cp.stderr_lines[-20:]
                )
                cp.kill()
            else:
                code = _wait_exit(cp, 5.0)
                if code is None:  # no batch reached the failpoint in time: kill anyway
                    cp.kill()
                else:
                    assert code == 137, "".join(cp.stderr_lines[-20:])
                    failpoint_fired[mode] += 1
            for lg in loggers:
                assert lg.error is None, lg.error
            if i % 5 == 4:  # dead collector, torn tails not yet truncated
                check_committed_prefixes(cp.data_dir)
                prefix_checks += 1
        cp.program = None
        cp.start()
        for lg in loggers:
            lg.stop()
            assert lg.error is None, lg.error
        for c in clients:
            assert c.flush(timeout=60), c.stats()
        stats = [c.stats() for c in clients]
        report = cp.report()
    finally:
        for lg in loggers:
            lg.stop()
        for c in clients:
            c.close(timeout=5)
    assert cp.stop() == 0

    ids: Counter[str] = sum((lg.ids for lg in loggers), Counter())
    total_logged = sum(ids.values())
    for lg, st in zip(loggers, stats, strict=True):
        assert st.logged == sum(lg.logged.values())
        assert st.dropped == {} and st.dead_lettered == {}
    assert sum(st.retried for st in stats) > 0  # the clients did see the crashes

    # the buckets: every id exactly once (nothing lost, nothing written twice)
    found = read_uids(cp.data_dir)
    missing, unexpected = set(ids) - set(found), set(found) - set(ids)
    assert (len(missing), len(unexpected)) == (0, 0), (sorted(missing)[:5], sorted(unexpected)[:5])
    written_twice = {uid: n for uid, n in found.items() if n > 1}
    assert written_twice == {}
    # every part file is exactly its committed length and a complete container
    check = check_data_dir(cp.data_dir)
    assert check.records == total_logged

    # the ledger, over HTTP from the running collector and from the stopped data dir
    duplicates = 0
    for source in (report, load_report(cp.data_dir, now=time.time())):
        assert len(source["streams"]) == PRODUCERS * len(TYPES)
        duplicates = 0
        for c, lg in zip(clients, loggers, strict=True):
            streams = [s for s in source["streams"] if s["producer_id"] == c.producer_id]
            by_type = {s["event_type"]: s for s in streams}
            assert set(by_type) == set(TYPES)
            for etype in TYPES:
                s = by_type[etype]
                assert (s["received"], s["dropped"], s["rejected"]) == (lg.logged[etype], 0, 0)
                assert (s["open_gaps"], s["lost"], s["gap_ranges"]) == (0, 0, [])
                assert s["next_seq"] == lg.logged[etype] + 1
                duplicates += s["duplicates"]
    if failpoint_fired["after-commit"]:
        assert duplicates > 0  # retried after a durable commit: counted, not written again

    elapsed = time.monotonic() - started
    summary: dict[str, Any] = {
        "iterations": ITERATIONS,
        "seed": SEED,
        "producers": PRODUCERS,
        "modes": dict(modes),
        "failpoint_fired": dict(failpoint_fired),
        "prefix_checks": prefix_checks,
        "logged": total_logged,
        "delivered": sum(1 for uid in found if uid in ids),
        "duplicated_in_buckets": sum(n - 1 for n in found.values()),
        "duplicates_counted": duplicates,
        "lost": len(missing),
        "client_retries": sum(st.retried for st in stats),
        "part_files": check.parts,
        "seconds": round(elapsed, 1),
    }
    print(f"\ncollector crash matrix: {summary}")
    assert UID_FIELD[END_SONG] == "track_id"  # ids live where read_uids looks for them
