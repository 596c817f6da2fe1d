"""A long collector outage: the queue holds everything, memory stays flat, all arrives after."""

from __future__ import annotations

import json
import os
import resource
import time
import traceback
from pathlib import Path

import pytest
from fault_helpers import numbered, port_held_closed, stream_of
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]

EVENTS = int(os.environ.get("FAULTS_OUTAGE_EVENTS", "1000000"))


def _log_during_outage(queue_path: Path, endpoint: str, write_fd: int) -> None:
    """Child: log EVENTS events with the collector down; report RSS along the way."""
    code = 1
    try:
        client = EventClient(
            endpoint=endpoint,
            queue_path=str(queue_path),
            schemas=str(SCHEMAS),
            backoff_max=1.0,
            max_queue_bytes=1 << 30,
            block_timeout=5.0,  # about the outage, not overload: wait for the writer, never drop,
        )
        rss = {}
        started = time.perf_counter()
        for i in range(EVENTS):
            client.log("EndSong", numbered(str(i)))
            if i + 1 in (EVENTS // 10, EVENTS):
                rss[i + 1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        elapsed = time.perf_counter() - started
        client.close(timeout=0.5)  # commits the buffer; nothing can ship
        stats = client.stats()
        os.write(
            write_fd,
            json.dumps(
                {
                    "rss_kib": rss,
                    "seconds": elapsed,
                    "queued": stats.queue_events,
                    "dropped": stats.dropped,
                }
            ).encode(),
        )
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def test_long_outage_everything_queued_then_delivered(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    collector.stop()
    queue_path = tmp_path / "queue.db"
    with port_held_closed(collector.port):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _log_during_outage(queue_path, collector.endpoint, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd) as reader:
            report = json.loads(reader.read())
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["queued"] == EVENTS and report["dropped"] == {}
    rss = {int(k): v for k, v in report["rss_kib"].items()}
    growth_mib = (rss[EVENTS] - rss[EVENTS // 10]) / 1024
    assert growth_mib < 48, f"SDK memory grew {growth_mib:.0f} MiB while the queue held the events"

    collector.start()
    started = time.perf_counter()
    with EventClient(
        endpoint=collector.endpoint, queue_path=str(queue_path), schemas=str(SCHEMAS)
    ) as client:
        assert client.flush(timeout=600)
    drain = time.perf_counter() - started
    (stream,) = stream_of(collector.report())
    assert stream["received"] == EVENTS and stream["duplicates"] == 0
    assert stream["lost"] == 0 and stream["open_gaps"] == 0
    print(
        f"\noutage: {EVENTS:,} events logged in {report['seconds']:.1f}s, RSS growth {growth_mib:.1f} MiB "
        f"from 10% to 100%; drained in {drain:.1f}s ({EVENTS / drain:,.0f} events/s)"
    )
