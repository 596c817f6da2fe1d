"""Network faults between the SDK and the collector, through a fault-injecting proxy.

Each fault lands on a precise point of one HTTP exchange (see fault_proxy.py);
the SDK must retry through all of them and the collector must dedupe, so the
buckets hold every event exactly once.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from fault_helpers import bucket_ids, numbered, stream_of
from fault_proxy import FAULTS, FaultProxy
from support import SCHEMAS

from spotify_events import EventClient
from spotify_events.collector.process import CollectorProcess

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("fault", [*FAULTS, "all"])
def test_exactly_once_through_network_faults(
    collector: CollectorProcess, tmp_path: Path, fault: str
) -> None:
    proxy = FaultProxy(collector.port, stall_seconds=1.5)
    faults = list(FAULTS) * 3 if fault == "all" else [fault] * 4
    try:
        client = EventClient(
            endpoint=proxy.endpoint,
            queue_path=str(tmp_path / "queue.db"),
            schemas=str(SCHEMAS),
            backoff_max=0.1,
            read_timeout=0.5,  # so a stalled exchange is abandoned and retried quickly
            batch_max_events=500,
        )
        with client:
            counter = itertools.count()
            for round_ in range(len(faults)):
                proxy.inject([faults[round_]])
                for _ in range(500):
                    client.log("EndSong", numbered(str(next(counter))))
                assert client.flush(timeout=60), client.stats()
            logged = next(counter)
            stats = client.stats()
        assert proxy.pending() == 0 and sum(proxy.injected.values()) == len(faults)
        found = bucket_ids(collector.data_dir)
        assert set(found) == {str(i) for i in range(logged)}
        assert max(found.values()) == 1, "an event is in the buckets twice"
        report = collector.report()
        assert len(stream_of(report)) == 1, report
        (stream,) = stream_of(report)
        assert stream["received"] == logged and stream["lost"] == 0 and stream["open_gaps"] == 0
        if fault in ("reset_after_reply", "all"):
            assert stream["duplicates"] > 0  # the collector saw the retry and deduped it
        assert stats.retried >= sum(
            1 for f in faults if f != "trickle"
        )  # trickle is slow, not failed
    finally:
        proxy.close()
